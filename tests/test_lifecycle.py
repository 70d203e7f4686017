"""
The daemon's life cycle, deterministically: the in-flight tracker, the drain
at a stop (with a task.Clock), readiness, the listener's one-line message for a
busy port, and the probe that says whether a Subrouter answers there.
"""

from __future__ import annotations

import errno
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from subrouter.lifecycle import (
    CLOSE_GRACE,
    READY_BOUND,
    Daemon,
    Listener,
    listen_failure_line,
    probe_subrouter,
)
from subrouter.routing.inflight import InFlight


class _Handle:
    """
    Something in flight that records how it was asked to end.
    """

    def __init__(self, inflight: InFlight, finish_gracefully: bool = False) -> None:
        self.inflight = inflight
        self.asked: list[str] = []
        self._finish_gracefully = finish_gracefully

    def end_gracefully(self) -> None:
        self.asked.append("gracefully")
        if self._finish_gracefully:
            self.inflight.websocket_closed(self)

    def end_now(self) -> None:
        self.asked.append("now")


class _Port:
    def __init__(self) -> None:
        self.listening = True

    def stopListening(self) -> Deferred[None]:
        self.listening = False
        return succeed(None)


class _Endpoint:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.factories: list[Any] = []

    def listen(self, factory: Any) -> Deferred[Any]:
        self.factories.append(factory)
        if isinstance(self.result, BaseException):
            return fail(self.result)
        return succeed(self.result)


class _Recording(Service):
    def __init__(self) -> None:
        self.stopped = False

    def stopService(self) -> None:
        super().stopService()
        self.stopped = True


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _texts(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


def _daemon(clock: Clock, drain: float = 30.0, **kwargs: Any) -> tuple[Daemon, _Port, _Recording]:
    inflight = InFlight(clock)
    daemon = Daemon(inflight, clock, drain, **kwargs)
    port = _Port()
    Listener(_Endpoint(port), object(), "127.0.0.1:31415").setServiceParent(daemon)
    child = _Recording()
    child.setServiceParent(daemon)
    daemon.startService()
    return daemon, port, child


# -- the tracker ----------------------------------------------------------------


def test_inflight_counts_and_says_when_idle() -> None:
    clock = Clock()
    inflight = InFlight(clock)
    http, ws = _Handle(inflight), _Handle(inflight)
    inflight.http_started(http)
    inflight.websocket_opened(ws)
    assert inflight.counts() == {"http": 1, "websocket": 1}
    idle = inflight.when_idle()
    inflight.http_finished(http)
    clock.advance(0)
    assert not idle.called
    inflight.websocket_closed(ws)
    # on the next turn, never from inside the exchange that just ended
    assert not idle.called
    clock.advance(0)
    assert idle.called
    assert inflight.counts() == {"http": 0, "websocket": 0}
    # reporting an end twice is harmless
    inflight.http_finished(http)
    assert inflight.when_idle().called


def test_a_websocket_opened_during_a_drain_is_asked_to_end() -> None:
    inflight = InFlight(Clock())
    inflight.end_gracefully()
    late = _Handle(inflight)
    inflight.websocket_opened(late)
    assert late.asked == ["gracefully"]


def test_readiness_and_uptime() -> None:
    clock = Clock()
    clock.advance(100)
    inflight = InFlight(clock)
    assert inflight.not_ready_because() == "starting"
    inflight.ready = True
    assert inflight.not_ready_because() is None
    clock.advance(12.5)
    assert inflight.uptime() == 12.5
    inflight.end_gracefully()
    assert inflight.not_ready_because() == "draining"


# -- stopping -------------------------------------------------------------------


def test_a_stop_with_nothing_in_flight_stops_everything_at_once() -> None:
    daemon, port, child = _daemon(Clock())
    stopped = daemon.stopService()
    assert stopped.called
    assert not port.listening
    assert child.stopped


def test_a_stop_waits_for_requests_in_flight_before_stopping_the_rest(
    logged: list[dict[str, Any]],
) -> None:
    clock = Clock()
    daemon, port, child = _daemon(clock)
    request = _Handle(daemon.inflight)
    daemon.inflight.http_started(request)
    stopped = daemon.stopService()
    # no longer accepting, but state is not saved before the request ends
    assert not port.listening
    assert daemon.inflight.draining
    assert not stopped.called
    assert not child.stopped
    clock.advance(29)
    daemon.inflight.http_finished(request)
    clock.advance(0)
    assert stopped.called
    assert child.stopped
    assert request.asked == ["gracefully"]
    assert any("waiting up to 30.0s for 1 HTTP requests and 0 WebSockets" in t
               for t in _texts(logged))
    assert clock.getDelayedCalls() == []


def test_at_the_drain_timeout_what_is_left_is_ended_now(logged: list[dict[str, Any]]) -> None:
    clock = Clock()
    daemon, _, child = _daemon(clock, drain=5.0)
    request, websocket = _Handle(daemon.inflight), _Handle(daemon.inflight)
    daemon.inflight.http_started(request)
    daemon.inflight.websocket_opened(websocket)
    stopped = daemon.stopService()
    clock.advance(4.9)
    assert request.asked == websocket.asked == ["gracefully"]
    clock.advance(0.1)
    assert request.asked == websocket.asked == ["gracefully", "now"]
    assert not stopped.called  # WebSockets get time for their closing handshake
    daemon.inflight.http_finished(request)
    daemon.inflight.websocket_closed(websocket)
    clock.advance(0)
    assert stopped.called
    assert child.stopped
    assert any("aborted 1 HTTP responses, closed 1 WebSockets (1001)" in t
               for t in _texts(logged))


def test_something_that_never_ends_does_not_hold_the_stop_forever() -> None:
    clock = Clock()
    daemon, _, child = _daemon(clock, drain=5.0)
    daemon.inflight.http_started(_Handle(daemon.inflight))
    stopped = daemon.stopService()
    clock.advance(5.0)
    clock.advance(CLOSE_GRACE)
    assert stopped.called
    assert child.stopped


def test_an_idle_websocket_ends_at_once() -> None:
    clock = Clock()
    daemon, _, _ = _daemon(clock)
    idle = _Handle(daemon.inflight, finish_gracefully=True)
    daemon.inflight.websocket_opened(idle)
    assert daemon.stopService().called
    assert idle.asked == ["gracefully"]


def test_a_second_signal_ends_the_drain_now() -> None:
    clock = Clock()
    daemon, _, _ = _daemon(clock)

    class _Reactor:
        stops = 0

        def stop(self) -> None:
            self.stops += 1

    reactor = _Reactor()
    request = _Handle(daemon.inflight)
    daemon.inflight.http_started(request)
    daemon.stop_signal(reactor, "SIGTERM")
    assert reactor.stops == 1
    stopped = daemon.stopService()  # what reactor.stop() sets off
    daemon.stop_signal(reactor, "SIGINT")
    assert reactor.stops == 1
    assert request.asked == ["gracefully", "now"]
    daemon.inflight.http_finished(request)
    clock.advance(0)
    assert stopped.called


# -- starting -------------------------------------------------------------------


def test_ready_once_the_first_usage_poll_is_done() -> None:
    clock = Clock()
    poll: Deferred[None] = Deferred()
    daemon, _, _ = _daemon(clock, first_poll=lambda: poll)
    assert daemon.inflight.not_ready_because() == "starting"
    poll.callback(None)
    assert daemon.inflight.not_ready_because() is None
    assert clock.getDelayedCalls() == []


def test_a_hanging_first_poll_delays_readiness_only_so_long() -> None:
    clock = Clock()
    daemon, _, _ = _daemon(clock, first_poll=Deferred)
    clock.advance(READY_BOUND - 0.1)
    assert not daemon.inflight.ready
    clock.advance(0.1)
    assert daemon.inflight.ready


def test_without_a_usage_poll_ready_at_once() -> None:
    daemon, _, _ = _daemon(Clock())
    assert daemon.inflight.ready


def test_sighup_rereads_the_store(logged: list[dict[str, Any]]) -> None:
    daemon = Daemon(InFlight(Clock()), Clock(), 1.0, reload=lambda: succeed(3))
    assert daemon.reload_signal().called
    assert "SIGHUP: reread the account store (3 accounts); reopened 0 log files" in _texts(
        logged)


# -- listening ------------------------------------------------------------------


def _in_use() -> CannotListenError:
    return CannotListenError("127.0.0.1", 31415, OSError(errno.EADDRINUSE,
                                                         "Address already in use"))


@pytest.mark.parametrize(("answer", "says"), [
    ("0.1.0", "cannot listen on 127.0.0.1:31415: a Subrouter (0.1.0) already answers there; "
              "stop it first, or pick another --addr"),
    ("", "cannot listen on 127.0.0.1:31415: the address is in use by a server that is not "
         "Subrouter; pick another --addr"),
    (None, "cannot listen on 127.0.0.1:31415: the address is in use (nothing answers HTTP "
           "there); pick another --addr"),
])
def test_a_busy_port_is_one_line_and_exit_1_without_announcing(
    logged: list[dict[str, Any]], answer: str | None, says: str
) -> None:
    announced: list[bool] = []
    asked: list[tuple[str, int]] = []

    def probe(host: str, port: int) -> str | None:
        asked.append((host, port))
        return answer

    listener = Listener(_Endpoint(_in_use()), object(), "127.0.0.1:31415",
                        announce=lambda: announced.append(True), probe=probe)
    with pytest.raises(SystemExit) as exit_:
        listener.startService()
    assert exit_.value.code == 1
    assert announced == []
    assert asked == [("127.0.0.1", 31415)]
    assert _texts(logged) == [says]


def test_other_listen_failures_name_the_reason() -> None:
    error = CannotListenError("10.9.9.9", 80, OSError(errno.EADDRNOTAVAIL,
                                                     "Cannot assign requested address"))
    assert listen_failure_line("10.9.9.9:80", error, lambda h, p: "x") == (
        "cannot listen on 10.9.9.9:80: Cannot assign requested address")


def test_the_listener_announces_once_bound() -> None:
    announced: list[bool] = []
    port = _Port()
    listener = Listener(_Endpoint(port), object(), "127.0.0.1:1",
                        announce=lambda: announced.append(True))
    listener.startService()
    assert announced == [True]
    assert listener.port is port
    assert listener.stopService().called
    assert not port.listening


class _Health(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("body", "answer"), [
    (json.dumps({"ok": True, "version": "9.9.9"}).encode(), "9.9.9"),
    (b"<html>hello</html>", ""),
    (b'{"ok": true}', ""),
])
def test_the_probe_tells_a_subrouter_from_another_server(body: bytes, answer: str) -> None:
    handler = type("Handler", (_Health,), {"body": body})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert probe_subrouter("127.0.0.1", server.server_address[1]) == answer
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_probe_says_none_when_nothing_answers() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # accepts, never answers
        port = s.getsockname()[1]
        assert probe_subrouter("127.0.0.1", port, timeout=0.3) is None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert probe_subrouter("127.0.0.1", port) is None  # refused
