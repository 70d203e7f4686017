# -*- test-case-name: tests.test_proxy_live -*-
"""
JSON error answers, and plain-words descriptions of network failures.

Every error Subrouter itself produces has the OpenAI error shape,
``{"error": {"type": ..., "message": ...}}``, so agents show the message.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from twisted.internet import error as neterror
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.web.server import Request

from subrouter.redact import scrub_text


def error_body(kind: str, message: str) -> bytes:
    """
    The bytes of an error answer.
    """
    return json.dumps({"error": {"type": kind, "message": message}}).encode()


def closing_error(status: int, phrase: bytes, kind: str, message: str,
                  headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """
    The bytes of a whole HTTP/1.1 JSON error answer that closes the
    connection, for a protocol answering outside twisted.web's ``Request``
    (a refused request head, a refused WebSocket upgrade).

    :param phrase: the status line's reason phrase.
    :param headers: more header lines.
    """
    body = error_body(kind, message)
    lines = [
        b"HTTP/1.1 %d %s" % (status, phrase),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Cache-Control: no-store",
        b"Connection: close",
        *(name + b": " + value for name, value in headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def write_error(request: Request, status: int, kind: str, message: str) -> None:
    """
    Answer ``request`` with a JSON error, unless the client is gone or an
    answer has already started.
    """
    if request._disconnected or request.finished or request.startedWriting:
        return
    body = error_body(kind, message)
    request.setResponseCode(status)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [b"application/json"])
    headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    request.write(body)
    request.finish()


def method_not_allowed(request: Request, allowed: bytes) -> bytes:
    """
    Make ``request`` a JSON 405 naming the methods ``allowed``; return its
    body (for a resource's ``render``).
    """
    request.setResponseCode(405)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [b"application/json"])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    headers.setRawHeaders(b"allow", [allowed])
    method = request.method.decode("ascii", "replace")
    return error_body("method_not_allowed", f"{method} is not allowed here")


def describe_failure_reason(reason: BaseException | Failure) -> str:
    """
    A short, secret-free description of why a connection or request failed.
    """
    value = reason.value if isinstance(reason, Failure) else reason
    if value is None:
        return "unknown error"
    inner = getattr(value, "reasons", None)
    if inner:
        # ResponseNeverReceived, RequestTransmissionFailed, ResponseFailed
        first = inner[0]
        return describe_failure_reason(first)
    if isinstance(value, neterror.ConnectionRefusedError):
        return "connection refused"
    if isinstance(value, neterror.DNSLookupError):
        return "DNS lookup failed"
    if isinstance(value, neterror.TimeoutError | TimeoutError):
        return "connection timed out"
    if isinstance(value, neterror.ConnectionDone):
        return "the upstream closed the connection"
    if isinstance(value, neterror.ConnectionLost):
        return "the connection to the upstream was lost"
    if isinstance(value, CancelledError):
        return "cancelled"
    tls = _describe_tls(value)
    if tls is not None:
        return tls
    text = str(value) or type(value).__name__
    return scrub_text(f"{type(value).__name__}: {text}")[:300]


def _describe_tls(value: BaseException) -> str | None:
    try:
        from OpenSSL import SSL
        from service_identity.exceptions import VerificationError
    except ImportError:  # pragma: no cover - twisted[tls] is a dependency
        return None
    if isinstance(value, VerificationError):
        names = []
        for mismatch in value.errors:
            wanted = getattr(mismatch, "mismatched_id", None)
            name = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None)
            if isinstance(name, bytes):
                name = name.decode("ascii", "replace")
            if name is not None and str(name) not in names:
                names.append(str(name))
        host = " or ".join(names) or "the upstream's host name"
        return f"the upstream's TLS certificate is not valid for {host}"
    if isinstance(value, SSL.Error):
        details: list[str] = []
        for entry in value.args[0] if value.args and isinstance(value.args[0], list) else []:
            if isinstance(entry, tuple) and entry and entry[-1]:
                details.append(str(entry[-1]))
        if any("certificate verify failed" in d for d in details):
            return (
                "the upstream's TLS certificate is not trusted (an unknown or self-signed "
                "issuer, or expired); if the upstream is yours, add its CA with --ca-bundle"
            )
        detail = ", ".join(details) or "no reason given"
        return f"the TLS handshake with the upstream failed ({detail})"
    return None
