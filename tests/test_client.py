"""
The outbound client's name cache: one resolution for many concurrent new
connections, answers kept for a while, failures not kept.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHostResolution, IResolutionReceiver
from twisted.internet.task import Clock
from zope.interface import implementer

from subrouter.upstream.client import CachingResolver


class _SlowResolver:
    """
    A resolver whose look-ups finish when the test says so.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[IResolutionReceiver, str, int]] = []

    def resolveHostName(self, receiver: IResolutionReceiver, host: str, port: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        self.calls.append((receiver, host, port))
        return None

    def finish(self, index: int, *addresses: str) -> None:
        receiver, _, port = self.calls[index]
        for address in addresses:
            receiver.addressResolved(IPv4Address("TCP", address, port))
        receiver.resolutionComplete()


@implementer(IResolutionReceiver)
class _Receiver:
    def __init__(self) -> None:
        self.began = False
        self.addresses: list[Any] = []
        self.complete = False

    def resolutionBegan(self, resolutionInProgress: IHostResolution) -> None:
        self.began = True

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.complete = True


def test_concurrent_lookups_of_one_name_share_one_resolution() -> None:
    inner, clock = _SlowResolver(), Clock()
    resolver = CachingResolver(inner, clock, ttl=30)
    receivers = [_Receiver() for _ in range(5)]
    for receiver in receivers:
        resolver.resolveHostName(receiver, "chatgpt.com", 443)
    assert len(inner.calls) == 1
    assert all(r.began and not r.complete for r in receivers)
    inner.finish(0, "10.0.0.1", "10.0.0.2")
    for receiver in receivers:
        assert receiver.complete
        assert [a.host for a in receiver.addresses] == ["10.0.0.1", "10.0.0.2"]


def test_answers_are_kept_for_the_ttl_then_resolved_again() -> None:
    inner, clock = _SlowResolver(), Clock()
    resolver = CachingResolver(inner, clock, ttl=30)
    resolver.resolveHostName(_Receiver(), "chatgpt.com", 443)
    inner.finish(0, "10.0.0.1")
    clock.advance(29)
    cached = _Receiver()
    resolver.resolveHostName(cached, "chatgpt.com", 443)
    assert cached.complete and cached.addresses[0].host == "10.0.0.1"
    assert len(inner.calls) == 1
    other_port = _Receiver()
    resolver.resolveHostName(other_port, "chatgpt.com", 8443)
    assert len(inner.calls) == 2  # the port is part of the answer
    clock.advance(2)
    resolver.resolveHostName(_Receiver(), "chatgpt.com", 443)
    assert len(inner.calls) == 3


def test_a_failed_lookup_is_not_kept() -> None:
    inner, clock = _SlowResolver(), Clock()
    resolver = CachingResolver(inner, clock, ttl=30)
    failed = _Receiver()
    resolver.resolveHostName(failed, "nowhere.invalid", 443)
    inner.finish(0)
    assert failed.complete and failed.addresses == []
    resolver.resolveHostName(_Receiver(), "nowhere.invalid", 443)
    assert len(inner.calls) == 2


class _Socketish(tcp.Server):
    """
    A Twisted TCP transport with only the parts :func:`send_now` looks at; the
    "socket" takes at most ``room`` bytes.
    """

    TLS = False

    def __init__(self, room: int) -> None:
        self.room = room
        self.sent = b""
        self.queued: list[bytes] = []
        self.dataBuffer = b""
        self._tempDataLen = 0
        self.connected = True
        self.disconnecting = False

    @property
    def socket(self) -> Any:
        return self

    def send(self, data: bytes) -> int:
        if not self.room:
            raise BlockingIOError()
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        self.sent += taken
        return len(taken)

    def sendmsg(self, buffers: tuple[bytes, ...]) -> int:
        return self.send(b"".join(buffers))

    def write(self, data: bytes) -> None:
        self.queued.append(data)
        self._tempDataLen += len(data)


def test_send_now_never_writes_past_a_tls_wrapper() -> None:
    from twisted.protocols.policies import ProtocolWrapper

    from subrouter.upstream.client import send_now

    # a TLS connection's transport passes unknown attributes on to the TCP
    # connection under it: its writeSomeData would send plaintext
    under = _Socketish(room=100)
    wrapper = ProtocolWrapper(None, None)  # type: ignore[arg-type]
    wrapper.transport = under  # type: ignore[assignment]
    written: list[bytes] = []
    wrapper.write = written.append  # type: ignore[method-assign]
    send_now(wrapper, b"secret")
    assert (written, under.sent) == ([b"secret"], b"")


def test_send_now_sends_at_once_when_nothing_is_queued() -> None:
    from subrouter.upstream.client import send_now

    transport = _Socketish(room=100)
    send_now(transport, b"hello")
    assert (transport.sent, transport.queued) == (b"hello", [])


def test_send_now_queues_what_the_socket_does_not_take_and_keeps_the_order() -> None:
    from subrouter.upstream.client import send_now

    transport = _Socketish(room=3)
    send_now(transport, b"hello")
    assert (transport.sent, transport.queued) == (b"hel", [b"lo"])
    transport.room = 100
    send_now(transport, b" world")  # something is queued: this goes behind it
    assert transport.sent == b"hel" and transport.queued == [b"lo", b" world"]


def test_send_now_queues_everything_when_the_socket_is_full() -> None:
    from subrouter.upstream.client import send_now

    transport = _Socketish(room=0)
    send_now(transport, b"hello")
    assert (transport.sent, transport.queued) == (b"", [b"hello"])


@pytest.mark.parametrize("room", [0, 2, 4, 7, 9, 100])
def test_a_request_and_its_body_go_out_in_order_whatever_the_socket_takes(room: int) -> None:
    from subrouter.upstream.client import send_now_two

    transport = _Socketish(room=room)
    send_now_two(transport, b"head", b"body!")
    assert transport.sent + b"".join(transport.queued) == b"headbody!"
    assert transport.sent == b"headbody!"[:room]


def test_a_held_transport_keeps_a_request_and_its_body_in_order_with_the_rest() -> None:
    from subrouter.upstream.client import release, send_now, send_now_two

    transport = _Socketish(room=100)
    transport._subrouter_held = []  # type: ignore[attr-defined] # as hold() leaves it in a read
    send_now(transport, b"one;")
    send_now_two(transport, b"head;", b"body")
    assert transport.sent == b""
    release(transport)
    assert transport.sent == b"one;head;body"
