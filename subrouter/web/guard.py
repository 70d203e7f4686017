# -*- test-case-name: tests.test_guard -*-
"""
Who may drive Subrouter: no web page, and on a shared server no stranger.

Every request, on every surface (the proxy, the WebSocket relay, the
``/_subrouter/`` pages), passes :meth:`Guard.check` before anything else
looks at it:

- ``Host`` must name this server: a loopback name or address, the address
  the connection arrived on, the ``--addr`` host, or a name given with
  ``--allow-host``. Anything else is DNS rebinding: a page of
  ``evil.example`` whose name now resolves to 127.0.0.1.
- A request carrying ``Origin`` (``null`` included) or browser fetch metadata
  (``Sec-Fetch-Site``) comes from a web page. Only the dashboard's own
  same-origin requests to ``/_subrouter/`` pass; agents (Codex, Claude Code,
  curl) send neither header. No CORS header is ever sent, so no other page
  can read an answer either.
- With client tokens (``--client-tokens``, required by ``--expose``), every
  request but the dashboard's static shell must carry a valid token in
  ``X-Subrouter-Token`` or ``Authorization: Bearer``. The token is removed
  from the request at once, so nothing later can forward, log or record it;
  the client's name goes on in ``X-Subrouter-Client`` (an ``X-Subrouter-*``
  header, never forwarded), where it becomes the user when none is named.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs
from twisted.web.http_headers import Headers

from subrouter.accounts.client_tokens import ClientTokenFile
from subrouter.upstream.headers import drop_header, raw_values

ADMIN = b"_subrouter"
#: the dashboard's static shell: served to anyone who passes the origin checks
#: (it holds no data; the data it fetches needs the token)
PUBLIC = frozenset({b"dashboard", b"dashboard.js", b"dashboard.css"})
CLIENT_HEADER = b"x-subrouter-client"
TOKEN_HEADER = b"x-subrouter-token"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@attrs.frozen
class Refusal:
    """
    Why a request is refused, as the JSON error answer gives it.
    """

    status: int
    kind: str
    message: str


def host_name(value: bytes) -> str | None:
    """
    The host of a ``Host`` header value, lower-cased, without port, brackets
    or trailing dot; None when it is not a host.
    """
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return inner or None
    host, sep, port = text.rpartition(":")
    if not sep:
        host = text
    elif not port.isdigit():
        return None
    host = host.rstrip(".")
    if not host or any(not (c.isalnum() or c in "-._") for c in host):
        return None
    return host


def is_loopback_host(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _same_address(host: str, local: str | None) -> bool:
    if not local:
        return False
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(local.split("%")[0])
    except ValueError:
        return False


def host_refusal(host_header: bytes | None, local: str | None,
                 allowed: frozenset[str]) -> Refusal | None:
    """
    Whether the ``Host`` a request names may reach this server.

    :param local: the address the connection arrived on.
    :param allowed: lower-cased names (and addresses) allowed besides loopback.
    """
    if host_header is None:
        return None  # HTTP/1.0 without Host: no name to rebind
    host = host_name(host_header)
    if host is not None and (
        is_loopback_host(host) or host in allowed or _same_address(host, local)
    ):
        return None
    shown = host_header.decode("ascii", "replace")[:100]
    return Refusal(403, "host_not_allowed",
                   f"Host {shown!r} is not this Subrouter; add it with --allow-host if it "
                   "should be")


def origin_refusal(origin: bytes | None, fetch_site: bytes | None, host_header: bytes | None,
                   admin: bool) -> Refusal | None:
    """
    Whether a request comes from a web page other than the dashboard itself.

    :param admin: whether the path is under ``/_subrouter/``.
    """
    if origin is not None:
        own = admin and host_header is not None and origin.strip().lower() in (
            b"http://" + host_header.strip().lower(), b"https://" + host_header.strip().lower()
        )
        if not own:
            shown = origin.decode("ascii", "replace")[:100]
            where = "here" if admin else "on the proxy"
            return Refusal(403, "origin_refused",
                           f"requests from web pages (Origin {shown!r}) are refused {where}")
    if fetch_site is not None:
        site = fetch_site.strip().lower()
        # "none": the user typed the address; "same-origin": the dashboard's own fetches
        if site != b"none" and not (admin and site == b"same-origin"):
            shown = site.decode("ascii", "replace")[:40]
            return Refusal(403, "origin_refused",
                           f"browser requests from other pages (Sec-Fetch-Site: {shown}) "
                           "are refused")
    return None


def presented_token(headers: Headers) -> tuple[str | None, bool]:
    """
    The client token a request carries, and whether it came in
    ``Authorization`` (which then is the client's, not an agent's).
    """
    values = raw_values(headers, TOKEN_HEADER)
    if values:
        return values[0].decode("latin-1").strip(), False
    for value in raw_values(headers, b"authorization") or ():
        scheme, _, rest = value.decode("latin-1").strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            return rest.strip(), True
    return None, False


@attrs.define
class Guard:
    """
    :param allowed_hosts: names and addresses allowed in ``Host`` besides
        loopback and the connection's own address.
    :param tokens: the client tokens, or None when serving without them.
    """

    allowed_hosts: frozenset[str] = frozenset()
    tokens: ClientTokenFile | None = None
    #: the verdict on each (Host, local address) seen: parsing addresses costs
    #: tens of microseconds, and a server sees a handful of distinct Hosts
    _hosts: dict[tuple[bytes | None, str | None], Refusal | None] = attrs.field(
        factory=dict, init=False, repr=False)

    @classmethod
    def build(cls, hosts: Iterable[str], tokens: ClientTokenFile | None) -> Guard:
        names = set()
        for host in hosts:
            name = host_name(host.encode("ascii", "replace")) or host.strip().lower()
            names.add(name)
        return cls(frozenset(names), tokens)

    def check(self, headers: Headers, first_segment: bytes, second_segment: bytes | None,
              local: str | None) -> Refusal | None:
        """
        Check a request, and take its client token off it.

        :param first_segment: the first path segment (``_subrouter`` for the
            admin pages).
        :param second_segment: the next one, for the dashboard's shell.
        :param local: the address the connection arrived on.
        """
        host = raw_values(headers, b"host")
        host_header = host[0] if host else None
        seen = (host_header, local)
        try:
            refused = self._hosts[seen]
        except KeyError:
            refused = host_refusal(host_header, local, self.allowed_hosts)
            if len(self._hosts) >= 256:
                self._hosts.clear()  # a flood of made-up names: start over
            self._hosts[seen] = refused
        if refused is not None:
            return refused
        admin = first_segment == ADMIN
        origin = raw_values(headers, b"origin")
        site = raw_values(headers, b"sec-fetch-site")
        refused = origin_refusal(origin[0] if origin else None, site[0] if site else None,
                                 host_header, admin)
        if refused is not None:
            return refused
        drop_header(headers, CLIENT_HEADER)  # only the guard names the client
        if self.tokens is None:
            drop_header(headers, TOKEN_HEADER)
            return None
        token, in_authorization = presented_token(headers)
        drop_header(headers, TOKEN_HEADER)
        if in_authorization:
            drop_header(headers, b"authorization")
        if admin and second_segment in PUBLIC:
            return None
        name = self.tokens.match(token) if token else None
        if name is None:
            return Refusal(401, "client_token_required",
                           "this Subrouter needs a client token: send it in X-Subrouter-Token "
                           "(or Authorization: Bearer); make one with `cx client-token make "
                           "NAME`" if not token else "the client token is not valid (revoked?)")
        headers.setRawHeaders(CLIENT_HEADER, [name.encode()])
        return None
