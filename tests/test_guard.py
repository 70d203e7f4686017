"""
No web page, and on a shared server no stranger, can drive Subrouter: the
guard's rules as pure functions, then each surface (the proxy, the WebSocket
upgrade, the ``/_subrouter/`` pages) over real sockets, with Codex-like
requests unaffected and client tokens required, stripped and never recorded.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.web.http_headers import Headers

from subrouter.accounts import client_tokens
from subrouter.web.guard import host_name, host_refusal, origin_refusal
from tests.support.daemon import Daemon, make_config, read_all, sleep, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, json_response, write_oauth_account

FAR = time.time() + 30 * 86400
COMPLETED = {"id": "resp_1", "model": "gpt-5", "usage": {
    "input_tokens": 50, "input_tokens_details": {"cached_tokens": 10}, "output_tokens": 5,
    "total_tokens": 55}}
WS_UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
#: a Codex CLI request as it arrives: no Origin, no fetch metadata
CODEX = {"User-Agent": "codex_cli_rs/0.169.0", "originator": "codex_cli_rs",
         "session-id": "thread-9", "Authorization": "Bearer codex-own-login",
         "Content-Type": "application/json"}


# -- the rules -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "host"), [
    (b"127.0.0.1:31415", "127.0.0.1"), (b"LOCALHOST", "localhost"), (b"[::1]:8", "::1"),
    (b"box.ts.net.:31415", "box.ts.net"), (b"evil.example", "evil.example"),
    (b"a b", None), (b"[::1", None), (b"x:port", None), (b"\xff", None),
])
def test_host_names_are_read_strictly(value: bytes, host: str | None) -> None:
    assert host_name(value) == host


@pytest.mark.parametrize(("host", "local", "allowed"), [
    (b"127.0.0.1:31415", "127.0.0.1", True),
    (b"127.8.9.10", "127.0.0.1", True),
    (b"localhost:31415", "127.0.0.1", True),
    (b"[::1]:31415", "::1", True),
    (b"[::ffff:127.0.0.1]:1", "127.0.0.1", True),
    (b"100.64.0.7:31415", "100.64.0.7", True),  # the address the connection came to
    (b"100.64.0.8:31415", "100.64.0.7", False),
    (b"box.tail.ts.net:31415", "100.64.0.7", True),  # --allow-host
    (b"evil.example:31415", "127.0.0.1", False),
    (b"localhost.evil.example", "127.0.0.1", False),
])
def test_only_this_servers_names_pass(host: bytes, local: str, allowed: bool) -> None:
    refusal = host_refusal(host, local, frozenset({"box.tail.ts.net"}))
    assert (refusal is None) == allowed
    if refusal is not None:
        assert refusal.status == 403 and refusal.kind == "host_not_allowed"


@pytest.mark.parametrize(("origin", "site", "admin", "allowed"), [
    (None, None, False, True),  # agents
    (None, b"none", False, True),  # the user typed the address
    (b"http://127.0.0.1:31415", b"same-origin", True, True),  # the dashboard itself
    (b"http://127.0.0.1:31415", b"same-origin", False, False),  # ... never on the proxy
    (b"null", None, True, False),
    (b"null", None, False, False),
    (b"https://evil.example", b"cross-site", True, False),
    (b"http://localhost:8080", b"same-site", True, False),
    (None, b"cross-site", False, False),
    (None, b"same-site", True, False),
])
def test_web_pages_other_than_the_dashboard_are_refused(
    origin: bytes | None, site: bytes | None, admin: bool, allowed: bool
) -> None:
    refusal = origin_refusal(origin, site, b"127.0.0.1:31415", admin)
    assert (refusal is None) == allowed


# -- every surface, over sockets ----------------------------------------------------------


async def _daemon(tmp_path: Path, upstream: FakeUpstream, ca: TestCA,
                  token: str | None = None, **kw: Any) -> Daemon:
    write_oauth_account(tmp_path / "accounts-store", "a@example.com", exp=FAR)
    daemon = await start_daemon(make_config(tmp_path, upstream, ca, **kw))
    headers = {"X-Subrouter-Token": [token]} if token else {}
    deadline = time.monotonic() + 5
    while True:
        response = await daemon.client.get(daemon.url + "/_subrouter/accounts",
                                           headers=headers)
        if response.code == 200 and (await response.json())["accounts"]:
            return daemon
        await read_all(response)
        assert time.monotonic() < deadline
        await sleep(0.02)


SURFACES = [
    ("proxy", "POST", "/v1/responses", {}),
    ("websocket", "GET", "/v1/responses", WS_UPGRADE),
    ("admin", "GET", "/_subrouter/accounts", {}),
    ("admin-post", "POST", "/_subrouter/account-status", {}),
]


async def _ask(daemon: Daemon, method: str, path: str, headers: dict[str, str],
               body: bytes | None = None) -> tuple[int, Any, Headers]:
    response = await daemon.request(
        method, path, headers=Headers({k: [v] for k, v in headers.items()}), data=body)
    raw = await read_all(response)
    try:
        document = json.loads(raw)
    except ValueError:
        document = raw
    return response.code, document, response.headers


@pytest_twisted.ensureDeferred
async def test_foreign_hosts_origins_and_cross_site_fetches_are_refused_everywhere(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    daemon = await _daemon(tmp_path, upstream, ca)
    try:
        upstream.script(b"/backend-api/codex/responses", json_response(200, COMPLETED))
        before = len(upstream.requests)
        own = f"http://127.0.0.1:{daemon.port}"
        attacks = {
            "foreign host": {"Host": f"evil.example:{daemon.port}"},
            "foreign origin": {"Origin": "https://evil.example"},
            "null origin": {"Origin": "null"},
            "cross-site fetch": {"Sec-Fetch-Site": "cross-site"},
        }
        for surface, method, path, extra in SURFACES:
            for attack, headers in attacks.items():
                code, document, answer_headers = await _ask(
                    daemon, method, path, {**extra, **headers, "Content-Type": "text/plain"},
                    b'{"model":"x"}' if method == "POST" else None)
                assert code == 403, (surface, attack, document)
                assert document["error"]["type"] in ("host_not_allowed", "origin_refused")
                assert not answer_headers.hasHeader(b"access-control-allow-origin")
        # the dashboard's own origin may use /_subrouter/, never the proxy
        code, _, _ = await _ask(daemon, "GET", "/_subrouter/accounts",
                                {"Origin": own, "Sec-Fetch-Site": "same-origin"})
        assert code == 200
        code, _, _ = await _ask(daemon, "POST", "/v1/responses",
                                {"Origin": own, "Sec-Fetch-Site": "same-origin"}, b"{}")
        assert code == 403
        assert len(upstream.requests) == before  # nothing went upstream
        # Codex, under every loopback name, is unaffected
        for host in (f"127.0.0.1:{daemon.port}", f"localhost:{daemon.port}",
                     f"[::1]:{daemon.port}"):
            code, document, answer_headers = await _ask(
                daemon, "POST", "/v1/responses", {**CODEX, "Host": host}, b'{"model":"x"}')
            assert code == 200 and document["usage"]["total_tokens"] == 55
            assert not answer_headers.hasHeader(b"access-control-allow-origin")
        assert len(upstream.requests) == before + 3
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_allowed_host_names_pass(tmp_path: Path, upstream: FakeUpstream, ca: TestCA
                                       ) -> None:
    daemon = await _daemon(tmp_path, upstream, ca, allow_hosts=("box.tail.ts.net",))
    try:
        code, _, _ = await _ask(daemon, "GET", "/_subrouter/health",
                                {"Host": f"box.tail.ts.net:{daemon.port}"})
        assert code == 200
        code, _, _ = await _ask(daemon, "GET", "/_subrouter/health",
                                {"Host": f"other.tail.ts.net:{daemon.port}"})
        assert code == 403
    finally:
        await daemon.stop()


# -- client tokens --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_shared_server_needs_a_token_strips_it_and_names_the_user(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    path = str(tmp_path / "client-tokens")
    alice = client_tokens.add(path, "alice")
    bob = client_tokens.add(path, "bob@example.com")
    daemon = await _daemon(tmp_path, upstream, ca, client_tokens=path,
                           transcripts=str(tmp_path / "tx"),
                           token=alice)
    try:
        upstream.script(b"/backend-api/codex/responses", json_response(200, COMPLETED))
        before = len(upstream.requests)
        for surface, method, path_, extra in SURFACES:
            for token in (None, "srt_not-a-token-at-all"):
                headers = dict(extra)
                if token:
                    headers["X-Subrouter-Token"] = token
                code, document, answer = await _ask(daemon, method, path_, headers,
                                                    b"{}" if method == "POST" else None)
                assert code == 401, (surface, token)
                assert document["error"]["type"] == "client_token_required"
                assert answer.getRawHeaders(b"www-authenticate") == [b'Bearer realm="subrouter"']
        assert len(upstream.requests) == before
        # the dashboard's shell holds no data: it loads without a token, then asks for one
        for shell in ("dashboard", "dashboard.js", "dashboard.css"):
            code, _, _ = await _ask(daemon, "GET", f"/_subrouter/{shell}", {})
            assert code == 200
        # Codex sends the token beside its own Authorization; curl as a bearer token
        code, document, _ = await _ask(
            daemon, "POST", "/v1/responses", {**CODEX, "X-Subrouter-Token": alice},
            b'{"model":"x"}')
        assert code == 200, document
        code, document, _ = await _ask(
            daemon, "POST", "/v1/responses",
            {"Authorization": f"Bearer {bob}", "session-id": "curl-1"}, b'{"model":"x"}')
        assert code == 200, document
        for seen in upstream.requests[before:]:
            values = b" ".join(v for _, v in seen.headers)
            assert alice.encode() not in values and bob.encode() not in values
            assert seen.header(b"x-subrouter-token") is None
            assert (seen.header(b"authorization") or b"").startswith(b"Bearer ey")  # the account's
        # the token's name is the user when none is sent; an email header still wins
        deadline = time.monotonic() + 5
        while True:
            code, usage, _ = await _ask(daemon, "GET", "/_subrouter/token-usage?since=1h",
                                        {"X-Subrouter-Token": alice})
            if usage["totals"]["requests"] == 2 or time.monotonic() > deadline:
                break
            await sleep(0.1)
        assert {r["key"] for r in usage["by"]["user"]["rows"]} == {"alice", "bob@example.com"}
        # the tokens are nowhere on disk but in their file, nor in the log
        for file in (tmp_path / "tx").rglob("*"):
            if file.is_file():
                text = file.read_text()
                assert alice not in text and bob not in text
        logged = json.dumps([{k: str(v) for k, v in e.items()} for e in daemon.log])
        assert alice not in logged and bob not in logged
        # a revoked token stops working within seconds
        client_tokens.revoke(path, "alice")
        deadline = time.monotonic() + 5
        while True:
            code, _, _ = await _ask(daemon, "GET", "/_subrouter/health",
                                    {"X-Subrouter-Token": alice})
            if code == 401:
                break
            assert time.monotonic() < deadline, "the revoked token still works"
            await sleep(0.05)
    finally:
        await daemon.stop()
