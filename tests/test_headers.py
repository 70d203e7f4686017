"""
The header policy: what crosses the proxy in each direction.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from subrouter.accounts.store import Account, AccountKind
from subrouter.upstream.headers import (
    HOP_BY_HOP,
    SUBROUTER_HEADERS,
    client_response_headers,
    connection_tokens,
    upstream_request_headers,
)
from subrouter.upstream.routing import Upstreams

OAUTH = Account(
    id="a@example.com",
    kind=AccountKind.OAUTH,
    source="/x/a.json",
    chatgpt_account_id="ws-1",
    secret="access-A",
)
APIKEY = Account(id="apikey:k", kind=AccountKind.APIKEY, source="/x/k.json", secret="sk-key")


_UP = Upstreams.from_text("https://chatgpt.example/backend-api/codex", "https://api.example")


def _creds(account: Account) -> list[tuple[bytes, bytes]]:
    provider = _UP.provider(account.kind, account.provider)
    return provider.credential_headers(account.secret, account.chatgpt_account_id)


def _headers(pairs: list[tuple[bytes, bytes]]) -> Headers:
    h = Headers()
    for name, value in pairs:
        h.addRawHeader(name, value)
    return h


def test_oauth_credentials_replace_the_clients() -> None:
    client = _headers(
        [
            (b"Authorization", b"Bearer client-dummy"),
            (b"ChatGPT-Account-ID", b"client-workspace"),
        ]
    )
    out = upstream_request_headers(client, _creds(OAUTH))
    assert out.getRawHeaders(b"authorization") == [b"Bearer access-A"]
    assert out.getRawHeaders(b"chatgpt-account-id") == [b"ws-1"]


def test_api_key_accounts_never_forward_a_workspace_header() -> None:
    client = _headers([(b"ChatGPT-Account-ID", b"client-workspace")])
    out = upstream_request_headers(client, _creds(APIKEY))
    assert out.getRawHeaders(b"authorization") == [b"Bearer sk-key"]
    assert not out.hasHeader(b"chatgpt-account-id")


def test_oauth_account_without_workspace_drops_the_clients() -> None:
    account = Account(id="b@x", kind=AccountKind.OAUTH, source="/x/b.json", secret="t")
    out = upstream_request_headers(_headers([(b"ChatGPT-Account-ID", b"leak")]), _creds(account))
    assert not out.hasHeader(b"chatgpt-account-id")


def test_subrouter_and_hop_by_hop_headers_are_stripped() -> None:
    client = _headers(
        [
            (b"X-Subrouter-Session", b"s"),
            (b"X-Subrouter-Agent", b"codex"),
            (b"X-Subrouter-User-Email", b"u@x"),
            (b"X-Subrouter-User", b"u@x"),
            (b"X-User-Email", b"u@x"),
            (b"X-Subrouter-Account-ID", b"a"),
            (b"X-Subrouter-Account", b"a"),
            (b"X-Subrouter-Something-New", b"1"),
            (b"Connection", b"keep-alive, X-Private"),
            (b"X-Private", b"hop"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Authorization", b"Basic abc"),
            (b"TE", b"trailers"),
            (b"Upgrade", b"h2c"),
            (b"Host", b"127.0.0.1:31415"),
            (b"Content-Length", b"12"),
            (b"Accept-Encoding", b"br"),
        ]
    )
    out = upstream_request_headers(client, _creds(OAUTH))
    names = {name.lower() for name, _ in out.getAllRawHeaders()}
    assert names == {b"authorization", b"chatgpt-account-id"}


def test_everything_else_passes_unchanged_and_repeated() -> None:
    client = _headers(
        [
            (b"originator", b"codex_cli_rs"),
            (b"OpenAI-Beta", b"responses=experimental"),
            (b"x-codex-window-id", b"thread:3"),
            (b"session-id", b"abc"),
            (b"X-Multi", b"one"),
            (b"X-Multi", b"two"),
            (b"User-Agent", b"codex/0.16"),
        ]
    )
    out = upstream_request_headers(client, _creds(OAUTH))
    assert out.getRawHeaders(b"x-multi") == [b"one", b"two"]
    assert out.getRawHeaders(b"originator") == [b"codex_cli_rs"]
    assert out.getRawHeaders(b"openai-beta") == [b"responses=experimental"]
    assert out.getRawHeaders(b"x-codex-window-id") == [b"thread:3"]
    assert out.getRawHeaders(b"session-id") == [b"abc"]
    assert out.getRawHeaders(b"user-agent") == [b"codex/0.16"]


def test_connection_tokens_are_parsed_from_every_value() -> None:
    assert connection_tokens([b"close, X-A", b" x-b ,"]) == {b"close", b"x-a", b"x-b"}
    assert connection_tokens(None) == frozenset()


def test_response_headers_replace_defaults_and_drop_framing() -> None:
    upstream = _headers(
        [
            (b"Content-Type", b"text/event-stream"),
            (b"Content-Length", b"100"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"close, X-Hop"),
            (b"X-Hop", b"1"),
            (b"Server", b"upstream"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
            (b"Content-Encoding", b""),
            (b"x-codex-primary-used-percent", b"12"),
        ]
    )
    into = _headers([(b"Server", b"TwistedWeb"), (b"Date", b"today")])
    client_response_headers(upstream, into)
    assert into.getRawHeaders(b"server") == [b"upstream"]
    assert into.getRawHeaders(b"content-type") == [b"text/event-stream"]
    assert into.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2"]
    assert into.getRawHeaders(b"x-codex-primary-used-percent") == [b"12"]
    for gone in (b"content-length", b"transfer-encoding", b"connection", b"x-hop",
                 b"content-encoding"):
        assert not into.hasHeader(gone), gone


def test_real_content_encoding_is_kept() -> None:
    into = Headers()
    client_response_headers(_headers([(b"Content-Encoding", b"br")]), into)
    assert into.getRawHeaders(b"content-encoding") == [b"br"]


@pytest.mark.parametrize(("values", "relayed"), [
    ([b"a\nSet-Cookie: stolen=1", b"b\rc"], [b"a Set-Cookie: stolen=1", b"b c"]),
    ([b"a\nSet-Cookie: stolen=1"], [b"a Set-Cookie: stolen=1"]),
    ([b"ok", b"b\rc"], [b"ok", b"b c"]),
    ([b"x\r"], [b"x"]),
])
def test_a_line_break_in_an_upstream_header_value_never_reaches_the_client(
    values: list[bytes], relayed: list[bytes],
) -> None:
    # the upstream's head is split on CRLF only: a bare CR or LF inside a
    # value would start a header (or the body) of the client's answer
    upstream = Headers()
    upstream._rawHeaders[b"X-Evil"] = values
    into = Headers()
    client_response_headers(upstream, into)
    assert into.getRawHeaders(b"x-evil") == relayed
    assert not into.hasHeader(b"set-cookie")


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
_value = st.binary(min_size=0, max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)


@given(
    st.lists(
        st.tuples(
            st.one_of(
                _token.map(lambda t: t.encode()),
                st.sampled_from(sorted(HOP_BY_HOP | SUBROUTER_HEADERS)),
                st.sampled_from([b"authorization", b"chatgpt-account-id", b"host"]),
            ),
            _value,
        ),
        max_size=25,
    )
)
def test_no_client_credential_or_control_header_ever_goes_upstream(
    pairs: list[tuple[bytes, bytes]],
) -> None:
    client = _headers(pairs)
    out = upstream_request_headers(client, _creds(OAUTH))
    dropped = connection_tokens(client.getRawHeaders(b"connection"))
    for name, values in out.getAllRawHeaders():
        lower = name.lower()
        assert lower not in HOP_BY_HOP
        assert not lower.startswith(b"x-subrouter-")
        assert lower not in SUBROUTER_HEADERS
        if lower in (b"authorization", b"chatgpt-account-id"):
            continue
        assert lower not in dropped
        # every other header keeps all its values, in order
        assert list(values) == client.getRawHeaders(lower)
    assert out.getRawHeaders(b"authorization") == [b"Bearer access-A"]
    assert out.getRawHeaders(b"chatgpt-account-id") == [b"ws-1"]


_TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~",
    min_size=1, max_size=20,
).map(str.encode)


@given(present=st.dictionaries(_TOKEN, st.lists(st.binary(max_size=8), max_size=3), max_size=6),
       asked=_TOKEN)
def test_raw_values_and_drop_header_are_twisteds_lookups(
    present: dict[bytes, list[bytes]], asked: bytes
) -> None:
    from subrouter.upstream.headers import drop_header, raw_values

    ours, theirs = Headers(), Headers()
    for name, values in present.items():
        ours.setRawHeaders(name, values)
        theirs.setRawHeaders(name, values)
    for name in (asked, asked.upper(), asked.lower(), *present):
        assert raw_values(ours, name) == theirs.getRawHeaders(name)
    drop_header(ours, asked.upper())
    theirs.removeHeader(asked)
    assert list(ours.getAllRawHeaders()) == list(theirs.getAllRawHeaders())


def test_canonical_names_are_twisteds_remembered_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from twisted.web.http_headers import InvalidHeaderName, _nameEncoder

    from subrouter.upstream import headers

    monkeypatch.setattr(headers, "CANONICAL_NAMES", {})
    monkeypatch.setattr(headers, "_NAMES_KEPT", 3)
    for name in (b"content-type", b"X-CODEX-PRIMARY-USED-PERCENT", b"www-authenticate",
                 b"te", b"content-md5"):
        assert headers.canonical_name(name) == _nameEncoder.encode(name)
        assert headers.canonical_name(name) == _nameEncoder.encode(name)
    assert len(headers.CANONICAL_NAMES) == 3
    with pytest.raises(InvalidHeaderName):
        headers.canonical_name(b"bad name")
    assert b"bad name" not in headers.CANONICAL_NAMES
