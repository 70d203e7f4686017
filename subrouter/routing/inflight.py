# -*- test-case-name: tests.test_lifecycle -*-
"""
What the daemon has in flight, for ``/_subrouter/health`` and for a graceful
stop: the proxied HTTP requests and the open WebSockets report here when they
start and end, and a drain asks them to end.

Each one registers a handle with two ways to end it: *gracefully* (close as
soon as nothing is under way: an idle WebSocket closes at once, an HTTP
request just runs to its end) and *now* (when the drain timeout is up: an HTTP
response is aborted so it never looks complete, a WebSocket gets close 1001
"going away").
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

#: the WebSocket close code for a server going away (RFC 6455 7.4.1)
GOING_AWAY = 1001
GOING_AWAY_REASON = "subrouter is shutting down; reconnect"


class Drainable(Protocol):
    """
    Something in flight that a drain can end.
    """

    def end_gracefully(self) -> None:
        """
        End as soon as nothing is under way (may do nothing until then).
        """

    def end_now(self) -> None:
        """
        End at once, visibly: abort, or close with 1001.
        """


class InFlight:
    """
    The daemon's exchanges in flight, its start time, and whether it is
    ready or draining.

    :param clock: for the uptime.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self.started_at = clock.seconds()
        #: set once the daemon listens and its first usage poll is done
        self.ready = False
        #: set when a stop begins: new proxied requests are refused
        self.draining = False
        self._http: dict[int, Drainable] = {}
        self._websockets: dict[int, Drainable] = {}
        self._idle_waiters: list[Deferred[None]] = []

    # -- reporting -------------------------------------------------------

    def http_started(self, handle: Drainable) -> None:
        self._http[id(handle)] = handle

    def http_finished(self, handle: Drainable) -> None:
        if self._http.pop(id(handle), None) is not None:
            self._check_idle()

    def websocket_opened(self, handle: Drainable) -> None:
        self._websockets[id(handle)] = handle
        if self.draining:
            # opened during the drain (its handshake was under way): end it
            handle.end_gracefully()

    def websocket_closed(self, handle: Drainable) -> None:
        if self._websockets.pop(id(handle), None) is not None:
            self._check_idle()

    # -- reading ---------------------------------------------------------

    def counts(self) -> dict[str, int]:
        return {"http": len(self._http), "websocket": len(self._websockets)}

    def uptime(self) -> float:
        return max(0.0, self._clock.seconds() - self.started_at)

    def not_ready_because(self) -> str | None:
        """
        Why the daemon should not get new work now, or None when it is ready.
        """
        if self.draining:
            return "draining"
        if not self.ready:
            return "starting"
        return None

    # -- draining --------------------------------------------------------

    def idle(self) -> bool:
        return not self._http and not self._websockets

    def when_idle(self) -> Deferred[None]:
        """
        A Deferred that fires once nothing is in flight.
        """
        waiter: Deferred[None] = Deferred()
        if self.idle():
            waiter.callback(None)
        else:
            self._idle_waiters.append(waiter)
        return waiter

    def end_gracefully(self) -> None:
        """
        Start draining: refuse new work, and ask everything in flight to end
        once nothing is under way.
        """
        self.draining = True
        for handle in list(self._http.values()) + list(self._websockets.values()):
            handle.end_gracefully()

    def end_now(self) -> dict[str, int]:
        """
        End everything still in flight at once.

        :return: how many of each were ended.
        """
        ended = self.counts()
        for handle in list(self._http.values()) + list(self._websockets.values()):
            handle.end_now()
        return ended

    def _check_idle(self) -> None:
        if self.idle() and self._idle_waiters:
            # on the reactor's next turn, not from inside the exchange that
            # just ended: what waits goes on to stop the reactor, which closes
            # every connection, that exchange's own among them, mid-read
            self._clock.callLater(0, self._wake_idle_waiters)

    def _wake_idle_waiters(self) -> None:
        if not self.idle():
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.called:  # a drain that gave up waiting cancelled it
                waiter.callback(None)
