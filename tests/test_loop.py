"""
The reactor's direct dispatch of ready sockets (subrouter.loop): events still
reach their protocols, an error in one is logged and the loop goes on.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python import log
from twisted.python.failure import Failure

from subrouter.loop import direct_dispatch


def test_only_an_epoll_reactor_is_changed_and_only_once() -> None:
    assert direct_dispatch(Clock()) is False
    reactor = EPollReactor()
    try:
        assert direct_dispatch(reactor) is True
        assert direct_dispatch(reactor) is False
    finally:
        reactor._poller.close()
        reactor._reads.clear()


def _pair(reactor: Any, protocol: Protocol) -> socket.socket:
    from twisted.internet import tcp

    mine, theirs = socket.socketpair()
    mine.setblocking(False)

    class _Conn(tcp.Connection):
        def getPeer(self) -> Any:
            return None

        def getHost(self) -> Any:
            return None

    connection = _Conn(mine, protocol, reactor)
    protocol.makeConnection(connection)
    connection.startReading()
    return theirs


@pytest.mark.logged_failures_expected
def test_reads_are_delivered_and_an_error_escaping_one_is_logged_not_raised() -> None:
    reactor = EPollReactor()
    direct_dispatch(reactor)
    got: list[bytes] = []
    errors: list[Any] = []

    class Good(Protocol):
        def dataReceived(self, data: bytes) -> None:
            got.append(data)

    handle = reactor._doReadOrWrite
    bad_protocol = Good()

    def failing(selectable: Any, fd: int, event: int) -> None:
        if selectable.protocol is bad_protocol:
            raise RuntimeError("boom")
        handle(selectable, fd, event)

    reactor._doReadOrWrite = failing
    log.addObserver(errors.append)
    good = _pair(reactor, Good())
    bad = _pair(reactor, bad_protocol)
    try:
        bad.send(b"x")
        good.send(b"hello")
        for _ in range(5):
            reactor.doIteration(0.1)
            if got:
                break
        assert got == [b"hello"]
        assert any(e.get("isError") and "boom" in str(e.get("failure")) for e in errors)
    finally:
        log.removeObserver(errors.append)
        for reader in list(reactor.getReaders()):
            reactor.removeReader(reader)
            reader.connectionLost(Failure(ConnectionDone()))
        good.close()
        bad.close()
        reactor._poller.close()


def _spin(reactor: Any, until: Any, what: object = "") -> None:
    """
    Turn the reactor until ``until()`` holds (or fail, saying ``what``).
    """
    for _ in range(50):
        if until():
            return
        reactor.runUntilCurrent()
        reactor.doIteration(0.05)
    raise AssertionError(f"not reached; {what}")


def _close_all(reactor: Any, port: Any) -> None:
    """
    Stop listening, drop every connection and close the reactor's poller.
    """
    port.stopListening()
    for selectable in list(reactor.getReaders()) + list(reactor.getWriters()):
        reactor.removeReader(selectable)
        reactor.removeWriter(selectable)
        if hasattr(selectable, "connectionLost") and selectable is not port:
            with contextlib.suppress(Exception):
                selectable.connectionLost(Failure(ConnectionDone()))
    reactor.runUntilCurrent()
    reactor._poller.close()


@pytest.mark.logged_failures_expected
def test_plain_tcp_reads_take_the_short_way_with_the_same_outcomes() -> None:
    from twisted.internet.protocol import ClientFactory, Factory

    reactor = EPollReactor()
    direct_dispatch(reactor)
    events: list[Any] = []

    class Server(Protocol):
        def dataReceived(self, data: bytes) -> None:
            events.append(("data", data))
            if data == b"boom":
                raise RuntimeError("boom")

        def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
            events.append(("lost", reason.type))

    clients: list[Protocol] = []

    class Client(Protocol):
        def connectionMade(self) -> None:
            clients.append(self)

    port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
    factory = ClientFactory.forProtocol(Client)

    def spin(until: Any) -> None:
        _spin(reactor, until, f"events: {events}")

    try:
        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        spin(lambda: clients)
        clients[0].transport.write(b"hello")  # type: ignore[union-attr]
        spin(lambda: ("data", b"hello") in events)
        clients[0].transport.loseConnection()  # type: ignore[union-attr]
        spin(lambda: any(e[0] == "lost" for e in events))
        assert events[-1] == ("lost", ConnectionDone)

        reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
        spin(lambda: len(clients) == 2)
        clients[1].transport.write(b"boom")  # type: ignore[union-attr]
        spin(lambda: len([e for e in events if e[0] == "lost"]) == 2)
        assert events[-1][0] == "lost" and events[-1][1] is RuntimeError
    finally:
        _close_all(reactor, port)


class _FakeSocket:
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    def recv(self, size: int) -> bytes:
        self.seen.append(self.name)
        return b"x"


def _selectable(kind: type, name: str, seen: list[str]) -> Any:
    selectable = object.__new__(kind)
    selectable.socket = _FakeSocket(name, seen)
    selectable.bufferSize = 65536

    class _Protocol(Protocol):
        def dataReceived(self, data: bytes) -> None:
            pass

    selectable.protocol = _Protocol()
    return selectable


class _FakeReactor:
    """
    Answers the turn's poll with ``ready``, and each poll after it (the
    look at the streams between two clients) with the next of ``then``.
    """

    def __init__(self, ready: list[tuple[int, int]], selectables: dict[int, Any],
                 then: list[list[tuple[int, int]]] | None = None) -> None:
        self._selectables = selectables
        answers = iter([ready, *(then or [])])
        self.polls: list[float] = []
        polls = self.polls

        class _Poller:
            @staticmethod
            def poll(timeout: float, most: int) -> list[tuple[int, int]]:
                polls.append(timeout)
                return next(answers, [])

        self._poller = _Poller()


def test_streams_in_flight_go_before_what_clients_bring(monkeypatch: pytest.MonkeyPatch) -> None:
    from select import EPOLLIN

    from twisted.internet import tcp

    from subrouter import loop

    seen: list[str] = []
    selectables = {
        1: _selectable(tcp.Server, "client request 1", seen),
        2: _selectable(tcp.Client, "upstream event", seen),
        3: _selectable(tcp.Server, "client request 2", seen),
    }
    ready = [(1, EPOLLIN), (2, EPOLLIN), (3, EPOLLIN)]
    # between the two requests the upstream has more (an answer's head): it
    # goes first; the clients' sockets that poll shows are not read twice
    reactor = _FakeReactor(ready, selectables, then=[[(1, EPOLLIN), (2, EPOLLIN), (3, EPOLLIN)]])
    loop._do_poll(reactor, 0)
    assert seen == ["upstream event", "client request 1", "upstream event", "client request 2"]
    # one look without waiting between the two clients, none after the last
    assert reactor.polls == [0, 0]

    # past the turn's budget, what clients bring waits for the next turn: the
    # streams took 1 ms, the first request 5 ms (over the 2 ms budget)
    seen.clear()
    times = iter([0.0, 0.001, 0.001, 0.006])
    monkeypatch.setattr(loop, "monotonic", lambda: next(times))
    loop._do_poll(_FakeReactor(ready, selectables), 0)
    assert seen == ["upstream event", "client request 1"]

    # but never less than the streams took (the look between two clients
    # counting as theirs): under a full load, half each
    seen.clear()
    times = iter([0.0, 0.010, 0.010, 0.015, 0.016, 0.016, 0.022])
    loop._do_poll(_FakeReactor(ready, selectables), 0)
    assert seen == ["upstream event", "client request 1", "client request 2"]


def test_the_collector_is_settled_once_the_reactor_runs() -> None:
    import gc

    from subrouter import loop

    clock = Clock()
    started: list[Any] = []
    clock.callWhenRunning = started.append  # type: ignore[attr-defined]
    before = gc.get_threshold()
    loop.settle_collector(clock)
    assert gc.get_threshold() == before  # nothing before the reactor runs
    (settle,) = started
    survivor = [object() for _ in range(100)]  # made after the last freeze
    frozen = gc.get_freeze_count()
    try:
        settle()
        assert gc.get_freeze_count() > frozen
        assert gc.get_threshold() == (before[0], before[1], loop.FULL_COLLECTION_EVERY)
    finally:
        # (the suite's conftest freezes what outlives each test anyway)
        gc.set_threshold(*before)
    assert survivor


def test_a_large_burst_of_clients_is_not_interleaved(monkeypatch: pytest.MonkeyPatch) -> None:
    from select import EPOLLIN

    from twisted.internet import tcp

    from subrouter import loop

    # every look at the streams lists every ready socket, the waiting
    # clients' too: past INTERLEAVE_UP_TO clients that would grow with the
    # square of the burst, so the turn takes them one after another
    monkeypatch.setattr(loop, "INTERLEAVE_UP_TO", 2)
    seen: list[str] = []
    selectables = {fd: _selectable(tcp.Server, f"client {fd}", seen) for fd in (1, 2, 3)}
    selectables[4] = _selectable(tcp.Client, "upstream", seen)
    ready = [(fd, EPOLLIN) for fd in (1, 2, 3)]
    reactor = _FakeReactor(ready, selectables, then=[[(4, EPOLLIN)], [(4, EPOLLIN)]])
    loop._do_poll(reactor, 0)
    assert seen == ["client 1", "client 2", "client 3"]
    assert reactor.polls == [0]


def test_writes_held_during_a_read_go_out_together_once_it_is_handled() -> None:
    import socket as _socket

    from twisted.internet.protocol import ClientFactory, Factory

    from subrouter.upstream.client import hold, release, send_now

    reactor = EPollReactor()
    direct_dispatch(reactor)
    servers: list[Protocol] = []
    clients: list[Protocol] = []
    got: list[bytes] = []
    seen_during: list[bytes | None] = []

    def arrived_at_sink() -> bytes | None:
        sock = clients[1].transport.socket  # type: ignore[union-attr]
        try:
            data: bytes = sock.recv(100, _socket.MSG_PEEK | _socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        return data

    class Server(Protocol):
        def connectionMade(self) -> None:
            servers.append(self)

        def dataReceived(self, data: bytes) -> None:
            sink = servers[1].transport
            hold(sink)
            send_now(sink, b"head;")
            send_now(sink, b"body;")
            if data == b"release":
                release(sink)  # before closing, say: out at once
            seen_during.append(arrived_at_sink())

    class Client(Protocol):
        def connectionMade(self) -> None:
            clients.append(self)

        def dataReceived(self, data: bytes) -> None:
            got.append(data)

    def spin(until: Any) -> None:
        _spin(reactor, until)

    port = reactor.listenTCP(0, Factory.forProtocol(Server), interface="127.0.0.1")
    factory = ClientFactory.forProtocol(Client)
    try:
        for n in (1, 2):
            reactor.connectTCP("127.0.0.1", port.getHost().port, factory)
            spin(lambda n=n: len(clients) == n and len(servers) == n)  # type: ignore[misc]
        # during a read, nothing reaches the sink; once it is handled, all of it in one piece
        clients[0].transport.write(b"go")  # type: ignore[union-attr]
        spin(lambda: got)
        assert seen_during == [None]
        assert got == [b"head;body;"]
        # release sends what was held at once, still inside the read
        clients[0].transport.write(b"release")  # type: ignore[union-attr]
        spin(lambda: len(got) > 1)
        assert seen_during[1] == b"head;body;"
        # outside a read nothing is held
        sink = servers[1].transport
        hold(sink)
        send_now(sink, b"now")
        assert arrived_at_sink() is not None
    finally:
        _close_all(reactor, port)
