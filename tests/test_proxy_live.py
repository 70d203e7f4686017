"""
The proxy over real sockets: the daemon's Site on a loopback port, a fake
HTTPS Codex backend / OpenAI API / token endpoint behind it, trusted through a
test CA.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers

from tests.support.daemon import (
    Daemon,
    closed_port,
    make_config,
    read_all,
    sleep,
    start_daemon,
    until,
)
from tests.support.tlsca import TestCA
from tests.support.upstream import (
    FakeUpstream,
    Gate,
    StreamReader,
    access_token_for,
    echo_body,
    hang,
    json_response,
    sse,
    write_apikey_account,
    write_oauth_account,
)

EMAIL = "alice@example.com"
FAR = time.time() + 30 * 86400


@pytest_twisted.async_yield_fixture
async def daemon(tmp_path: Path, upstream: FakeUpstream, ca: TestCA) -> AsyncIterator[Daemon]:
    running = await start_daemon(make_config(tmp_path, upstream, ca))
    yield running
    await running.stop()


def oauth(daemon: Daemon, email: str = EMAIL, *, exp: float = FAR, **kw: Any) -> Path:
    return write_oauth_account(daemon.accounts_dir, email, exp=exp, **kw)


# -- streaming -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_each_event_reaches_the_client_before_the_upstream_sends_the_next(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon)
    await daemon.wait_for_accounts(1)
    gate = Gate()
    events = [json.dumps({"type": "response.output_text.delta", "n": i}) for i in range(3)]
    upstream.script(b"/backend-api/codex/responses", sse(events, gate=gate))
    response = await daemon.request("POST", "/v1/responses", data=b'{"model":"x"}')
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
    reader = StreamReader()
    response.deliverBody(reader)
    for i in range(3):
        await reader.wait_for(f'"n": {i}'.encode())
        # the client has event i while the upstream has written only i + 1 events
        assert gate.written == i + 1
        gate.release()
    assert await reader.done is None  # a clean end
    assert reader.received.count(b"data: ") == 3


@pytest_twisted.ensureDeferred
async def test_client_disconnect_cancels_the_upstream_request(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon)
    await daemon.wait_for_accounts(1)
    gate = Gate()
    upstream.script(b"/backend-api/codex/responses", sse(["a", "b", "c"], gate=gate))
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    reader = StreamReader()
    response.deliverBody(reader)
    await reader.wait_for(b"data: a")
    reader.transport.stopProducing()  # the client goes away mid-stream
    path = await upstream.disconnected(1)
    assert path == b"/backend-api/codex/responses"
    assert gate.written == 1


@pytest_twisted.ensureDeferred
async def test_client_disconnect_before_headers_cancels_the_upstream_request(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon)
    await daemon.wait_for_accounts(1)
    upstream.script(b"/backend-api/codex/responses", hang())
    d = daemon.request("POST", "/v1/responses", data=b"{}")
    await upstream.seen(1)
    d.cancel()
    with pytest.raises(Exception):  # noqa: B017 - the client's own cancellation
        await d
    assert await upstream.disconnected(1) == b"/backend-api/codex/responses"


@pytest_twisted.ensureDeferred
async def test_upstream_dying_mid_stream_aborts_the_client(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon)
    await daemon.wait_for_accounts(1)
    upstream.script(b"/backend-api/codex/responses", sse(["a", "b", "c", "d"], die_after=2))
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    reader = StreamReader()
    response.deliverBody(reader)
    reason = await reader.done
    assert reason is not None, "a cut stream must never end cleanly"
    assert b"data: b" in reader.received
    assert b"data: c" not in reader.received
    line = [e for e in daemon.log if e.get("log_category") == "request"][-1]
    assert line["outcome"] == "upstream-died"


@pytest_twisted.ensureDeferred
async def test_idle_upstream_before_headers_gives_504(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    running = await start_daemon(make_config(tmp_path, upstream, ca, idle_timeout=0.3))
    try:
        oauth(running)
        await running.wait_for_accounts(1)
        upstream.script(b"/backend-api/codex/responses", hang())
        response = await running.request("POST", "/v1/responses", data=b"{}")
        assert response.code == 504
        error = json.loads(await read_all(response))["error"]
        assert error["type"] == "upstream_timeout"
        assert EMAIL in error["message"]
        assert await upstream.disconnected(1) == b"/backend-api/codex/responses"
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_idle_upstream_mid_stream_aborts_the_client(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    running = await start_daemon(make_config(tmp_path, upstream, ca, idle_timeout=0.3))
    try:
        oauth(running)
        await running.wait_for_accounts(1)
        gate = Gate()
        upstream.script(b"/backend-api/codex/responses", sse(["a", "b"], gate=gate))
        response = await running.request("POST", "/v1/responses", data=b"{}")
        reader = StreamReader()
        response.deliverBody(reader)
        assert await reader.done is not None
        assert reader.received.endswith(b"data: a\n\n")
        assert await upstream.disconnected(1) == b"/backend-api/codex/responses"
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_steady_events_keep_a_stream_alive_past_the_idle_timeout(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    running = await start_daemon(make_config(tmp_path, upstream, ca, idle_timeout=0.4))
    try:
        oauth(running)
        await running.wait_for_accounts(1)
        events = [str(i) for i in range(8)]
        upstream.script(b"/backend-api/codex/responses", sse(events, gaps=0.15))
        response = await running.request("POST", "/v1/responses", data=b"{}")
        body = await read_all(response)  # 8 x 0.15 s = 1.2 s, three idle timeouts' worth
        assert body.count(b"data: ") == 8
    finally:
        await running.stop()


# -- routing and credentials ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_upstream_sees_the_accounts_credentials_never_the_clients(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon, account_id="ws-42")
    await daemon.wait_for_accounts(1)
    headers = Headers(
        {
            b"Authorization": [b"Bearer client-dummy"],
            b"ChatGPT-Account-ID": [b"client-ws"],
            b"X-Subrouter-Session": [b"s1"],
            b"X-Subrouter-User-Email": [b"u@example.com"],
            b"X-Subrouter-Account-ID": [EMAIL.upper().encode()],
            b"X-User-Email": [b"u@example.com"],
            b"originator": [b"codex_cli_rs"],
            b"OpenAI-Beta": [b"responses=experimental"],
            b"x-codex-window-id": [b"thread-1:0"],
            b"session-id": [b"thread-1"],
            b"X-Multi": [b"one", b"two"],
            b"Connection": [b"X-Hop"],
            b"X-Hop": [b"secret-hop"],
        }
    )
    response = await daemon.request(
        "POST", "/v1/responses?stream=true&x=1+2", data=b'{"a":1}', headers=headers
    )
    assert response.code == 200
    await read_all(response)
    seen = upstream.requests[-1]
    assert seen.path == b"/backend-api/codex/responses"
    assert seen.query == b"stream=true&x=1+2"
    token = (daemon.accounts_dir / "accounts" / f"{EMAIL}.json").read_text()
    access = json.loads(token)["auth"]["tokens"]["access_token"]
    assert seen.header_values(b"authorization") == [f"Bearer {access}".encode()]
    assert seen.header_values(b"chatgpt-account-id") == [b"ws-42"]
    names = {name for name, _ in seen.headers}
    assert not any(n.startswith(b"x-subrouter-") for n in names)
    assert b"x-user-email" not in names and b"x-hop" not in names
    assert seen.header_values(b"x-multi") == [b"one", b"two"]
    assert seen.header(b"originator") == b"codex_cli_rs"
    assert seen.header(b"openai-beta") == b"responses=experimental"
    assert seen.header(b"x-codex-window-id") == b"thread-1:0"
    assert seen.header(b"session-id") == b"thread-1"
    assert seen.body == b'{"a":1}'


@pytest_twisted.ensureDeferred
async def test_api_keys_go_to_the_openai_api_with_v1(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    write_apikey_account(daemon.accounts_dir, "work", "sk-work-key-123456")
    await daemon.wait_for_accounts(1)
    for path in ("/responses", "/v1/responses"):
        response = await daemon.request("POST", path, data=b"{}")
        assert response.code == 200
        await read_all(response)
        seen = upstream.requests[-1]
        assert seen.path == b"/v1/responses"
        assert seen.header(b"authorization") == b"Bearer sk-work-key-123456"
        assert seen.header(b"chatgpt-account-id") is None


@pytest_twisted.ensureDeferred
async def test_other_paths_and_methods_pass(daemon: Daemon, upstream: FakeUpstream) -> None:
    oauth(daemon)
    await daemon.wait_for_accounts(1)
    response = await daemon.request("GET", "/v1/models?client_version=0.16")
    assert response.code == 200
    assert json.loads(await read_all(response))["path"] == "/backend-api/codex/models"
    assert upstream.requests[-1].query == b"client_version=0.16"
    response = await daemon.request("POST", "/responses/compact", data=b"{}")
    await read_all(response)
    assert upstream.requests[-1].path == b"/backend-api/codex/responses/compact"


@pytest_twisted.ensureDeferred
async def test_upstream_errors_pass_through_with_their_bodies(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon)
    await daemon.wait_for_accounts(1)
    body = {"error": {"type": "invalid_request_error", "message": "bad model"}}
    upstream.script(
        b"/backend-api/codex/responses", json_response(400, body, headers={b"x-request-id": b"r1"})
    )
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 400
    assert response.headers.getRawHeaders(b"x-request-id") == [b"r1"]
    assert json.loads(await read_all(response)) == body
    upstream.script(b"/backend-api/codex/responses", json_response(500, {"error": "boom"}))
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 500
    assert json.loads(await read_all(response)) == {"error": "boom"}
    # overload is not exhaustion: the account still takes requests
    upstream.script(b"/backend-api/codex/responses", json_response(200, {"ok": 1}))
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 200
    await read_all(response)


@pytest_twisted.ensureDeferred
async def test_a_usage_limit_with_no_other_account_reaches_the_client(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon)
    await daemon.wait_for_accounts(1)
    body = {"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached"}}
    upstream.script(
        b"/backend-api/codex/responses",
        json_response(429, body, headers={b"retry-after": b"120"}),
    )
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 429
    assert response.headers.getRawHeaders(b"retry-after") == [b"120"]
    assert json.loads(await read_all(response)) == body
    # until the window resets, new requests are told why at once
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 503
    error = json.loads(await read_all(response))["error"]
    assert error["type"] == "usage_limit_reached" and "resets in" in error["message"]
    listing = await daemon.get_json("/_subrouter/accounts")
    (row,) = listing["accounts"]
    assert row["exhausted_until"] is not None and row["usable_for_new_sessions"] is False


@pytest_twisted.ensureDeferred
async def test_a_64_mib_request_body_passes_intact(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon)
    await daemon.wait_for_accounts(1)
    upstream.script(b"/backend-api/codex/responses", echo_body())
    body = os.urandom(1 << 20) * 64
    response = await daemon.request("POST", "/v1/responses", data=body)
    assert response.code == 200
    answer = json.loads(await read_all(response))
    assert answer == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


# -- tokens ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_401_refreshes_once_and_retries_once(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    path = oauth(daemon, refresh_token="rt-start")
    await daemon.wait_for_accounts(1)
    upstream.valid_tokens = set()  # the stored access token has been revoked
    upstream.refresh_emails["rt-start"] = EMAIL
    response = await daemon.request("POST", "/v1/responses", data=b'{"turn":1}')
    assert response.code == 200
    await read_all(response)
    assert len(upstream.token_requests) == 1
    assert upstream.token_requests[0].json()["refresh_token"] == "rt-start"
    first, second = upstream.requests
    assert first.header(b"authorization") != second.header(b"authorization")
    assert second.body == b'{"turn":1}'
    stored = json.loads(path.read_text())["auth"]["tokens"]
    assert second.header(b"authorization") == f"Bearer {stored['access_token']}".encode()
    assert stored["refresh_token"] != "rt-start"


@pytest_twisted.ensureDeferred
async def test_a_second_401_is_passed_to_the_client(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon, refresh_token="rt-start")
    await daemon.wait_for_accounts(1)
    upstream.valid_tokens = set()
    upstream.token_answer = lambda body: (
        200,
        {"access_token": access_token_for(EMAIL, exp=FAR), "refresh_token": "rt-2",
         "id_token": "x.y.z"},
    )
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 401
    assert len(upstream.requests) == 2
    assert len(upstream.token_requests) == 1


@pytest_twisted.ensureDeferred
async def test_two_concurrent_requests_cause_one_refresh(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    path = oauth(daemon, exp=time.time() + 20, refresh_token="rt-old")  # expires within 60 s
    await daemon.wait_for_accounts(1)
    upstream.refresh_emails["rt-old"] = EMAIL
    gate: Deferred[None] = Deferred()
    upstream.token_gate = gate
    first = daemon.request("POST", "/v1/responses", data=b"1")
    second = daemon.request("POST", "/v1/responses", data=b"2")
    await until(lambda: len(upstream.token_requests) >= 1)
    await sleep(0.1)  # give a second refresh every chance to start
    assert len(upstream.token_requests) == 1
    gate.callback(None)
    for d in (first, second):
        response = await d
        assert response.code == 200
        await read_all(response)
    assert len(upstream.token_requests) == 1
    access = json.loads(path.read_text())["auth"]["tokens"]["access_token"]
    assert {r.header(b"authorization") for r in upstream.requests} == {
        f"Bearer {access}".encode()
    }


@pytest_twisted.ensureDeferred
async def test_the_active_codex_login_follows_a_refresh(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    path = oauth(daemon, exp=time.time() + 20, refresh_token="rt-old")
    daemon.codex_auth.parent.mkdir(parents=True)
    daemon.codex_auth.write_text(json.dumps(json.loads(path.read_text())["auth"]))
    await daemon.wait_for_accounts(1)
    upstream.refresh_emails["rt-old"] = EMAIL
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    await read_all(response)
    active = json.loads(daemon.codex_auth.read_text())
    stored = json.loads(path.read_text())["auth"]
    assert active["tokens"] == stored["tokens"]
    assert oct(daemon.codex_auth.stat().st_mode & 0o777) == "0o600"


@pytest_twisted.ensureDeferred
async def test_a_failed_refresh_moves_to_the_next_account_and_says_why(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon, "a@example.com", exp=time.time() + 10, refresh_token="rt-dead")
    oauth(daemon, "b@example.com")
    await daemon.wait_for_accounts(2)
    upstream.token_answer = lambda body: (400, {"error": {"code": "refresh_token_reused"}})
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 200
    await read_all(response)
    listing = await daemon.get_json("/_subrouter/accounts")
    a = next(row for row in listing["accounts"] if row["id"] == "a@example.com")
    assert a["usable"] is False
    assert "refresh_token_reused" in a["why_not"]


# -- failures the daemon explains -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_accounts_gives_503_telling_the_user_to_add_one(daemon: Daemon) -> None:
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 503
    error = json.loads(await read_all(response))["error"]
    assert error["type"] == "no_usable_account"
    assert "cx add" in error["message"]


@pytest_twisted.ensureDeferred
async def test_unreachable_upstream_gives_502_naming_the_account(
    tmp_path: Path, ca: TestCA
) -> None:
    running = await start_daemon(
        make_config(tmp_path, None, ca,
                    codex_upstream=f"https://127.0.0.1:{closed_port()}/backend-api/codex")
    )
    try:
        oauth(running)
        await running.wait_for_accounts(1)
        response = await running.request("POST", "/v1/responses", data=b"{}")
        assert response.code == 502
        error = json.loads(await read_all(response))["error"]
        assert error["type"] == "upstream_error"
        assert EMAIL in error["message"] and "connection refused" in error["message"]
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_an_untrusted_certificate_gives_502_naming_the_account(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    # no --ca-bundle: the test CA is not trusted
    running = await start_daemon(make_config(tmp_path, upstream, None))
    try:
        oauth(running)
        await running.wait_for_accounts(1)
        response = await running.request("POST", "/v1/responses", data=b"{}")
        assert response.code == 502
        message = json.loads(await read_all(response))["error"]["message"]
        assert EMAIL in message and "TLS" in message and "certificate" in message
        assert upstream.requests == []
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_corrupt_account_file_is_skipped_and_left_byte_for_byte(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon)
    corrupt = daemon.accounts_dir / "accounts" / "broken@example.com.json"
    original = b'{"email": "broken@example.com", "auth": {"tokens": '
    corrupt.write_bytes(original)
    os.chmod(corrupt, 0o640)
    stat_before = corrupt.stat()
    await daemon.wait_for_accounts(1)
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 200
    await read_all(response)
    listing = await daemon.get_json("/_subrouter/accounts")
    assert [s["file"] for s in listing["skipped_files"]] == [str(corrupt)]
    assert corrupt.read_bytes() == original
    stat_after = corrupt.stat()
    assert (stat_after.st_mtime_ns, stat_after.st_mode) == (
        stat_before.st_mtime_ns,
        stat_before.st_mode,
    )
    assert any("broken@example.com.json" in str(e.get("path")) for e in daemon.log)


@pytest_twisted.ensureDeferred
async def test_accounts_added_and_removed_on_disk_are_used_without_restart(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 503
    await read_all(response)
    path = oauth(daemon)
    await daemon.wait_for_accounts(1)
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 200
    await read_all(response)
    path.unlink()
    await daemon.wait_for_accounts(0)
    response = await daemon.request("POST", "/v1/responses", data=b"{}")
    assert response.code == 503
    await read_all(response)


# -- endpoints and logs --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_health_accounts_probe_and_unknown_endpoints(daemon: Daemon) -> None:
    oauth(daemon, plan="pro")
    write_apikey_account(daemon.accounts_dir, "work", "sk-work-key-123456")
    await daemon.wait_for_accounts(2)
    health = await daemon.get_json("/_subrouter/health")
    assert health["ok"] is True and health["version"]
    response = await daemon.request("GET", "/_subrouter/accounts")
    raw = await read_all(response)
    listing = json.loads(raw)
    rows = {row["id"]: row for row in listing["accounts"]}
    assert rows[EMAIL]["kind"] == "oauth" and rows[EMAIL]["plan"] == "pro"
    assert rows[EMAIL]["usable"] is True and rows[EMAIL]["why_not"] is None
    assert rows["apikey:work"]["kind"] == "apikey"
    assert b"sk-work-key-123456" not in raw
    assert b"eyJ" not in raw  # no JWT
    probe = await daemon.request("HEAD", "/")
    assert probe.code == 204
    missing = await daemon.request("GET", "/_subrouter/nope")
    assert missing.code == 404
    assert json.loads(await read_all(missing))["error"]["type"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_one_log_line_per_request_and_never_a_secret(
    daemon: Daemon, upstream: FakeUpstream
) -> None:
    oauth(daemon)
    write_apikey_account(daemon.accounts_dir, "k", "sk-never-log-this-1234")
    await daemon.wait_for_accounts(2)
    upstream.script(b"/backend-api/codex/responses", sse(["one", "two"]))
    response = await daemon.request(
        "POST", "/v1/responses?secret=1", data=b"{}",
        headers={"Authorization": ["Bearer client-secret-token"]},
    )
    body = await read_all(response)
    await until(lambda: any(e.get("log_category") == "request" for e in daemon.log))
    (line,) = [e for e in daemon.log if e.get("log_category") == "request"]
    assert line["method"] == "POST" and line["path"] == "/v1/responses"
    assert line["status"] == 200 and line["account"] == EMAIL
    assert line["bytes_out"] == len(body) and line["bytes_in"] == 2
    assert line["duration_ms"] >= 0
    access = json.loads((daemon.accounts_dir / "accounts" / f"{EMAIL}.json").read_text())[
        "auth"
    ]["tokens"]["access_token"]
    everything = repr(daemon.log)
    for secret in (access, "sk-never-log-this-1234", "client-secret-token"):
        assert secret not in everything
