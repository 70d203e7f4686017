# -*- test-case-name: tests.test_proxy_live -*-
"""
Bodies on their way through the proxy: the client's request body as a
producer that can be sent more than once, and readers of the start of an
upstream answer (an error body to scan, or a first chunk to look at) that can
hand the rest of the stream on.
"""

from __future__ import annotations

import io
from typing import IO, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from twisted.web.server import Request
from zope.interface import implementer

#: request bodies up to this size are sent in one write
_SMALL_BODY = 1 << 20
#: methods that carry a body even when it is empty
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@implementer(IBodyProducer)
class BytesBody:
    """
    A body already in memory, written at once.
    """

    def __init__(self, data: bytes) -> None:
        #: the whole body (the stream client sends it with the head, at once)
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def request_body(request: Request) -> IBodyProducer | None:
    """
    A fresh producer of the client's request body, which Twisted has already
    received into ``request.content``. Each call starts from the beginning, so
    a request can be sent again after a refreshed token.
    """
    content: IO[bytes] | None = request.content
    if content is None:
        return None
    if isinstance(content, io.BytesIO):
        data = content.getvalue()
        if not data and request.method not in _BODY_METHODS:
            return None
        return BytesBody(data)
    content.seek(0, io.SEEK_END)
    length = content.tell()
    content.seek(0)
    if length <= _SMALL_BODY:
        return BytesBody(content.read())
    # large bodies live in a temporary file; stream it with backpressure
    producer = FileBodyProducer(content)
    producer.length = length if length else UNKNOWN_LENGTH
    return producer


class Discard(Protocol):
    """
    Reads a response body to its end and drops it, so the connection can go
    back to the pool.
    """

    def dataReceived(self, data: bytes) -> None:
        pass


class Bounded(Protocol):
    """
    Reads a response body up to a limit, then can hand the rest of the
    stream over to another protocol.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: Deferred[None] = Deferred()
        self.complete = False
        self._next: Protocol | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._next is not None:
            self._next.dataReceived(data)
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= self.limit and not self.done.called:
            producer = cast("IPushProducer | None", self.transport)
            if producer is not None:
                producer.pauseProducing()
            self.done.callback(None)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self._next is not None:
            self._next.connectionLost(reason)
            return
        self.complete = True
        self.reason = reason
        if not self.done.called:
            self.done.callback(None)

    def hand_over(self, protocol: Protocol) -> None:
        self._next = protocol
        redirect = getattr(self.transport, "redirect", None)
        if redirect is not None:
            # the stream's own client can deliver to ``protocol`` directly
            redirect(protocol)
        protocol.makeConnection(self.transport)
        producer = cast("IPushProducer | None", self.transport)
        if producer is not None:
            producer.resumeProducing()


class Prefix:
    """
    The start of an upstream answer, read before deciding what to do with it.

    :ivar data: the bytes read so far.
    :ivar complete: the whole body was read (the stream has ended).
    :ivar clean: the stream ended cleanly, if it ended.
    """

    def __init__(self, response: IResponse, protocol: Bounded) -> None:
        self.response = response
        self.protocol = protocol
        self.data = b"".join(protocol.chunks)
        self.complete = protocol.complete
        self.clean = not protocol.complete or protocol.reason.check(
            ResponseDone, PotentialDataLoss
        ) is not None

    def stop(self) -> None:
        """
        Give up the rest of the stream.
        """
        if not self.complete:
            stop_producing(self.protocol)


def stop_producing(protocol: Protocol) -> None:
    """
    Stop the upstream read feeding ``protocol`` (its transport produces).
    """
    producer = cast("IPushProducer | None", protocol.transport)
    if producer is not None:
        producer.stopProducing()


def content_length(request: Request) -> int:
    """
    The size of the client's request body, as Twisted received it.
    """
    content = request.content
    if content is None:
        return 0
    if isinstance(content, io.BytesIO):
        # getvalue, not getbuffer: a buffer export would copy a body the
        # BytesIO shares with the read it came in
        return len(content.getvalue())
    try:
        position = content.tell()
        content.seek(0, io.SEEK_END)
        size = content.tell()
        content.seek(position)
        return int(size)
    except (OSError, ValueError):
        return 0


def body_bytes(request: Request, limit: int) -> bytes:
    """
    Up to ``limit`` bytes of the client's request body, leaving its position.
    """
    content = request.content
    if content is None:
        return b""
    if isinstance(content, io.BytesIO):
        return content.getvalue()[:limit]
    position = content.tell()
    content.seek(0)
    data = content.read(limit)
    content.seek(position)
    return bytes(data)
