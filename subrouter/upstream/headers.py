# -*- test-case-name: tests.test_headers -*-
"""
Which headers cross the proxy, in each direction. Pure functions, no I/O.

Upstream requests carry every client header except the hop-by-hop ones (and
those named in ``Connection``), Subrouter's own ``X-Subrouter-*`` controls,
the client's credentials (``Authorization``, ``x-api-key``,
``ChatGPT-Account-ID``), and the few the HTTP client recomputes (``Host``,
``Content-Length``, ``Accept-Encoding``). The chosen account's credentials are
then set. Repeated headers stay repeated and in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from twisted.web.http_headers import Headers, _nameEncoder

#: header names as they were written (in the code, or in a request or
#: answer head), and as ``Headers`` keys them; up to _NAMES_KEPT of them
#: (the same few come again and again). The hot paths look here first.
CANONICAL_NAMES: dict[bytes, bytes] = {}
_NAMES_KEPT = 1024


def canonical_name(name: bytes) -> bytes:
    """
    ``name`` as ``Headers`` keys it (Twisted's canonical form), remembered.

    :raises InvalidHeaderName: for a name that is not an HTTP token.
    """
    canonical = CANONICAL_NAMES.get(name)
    if canonical is None:
        canonical = _nameEncoder.encode(name)
        if len(CANONICAL_NAMES) < _NAMES_KEPT:
            CANONICAL_NAMES[name] = canonical
    return canonical


def raw_values(headers: Headers, name: bytes) -> list[bytes] | None:
    """
    ``headers.getRawHeaders(name)`` without its layers (the name encoded
    anew on every call, tens of µs per request in a busy daemon): the
    header's values, or None. ``name`` is one written in the code.
    """
    canonical = CANONICAL_NAMES.get(name) or canonical_name(name)
    return headers._rawHeaders.get(canonical) or None


def drop_header(headers: Headers, name: bytes) -> None:
    """
    ``headers.removeHeader(name)`` without its layers; ``name`` is one
    written in the code.
    """
    headers._rawHeaders.pop(canonical_name(name), None)


#: RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

#: headers that steer Subrouter itself and never go upstream (besides every
#: ``x-subrouter-*`` header)
SUBROUTER_HEADERS = frozenset(
    {
        b"x-subrouter-session",
        b"x-subrouter-agent",
        b"x-subrouter-user-email",
        b"x-subrouter-user",
        b"x-user-email",
        b"x-subrouter-account-id",
        b"x-subrouter-account",
    }
)

#: recomputed by the HTTP client, or replaced by the account's credentials
_REQUEST_ONLY_DROPS = frozenset(
    {
        b"host",
        b"content-length",
        b"accept-encoding",
        b"authorization",
        b"x-api-key",
        b"chatgpt-account-id",
    }
)

#: comma-list headers a provider adds a token to instead of replacing them:
#: Claude Code's ``anthropic-beta`` list changes between versions and every
#: flag in it matters to the API
_LIST_HEADERS = frozenset({b"anthropic-beta"})

#: recomputed when the body is re-framed towards the client
_RESPONSE_ONLY_DROPS = frozenset({b"content-length"})


def connection_tokens(values: Iterable[bytes] | None) -> frozenset[bytes]:
    """
    The header names listed in ``Connection`` values, lower-cased.
    """
    if not values:
        return frozenset()
    names: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                names.add(token)
    return frozenset(names)


def is_subrouter_header(lower_name: bytes) -> bool:
    return lower_name in SUBROUTER_HEADERS or lower_name.startswith(b"x-subrouter-")


def forwardable(
    client: Headers, also_drop: frozenset[bytes] = frozenset()
) -> Iterator[tuple[bytes, Sequence[bytes]]]:
    """
    The client headers that may go upstream: all but the hop-by-hop ones,
    those named in ``Connection``, Subrouter's own, the client's credentials
    and those the HTTP client recomputes, and ``also_drop``.
    """
    dropped = connection_tokens(raw_values(client, b"connection"))
    if also_drop:
        dropped |= also_drop
    verdicts = _ALWAYS_DROPPED
    for name, values in client.getAllRawHeaders():
        drop = verdicts.get(name)
        if drop is None:
            lower = name.lower()
            drop = lower in HOP_BY_HOP or lower in _REQUEST_ONLY_DROPS or is_subrouter_header(lower)
            if len(verdicts) < _VERDICTS_KEPT:
                verdicts[name] = drop
        if drop or (dropped and name.lower() in dropped):
            continue
        yield name, values


#: whether a client header name (as Headers keys it) is always dropped on the
#: way upstream, decided once per name, for up to _VERDICTS_KEPT names
_ALWAYS_DROPPED: dict[bytes, bool] = {}
_VERDICTS_KEPT = 1024


def upstream_request_headers(
    client: Headers, credentials: Iterable[tuple[bytes, bytes]]
) -> Headers:
    """
    The headers to send upstream for a client request.

    :param client: the client's request headers.
    :param credentials: the chosen account's credential headers, which
        replace the client's; for a comma-list header (``anthropic-beta``)
        the value is a token added to the client's list when not already in
        it, or, written ``-token``, removed from it.
    """
    out = Headers()
    raw = out._rawHeaders
    for name, values in forwardable(client):
        # as the client's request head had them: canonical names, and values
        # the request parser let through (no CR, LF or NUL)
        raw[name] = list(values)
    for name, value in credentials:
        if name.lower() in _LIST_HEADERS:
            edited = edit_list(out.getRawHeaders(name), value)
            if edited:
                out.setRawHeaders(name, edited)
            else:
                out.removeHeader(name)
        else:
            out.setRawHeaders(name, [value])
    return out


def edit_list(values: Sequence[bytes] | None, edit: bytes) -> list[bytes]:
    """
    A comma-list header's values, as one value, with ``edit`` applied:
    ``token`` added once, ``-token`` removed. Empty when nothing is left.
    """
    items: list[bytes] = []
    for value in values or ():
        for item in value.split(b","):
            item = item.strip()
            if item and item not in items:
                items.append(item)
    if edit.startswith(b"-"):
        items = [item for item in items if item != edit[1:]]
    elif edit not in items:
        items.append(edit)
    return [b",".join(items)] if items else []


def client_response_headers(upstream: Headers, into: Headers) -> None:
    """
    Copy an upstream response's headers into the client response's headers,
    replacing what Twisted put there by default (``Server``, ``Date``).

    :param upstream: the upstream response's headers.
    :param into: the client response's headers, changed in place.
    """
    dropped = connection_tokens(raw_values(upstream, b"connection"))
    raw = into._rawHeaders
    for name, values in upstream.getAllRawHeaders():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _RESPONSE_ONLY_DROPS or lower in dropped:
            continue
        kept = list(values)
        if lower == b"content-encoding":
            # Twisted's gzip-decoding agent leaves an empty Content-Encoding
            # behind on responses that had none
            kept = [v for v in kept if v.strip()]
            if not kept:
                continue
        if len(kept) == 1:  # nearly always: no generator for it
            broken = b"\r" in kept[0] or b"\n" in kept[0]
        else:
            broken = any(b"\r" in v or b"\n" in v for v in kept)
        if broken:
            into.setRawHeaders(name, kept)  # folds the line breaks into spaces
        else:
            raw[name] = kept
