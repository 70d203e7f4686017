# -*- test-case-name: tests.test_state_redis -*-
"""
The connection to Redis, and whether it is usable right now.

txredisapi reconnects on its own with a growing delay, but a command sent
while no connection is up waits for one forever; a request must never wait on
Redis like that. So every call here goes through :meth:`RedisLink.call`, which
refuses at once while the link is down and gives up after a short timeout
otherwise. Going down is logged once, coming back is logged once, and the
callbacks given to :meth:`RedisLink.on_reconnect` run then, so the state
kept locally meanwhile is pushed back (the resync).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from subrouter.state.settings import RedisURL

_log = Logger()

#: how long one command (or one script) may take before the caller goes on without it
CALL_TIMEOUT = 0.5
#: how often the link looks at whether a connection is up
WATCH_INTERVAL = 0.25
#: the longest wait between two connection attempts while Redis is down
MAX_RETRY_DELAY = 5.0
#: at start, how long the first connection may take before "unreachable" is logged
FIRST_CONNECT_GRACE = 2.0


class Unavailable(Exception):
    """
    Redis cannot be used right now; the caller uses its local view.
    """


class RedisLink:
    """
    :param url: where Redis is.
    :param clock: the source of time for timeouts.
    :param connect: makes the txredisapi lazy connection (a seam for tests).
    """

    def __init__(
        self,
        url: RedisURL,
        clock: IReactorTime,
        connect: Callable[..., Any] | None = None,
    ) -> None:
        self.url = url
        self._clock = clock
        self._connect = connect
        self._conn: Any = None
        self.up = False
        self._ever_up = False
        self._down_logged = False
        self._watch: LoopingCall | None = None
        self._resyncs: list[Callable[[], object]] = []
        self._started_at = 0.0
        #: how often the link went down; for the health endpoint
        self.outages = 0

    def start(self) -> None:
        connect = self._connect
        if connect is None:
            import txredisapi

            connect = txredisapi.lazyConnection
        self._conn = connect(
            host=self.url.host, port=self.url.port, dbid=self.url.db,
            password=self.url.password, reconnect=True, connectTimeout=2.0,
            replyTimeout=2.0, convertNumbers=False,
        )
        factory = getattr(self._conn, "_factory", None)
        if factory is not None:
            factory.maxDelay = MAX_RETRY_DELAY
            factory.initialDelay = 0.2
        self._started_at = self._clock.seconds()
        self._watch = LoopingCall(self._look)
        self._watch.clock = self._clock
        self._watch.start(WATCH_INTERVAL, now=False)

    def stop(self) -> Deferred[Any] | None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        conn, self._conn = self._conn, None
        self.up = False
        if conn is None:
            return None
        d: Deferred[Any] = conn.disconnect()
        return d

    def on_reconnect(self, callback: Callable[[], object]) -> None:
        """
        Run ``callback`` each time the link comes (back) up.
        """
        self._resyncs.append(callback)

    def _connected(self) -> bool:
        factory = getattr(self._conn, "_factory", None)
        return factory is not None and factory.size > 0

    def _look(self) -> None:
        if self._connected():
            if not self.up:
                self._came_up()
        elif not self._ever_up and self._clock.seconds() - self._started_at < FIRST_CONNECT_GRACE:
            pass  # still connecting for the first time
        elif self.up or not self._down_logged:
            self._went_down("no connection")

    def _came_up(self) -> None:
        self.up = True
        if self._ever_up or self._down_logged:
            _log.info("Redis at {url} is reachable again; resynchronising the shared state",
                      url=self.url.display())
        else:
            _log.info("shared state in Redis at {url}", url=self.url.display())
        self._ever_up = True
        self._down_logged = False
        for resync in self._resyncs:
            try:
                resync()
            except Exception:
                _log.failure("resynchronising with Redis failed")

    def _went_down(self, why: str) -> None:
        was_up = self.up
        self.up = False
        if was_up:
            self.outages += 1
        if not self._down_logged:
            self._down_logged = True
            _log.warn(
                "Redis at {url} is unreachable ({why}); serving from this instance's own view "
                "and retrying in the background",
                url=self.url.display(), why=why,
            )

    def call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Deferred[Any]:
        """
        Run one txredisapi command.

        :raises Unavailable: (as a failed Deferred) when the link is down, the
            command fails for want of a connection, or takes longer than ``timeout``.
        """
        if self._conn is None or not self.up:
            return fail(Unavailable("Redis is not connected"))
        try:
            d: Deferred[Any] = getattr(self._conn, method)(*args)
        except Exception as e:
            return fail(Unavailable(str(e)))
        d.addTimeout(timeout, self._clock)
        d.addErrback(self._failed)
        return d

    def eval(self, script: str, keys: list[str], args: list[Any],
             timeout: float = CALL_TIMEOUT) -> Deferred[Any]:
        """
        Run a Lua script (by its hash once the server knows it).
        """
        return self.call("eval", script, keys, args, timeout=timeout)

    def _failed(self, failure: Any) -> Any:
        import txredisapi

        if failure.check(txredisapi.ResponseError):
            return failure  # Redis answered: a bug of ours, not an outage
        if failure.check(TimeoutError):
            raise Unavailable("Redis did not answer in time")
        if failure.check(Unavailable):
            return failure
        self._went_down(failure.getErrorMessage())
        raise Unavailable(failure.getErrorMessage())
