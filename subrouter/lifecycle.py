# -*- test-case-name: tests.test_lifecycle -*-
"""
The daemon's life cycle, the same under ``twistd -n subrouter`` and
``subrouter serve``:

- **listening**: the port is bound before anything announces it; a port
  that cannot be bound is one line (naming the address, and whether a
  Subrouter answers there) and exit status 1, never a traceback;
- **stopping** (SIGTERM, SIGINT): stop accepting, let what is in flight end
  within the drain timeout, then abort HTTP responses and close WebSockets
  with 1001, then stop the other services (state is saved, transcripts
  flushed) and exit 0. A second signal ends the drain at once;
- **reloading** (SIGHUP): reread the account store now and reopen log files.

Our own signal handlers replace the reactor's so that a stop by signal is a
normal stop: twistd would otherwise re-raise SIGTERM at exit (the supervisor
would see "killed by signal" rather than status 0).
"""

from __future__ import annotations

import http.client
import json
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, race
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from subrouter import config as parse
from subrouter.logs import reopen_log_files
from subrouter.routing.inflight import InFlight

_log = Logger()

#: how long WebSockets closed with 1001 get for their closing handshake
CLOSE_GRACE = 3.0
#: the longest "starting" lasts when the first usage poll hangs
READY_BOUND = 10.0
#: how long the busy-port probe waits for an answer
PROBE_TIMEOUT = 1.0


# -- listening ----------------------------------------------------------------


def probe_subrouter(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> str | None:
    """
    Ask ``host:port`` for ``/_subrouter/health``.

    Blocking, with a short timeout: it runs only when the daemon cannot
    start, before it serves anything.

    :return: the version of the Subrouter answering there, ``""`` when
        something else answers HTTP, None when nothing answers.
    """
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/_subrouter/health")
        response = connection.getresponse()
        body = response.read(65536)
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    try:
        health = json.loads(body)
    except ValueError:
        return ""
    if isinstance(health, dict) and health.get("ok") is True and "version" in health:
        return str(health["version"])
    return ""


def listen_failure_line(addr: str, error: BaseException,
                        probe: Callable[[str, int], str | None] = probe_subrouter) -> str:
    """
    The one line said when the daemon cannot listen on ``addr``.
    """
    reason = getattr(error, "socketError", None) or error
    text = getattr(reason, "strerror", None) or str(reason)
    import errno

    in_use = getattr(reason, "errno", None) == errno.EADDRINUSE
    if not in_use:
        return f"cannot listen on {addr}: {text}"
    try:
        host, port = parse.parse_addr(addr)
    except ValueError:
        return f"cannot listen on {addr}: the address is already in use"
    version = probe(host, port)
    if version:
        return (f"cannot listen on {addr}: a Subrouter ({version}) already answers there; "
                "stop it first, or pick another --addr")
    if version == "":
        return (f"cannot listen on {addr}: the address is in use by a server that is not "
                "Subrouter; pick another --addr")
    return (f"cannot listen on {addr}: the address is in use (nothing answers HTTP there); "
            "pick another --addr")


class Listener(Service):
    """
    The listening port. It binds when the service starts, announces itself
    only once bound, and stops accepting first when the daemon stops.

    :param endpoint: where to listen.
    :param factory: the Site.
    :param addr: how people named the address (for messages).
    :param announce: called once the port is bound (the "listening" line).
    :param probe: asks a busy address whether a Subrouter answers there.
    """

    name = "listener"

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any, addr: str,
                 announce: Callable[[], None] = lambda: None,
                 probe: Callable[[str, int], str | None] = probe_subrouter) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._addr = addr
        self._announce = announce
        self._probe = probe
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        outcome: list[Any] = []
        self._endpoint.listen(self._factory).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"the endpoint for {self._addr} did not listen at once")
        result = outcome[0]
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, (CannotListenError, OSError)):
                result.raiseException()
            _log.critical("{line}", line=listen_failure_line(self._addr, error, self._probe))
            raise SystemExit(1)
        self.port = result
        self._announce()

    def stop_listening(self) -> Deferred[None]:
        """
        Stop accepting connections (those already open stay).
        """
        port, self.port = self.port, None
        if port is None:
            return Deferred.fromCoroutine(_nothing())
        stopped = port.stopListening()
        if isinstance(stopped, Deferred):
            return stopped.addCallback(lambda _: None)
        return Deferred.fromCoroutine(_nothing())

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.stop_listening()


async def _nothing() -> None:
    return None


# -- the daemon ---------------------------------------------------------------


class Daemon(MultiService):
    """
    The top service: stops by draining first, and reacts to signals.

    :param inflight: what is in flight, and whether the daemon is ready.
    :param clock: for the drain timeout.
    :param drain_timeout: seconds in-flight work gets to finish at a stop.
    :param first_poll: starts (or joins) the first usage poll; the daemon is
        ready once it ends (at most :data:`READY_BOUND` seconds). None: ready
        as soon as it listens.
    :param reload: rereads the account store (SIGHUP); fires with the number
        of accounts.
    """

    def __init__(self, inflight: InFlight, clock: IReactorTime, drain_timeout: float,
                 first_poll: Callable[[], Deferred[None]] | None = None,
                 reload: Callable[[], Deferred[int]] | None = None) -> None:
        super().__init__()
        self.inflight = inflight
        self._clock = clock
        self._drain_timeout = drain_timeout
        self._first_poll = first_poll
        self._reload = reload
        self._starting: Deferred[Any] | None = None
        self._hurry: Deferred[None] | None = None
        self._stopping = False

    # -- starting ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._first_poll is None:
            self.inflight.ready = True
            return
        self._starting = race([self._first_poll(),
                               deferLater(self._clock, READY_BOUND, lambda: None)])

        def ready(_: object) -> None:
            self._starting = None
            self.inflight.ready = True

        self._starting.addBoth(ready)

    # -- stopping ---------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
        listener = self.namedServices.get("listener")
        if isinstance(listener, Listener):
            await listener.stop_listening()
        inflight = self.inflight
        inflight.end_gracefully()
        if not inflight.idle():
            counts = inflight.counts()
            _log.info(
                "stopping: waiting up to {timeout}s for {http} HTTP requests and {websocket} "
                "WebSockets in flight", timeout=self._drain_timeout, **counts,
            )
            self._hurry = Deferred()
            await _first(inflight.when_idle(), self._hurry,
                         deferLater(self._clock, self._drain_timeout, lambda: None))
            self._hurry = None
            if not inflight.idle():
                ended = inflight.end_now()
                _log.info(
                    "drain over: aborted {http} HTTP responses, closed {websocket} WebSockets "
                    "(1001)", **ended,
                )
                await _first(inflight.when_idle(),
                             deferLater(self._clock, CLOSE_GRACE, lambda: None))
        await super().stopService()
        _log.info("stopped")

    def hurry(self) -> None:
        """
        End the drain now (a second stop signal).
        """
        hurry, self._hurry = self._hurry, None
        if hurry is not None and not hurry.called:
            hurry.callback(None)

    # -- signals ------------------------------------------------------------

    def install_signal_handlers(self, reactor: Any) -> None:
        """
        Handle SIGTERM, SIGINT and SIGHUP ourselves. Call it once the
        reactor runs (``reactor.callWhenRunning``): it replaces the reactor's
        handlers.
        """

        def on_stop(number: int, frame: object) -> None:
            reactor.callFromThread(self.stop_signal, reactor, signal.Signals(number).name)

        def on_reload(number: int, frame: object) -> None:
            reactor.callFromThread(self.reload_signal)

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_reload)

    def stop_signal(self, reactor: Any, name: str) -> None:
        if self._stopping:
            _log.info("{signal} again: ending what is in flight now", signal=name)
            self.hurry()
            return
        self._stopping = True
        _log.info("{signal}: stopping", signal=name)
        reactor.stop()

    def reload_signal(self) -> Deferred[None]:
        """
        SIGHUP: reread the account store and reopen log files.
        """
        return Deferred.fromCoroutine(self._reload_now())

    async def _reload_now(self) -> None:
        reopened = reopen_log_files()
        count = await self._reload() if self._reload is not None else None
        _log.info(
            "SIGHUP: reread the account store ({count} accounts); reopened {files} log files",
            count=count, files=len(reopened),
        )


async def _first(*waits: Deferred[Any]) -> None:
    """
    Wait for the first of ``waits``; cancel the others.
    """
    await race(list(waits))
