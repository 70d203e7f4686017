# -*- test-case-name: tests.test_channel -*-
"""
The HTTP/1.1 connection Subrouter's Site speaks: Twisted's ``HTTPChannel``
with limits on the request head that are answered, not just enforced.

Twisted closes a connection whose request line or header line is longer than
its line limit without a word (the client sees an empty reply), answers every
other bad head with a bare ``400``, and restarts its idle timer on each byte,
so a client that trickles a header a byte a second holds a connection for
ever. This channel instead:

- answers a request line over :data:`MAX_LINE` bytes with ``414``, a header
  line over :data:`MAX_LINE` bytes, a head over :data:`MAX_HEAD` bytes in all
  or more than :data:`MAX_HEADERS` headers with ``431``, and any other
  malformed head with ``400``, each with a JSON reason;
- gives a request head (from its first byte to the blank line after the
  headers) ``header_timeout`` seconds, and answers ``408`` to one that misses
  it;
- after such an answer, stops reading requests, half-closes, and discards
  what the client still sends for a moment, so the answer is read rather than
  lost to a reset (a client still sending when a socket closes gets an RST).

A complete, well-formed head at the start of a read (nearly every request)
is parsed in one pass, ending in exactly the state Twisted's line-by-line
reading would have; anything else (a head in pieces, a folded or malformed
line, a limit crossed) takes Twisted's way, which answers it. A
``Content-Length`` body that came whole in that same read becomes the
request's content as it is, without being copied into it.
"""

from __future__ import annotations

from io import SEEK_END, BytesIO

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import (
    HTTPChannel,
    Request,
    _IdentityTransferDecoder,
    _parseRequestLine,
)
from twisted.web.http_headers import Headers, InvalidHeaderName
from twisted.web.iweb import INonQueuedRequestFactory

from subrouter.errors import closing_error
from subrouter.upstream.client import release, send_now
from subrouter.upstream.headers import CANONICAL_NAMES, canonical_name

_log = Logger()

#: the longest request line, and the longest header line, in bytes
MAX_LINE = 16 * 1024
#: the most bytes of request line and headers together
MAX_HEAD = 64 * 1024
#: the most header lines in one request
MAX_HEADERS = 500
#: the default deadline for a whole request head, in seconds
DEFAULT_HEADER_TIMEOUT = 30.0
#: the header names that frame a request body
_FRAMING = (b"Content-Length", b"Transfer-Encoding")
#: how long a refused connection is kept half-open so the answer is read
LINGER = 2.0

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def refusal(status: int, kind: str, message: str) -> bytes:
    """
    The bytes of a complete HTTP/1.1 error answer that closes the connection.
    """
    return closing_error(status, _REASONS.get(status, b"Error"), kind, message)


class SubrouterChannel(HTTPChannel):
    """
    ``HTTPChannel`` with answered head limits and a head deadline.

    :ivar header_timeout: seconds from a request head's first byte to its end.
    """

    MAX_LENGTH = MAX_LINE
    totalHeadersSize = MAX_HEAD
    maxHeaders = MAX_HEADERS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    _head_deadline: IDelayedCall | None = None
    _linger: IDelayedCall | None = None
    _refused = False
    _host: IAddress | None = None
    _peer: IAddress | None = None

    # -- addresses -----------------------------------------------------------------

    # Every request asks for both ends of its connection (Twisted's Request
    # does when it is made); they never change while the connection lasts,
    # so each is looked up once, not with a system call and a new address
    # object per request.

    def getHost(self) -> IAddress:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> IAddress:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    # -- writing ------------------------------------------------------------------

    # An answer's bytes go to the socket at once when nothing is queued ahead
    # of them, instead of on the reactor's next turn: response headers reach
    # the client as soon as the upstream's do, and a finished answer is on
    # the wire before anything that follows its end (a drain's stop).

    def write(self, data: bytes) -> None:
        send_now(self.transport, data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        send_now(self.transport, b"".join(iovec))

    def loseConnection(self) -> None:
        # what a read being handled held back goes first (upstream.client.hold)
        release(self.transport)
        super().loseConnection()

    def requestDone(self, request: Request) -> None:
        # an answer is whole: what was held of it goes now, before the
        # bookkeeping of its end (the log line, the token count)
        release(self.transport)
        super().requestDone(request)

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: Headers) -> None:
        head = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        send_now(self.transport, b"".join(head))

    # -- the idle timeout --------------------------------------------------------

    # Twisted's channel cancels its idle timer once a request is in (an
    # answer may take long) and makes a new one when the answer is done: a
    # timer made and cancelled for every request. Here the timer is set aside
    # instead (``timeOut`` is None meanwhile, and a set-aside timer that
    # fires does nothing), and moved on when the answer is done. A lost
    # connection still cancels it.

    _lost = False

    def setTimeout(self, period: float | None) -> float | None:
        if period is None and not self._lost:
            previous, self.timeOut = self.timeOut, None
            return previous
        return super().setTimeout(period)  # type: ignore[no-any-return]

    def timeoutConnection(self) -> None:
        if self.timeOut is None:
            return  # set aside while a request was handled: not idle
        super().timeoutConnection()

    def cancel_idle_timer(self) -> None:
        """
        Cancel the idle timer, set aside or not: the connection is being
        handed to another protocol (a WebSocket), and this channel will not
        hear of its end.
        """
        super().setTimeout(None)

    # -- the head deadline -----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self.line_mode and not self._handlingRequest:
            if not self._buffer and self._HTTPChannel__first_line == 1 and self.persistent:
                # A whole head at the start of a read (nearly every request):
                # parsed in one pass. Twisted's line reader splits one line
                # off the whole buffer at a time (a 60 KB body after a dozen
                # header lines was copied a dozen times) and takes each
                # header through several calls; anything unusual still goes
                # that way, which answers it.
                end = data.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
                if end > 0 and self._whole_head(data, end):
                    rest = data[end + 4:]
                    if rest and not self._refused and not getattr(
                        self.transport, "disconnecting", False
                    ) and not self._whole_body(rest):
                        super().dataReceived(rest)
                    return
            if self._head_deadline is None:
                # the first byte of a request head: it has header_timeout to finish
                self._head_deadline = self.callLater(self.header_timeout, self._head_timed_out)
        super().dataReceived(data)

    def _whole_head(self, data: bytes, end: int) -> bool:
        """
        Take a complete, well-formed request head as the line reader would
        have, header by header, or return False (nothing taken) for anything
        it would refuse or treat specially: those go through it.
        """
        self.resetTimeout()
        head = data[:end]
        lines = head.split(b"\r\n")
        breaks = len(lines) - 1
        size = end - 2 * breaks  # the lines without their CRLFs, as Twisted counts
        if (
            breaks > self.maxHeaders
            # a CR or LF other than the line ends, a NUL, or a folded line
            or head.count(b"\r") != breaks
            or head.count(b"\n") != breaks
            or b"\x00" in head
            or b"\r\n " in head
            or b"\r\n\t" in head
            or max(map(len, lines)) > self.MAX_LENGTH
            or size > self.totalHeadersSize
        ):
            return False
        try:
            command, target, version = _parseRequestLine(lines[0])
        except ValueError:
            return False
        raw: dict[bytes, list[bytes]] = {}
        framed: tuple[bytes, bytes] | None = None
        framing = 0
        names = CANONICAL_NAMES
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon:
                return False
            canonical = names.get(name)
            if canonical is None:
                try:
                    canonical = canonical_name(name)
                except InvalidHeaderName:
                    return False
            value = value.strip(b" \t")
            if canonical in _FRAMING:
                framing += 1
                if canonical == b"Content-Length":
                    if not value.isdigit():
                        return False
                elif value.lower() not in (b"chunked", b"identity"):
                    return False
                framed = (canonical, value)
            values = raw.get(canonical)
            if values is None:
                raw[canonical] = [value]
            else:
                values.append(value)
        if framing > 1:
            return False
        # what HTTPChannel.lineReceived and headerReceived would have done
        factory = self.requestFactory
        if INonQueuedRequestFactory.providedBy(factory):
            request = factory(self)
        else:
            request = factory(self, len(self.requests))
        self.requests.append(request)
        self._HTTPChannel__first_line = 0
        self._command, self._path, self._version = command, target, version
        self._receivedHeaderSize = size
        # the headers as addRawHeader would have kept them, in one dict
        request.requestHeaders._rawHeaders = raw
        if framed is not None and not self._maybeChooseTransferDecoder(*framed):
            return True  # answered (400) already
        self._receivedHeaderCount = len(lines) - 1
        self.allHeadersReceived()
        if self.length == 0:
            self.allContentReceived()
        else:
            self.setRawMode()
        return True

    def _whole_body(self, body: bytes) -> bool:
        """
        Take a request's whole ``Content-Length`` body, come in the same read
        as its head and nothing after it, as the request's content at once,
        or return False (nothing taken): what Twisted's length decoder would
        do, without copying the body into the request's file or the layers
        of raw mode.
        """
        decoder = self._transferDecoder
        if (
            type(decoder) is not _IdentityTransferDecoder
            or decoder.contentLength != len(body)
            or decoder.dataCallback is None
        ):
            return False
        request = self.requests[-1]
        content = request.content
        if (
            type(request).handleContentChunk is not Request.handleContentChunk
            or type(content) is not BytesIO
            or content.tell()
        ):
            return False
        decoder.contentLength = 0
        decoder.dataCallback = decoder.finishCallback = None
        content = request.content = BytesIO(body)  # shares the bytes, no copy
        content.seek(0, SEEK_END)  # where writing the body would have left it
        self._finishRequestBody(b"")
        return True

    def allHeadersReceived(self) -> None:
        self._cancel_head_deadline()
        super().allHeadersReceived()

    def _cancel_head_deadline(self) -> None:
        deadline, self._head_deadline = self._head_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        _log.info("dropping a client that did not send a request head in {seconds} s",
                  seconds=self.header_timeout)
        self._refuse(
            408,
            "request_timeout",
            f"the request line and headers did not arrive within {self.header_timeout:g} s",
        )

    # -- the size limits -----------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(
                431,
                "request_header_too_large",
                f"the request line and headers are longer than {self.totalHeadersSize} bytes",
            )
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._refuse(
                431,
                "request_header_too_large",
                f"the request has more than {self.maxHeaders} headers",
            )
            return False
        return bool(super().headerReceived(line))

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._in_request_line():
            self._refuse(
                414,
                "request_line_too_long",
                f"the request line (method, target, version) is longer than "
                f"{self.MAX_LENGTH} bytes",
            )
        else:
            self._refuse(
                431,
                "request_header_too_large",
                f"a header line is longer than {self.MAX_LENGTH} bytes",
            )

    def _in_request_line(self) -> bool:
        # HTTPChannel keeps its parse state in a name-mangled attribute
        return bool(getattr(self, "_HTTPChannel__first_line", 1))

    def _respondToBadRequestAndDisconnect(self) -> None:
        # every other head Twisted cannot parse: a bad request line, a header
        # without a colon, a bad Content-Length, a malformed chunked body
        self._refuse(400, "bad_request", "the request is not valid HTTP/1.1")

    # -- answering and closing -----------------------------------------------------

    def _refuse(self, status: int, kind: str, message: str) -> None:
        if self._refused or self.transport is None:
            return
        self._refused = True
        self._cancel_head_deadline()
        self.setTimeout(None)
        self.setRawMode()
        self.transport.write(refusal(status, kind, message))
        # read no further requests, but keep reading (and discarding) what
        # the client is still sending until it has read the answer and
        # closed, or LINGER has passed
        lose_write = getattr(self.transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
            self._linger = self.callLater(LINGER, self._end_linger)
        else:
            self.loseConnection()

    def _end_linger(self) -> None:
        self._linger = None
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().rawDataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True  # the idle timer is cancelled now, not set aside
        self._cancel_head_deadline()
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()
        super().connectionLost(reason)
