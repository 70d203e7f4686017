"""
Sticky conversations and headroom-aware placement over real sockets: three
logins whose usage the fake backend reports, many interleaved conversations,
usage limits, forced accounts, live signals and restarts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import pytest_twisted

from tests.support.daemon import make_config, sleep, start_daemon
from tests.support.sessions import (
    RESPONSES,
    USAGE_PATH,
    Backend,
    start,
    turn,
    workspace_of,
    write_accounts,
)
from tests.support.tlsca import TestCA
from tests.support.upstream import (
    Exchange,
    FakeUpstream,
    sse,
    write_apikey_account,
)


@pytest_twisted.ensureDeferred
async def test_conversations_spread_over_the_healthiest_accounts_and_stay_put(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    Backend(upstream)
    daemon = await start(tmp_path, upstream, ca)
    try:
        placed: dict[str, str] = {}
        sessions = [f"conv-{i}" for i in range(8)]
        for rounds in range(3):  # interleaved: every conversation takes three turns
            for session in sessions:
                code, body = await turn(daemon, session)
                assert code == 200
                workspace = workspace_of(body)
                if rounds == 0:
                    placed[session] = workspace
                assert workspace == placed[session], "a conversation moved without cause"
        # the busy login (30% 5-hour headroom) got nothing; the two healthy
        # ones share the conversations by live count
        counts = {ws: list(placed.values()).count(ws) for ws in ("ws-busy", "ws-fresh",
                                                               "ws-spare")}
        assert counts == {"ws-busy": 0, "ws-fresh": 4, "ws-spare": 4}
        listing = await daemon.get_json("/_subrouter/sessions")
        assert {row["session"] for row in listing} == set(sessions)
        assert all(row["requests"] == 3 and not row["fallback"] for row in listing)
        accounts = await daemon.accounts_by_id()
        assert accounts["busy@example.com"]["usable_for_new_sessions"] is False
        assert accounts["busy@example.com"]["headroom"] == 0.3
        assert accounts["fresh@example.com"]["live_sessions"] == 4
        assert accounts["fresh@example.com"]["windows"][0]["used_percent"] == 5.0
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_usage_limit_moves_only_the_affected_sessions_invisibly(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    backend = Backend(upstream)
    daemon = await start(tmp_path, upstream, ca)
    try:
        placed = {}
        for i in range(4):
            code, body = await turn(daemon, f"c{i}")
            placed[f"c{i}"] = workspace_of(body)
        backend.exhausted.add("ws-fresh")
        for session, workspace in placed.items():
            code, body = await turn(daemon, session)
            assert code == 200, body  # the client never sees the 429
            now = workspace_of(body)
            if workspace == "ws-fresh":
                assert now == "ws-spare"
            else:
                assert now == workspace  # untouched
        accounts = await daemon.accounts_by_id()
        assert accounts["fresh@example.com"]["exhausted_until"] is not None
        # the moved sessions stay on their new account
        for session in placed:
            code, body = await turn(daemon, session)
            assert workspace_of(body) == "ws-spare"
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_stream_opening_with_a_usage_limit_error_is_replayed_elsewhere(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    backend = Backend(upstream)
    daemon = await start(tmp_path, upstream, ca)
    try:
        code, body = await turn(daemon, "s")
        first = workspace_of(body)
        # its answers now say it is nearly spent (a live signal), so its next
        # stream is looked at before anything is relayed
        backend.usage[first] = (95.0, 10.0)
        code, body = await turn(daemon, "s")
        assert workspace_of(body) == first
        backend.stream_error.add(first)
        code, body = await turn(daemon, "s")
        assert code == 200
        assert b"usage_limit_reached" not in body
        assert workspace_of(body) != first
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_forced_accounts_repin_and_unknown_ones_are_refused(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    Backend(upstream)
    daemon = await start(tmp_path, upstream, ca)
    try:
        code, body = await turn(daemon, "f", x_subrouter_account_id="BUSY@example.com")
        assert workspace_of(body) == "ws-busy"  # forced, whatever its headroom
        code, body = await turn(daemon, "f")
        assert workspace_of(body) == "ws-busy"  # and the session is pinned there
        code, body = await turn(daemon, "f", x_subrouter_account_id="nobody")
        assert code == 503
        assert json.loads(body)["error"]["message"] == 'requested account "nobody" not found'
        code, body = await turn(daemon, "f", x_subrouter_account_id=" ")
        assert code == 400
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_live_rate_limit_headers_and_events_update_scores(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    backend = Backend(upstream)
    daemon = await start(tmp_path, upstream, ca)
    try:
        code, body = await turn(daemon, "a")
        assert workspace_of(body) == "ws-fresh"

        async def heavy(exchange: Exchange) -> None:
            event = {"type": "codex.rate_limits", "rate_limits": {
                "primary": {"used_percent": 95.0, "window_minutes": 300,
                            "reset_at": int(time.time()) + 600}}}
            await sse(
                [json.dumps(event), json.dumps({"type": "response.completed",
                                                "workspace": "ws-fresh"})],
                headers={b"x-codex-secondary-used-percent": b"20",
                         b"x-codex-secondary-window-minutes": b"10080"},
            )(exchange)

        upstream.script(RESPONSES, heavy)
        code, body = await turn(daemon, "a")
        assert code == 200
        upstream.script(RESPONSES, backend.answer_turn)
        accounts = await daemon.accounts_by_id()
        fresh = accounts["fresh@example.com"]
        assert fresh["usage_source"] == "stream"
        assert fresh["headroom"] == pytest.approx(0.05)
        # a new conversation now avoids it
        _, body = await turn(daemon, "b")
        assert workspace_of(body) == "ws-spare"
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_sessions_and_marks_survive_a_restart_and_a_corrupt_state_file_is_moved_aside(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    backend = Backend(upstream)
    daemon = await start(tmp_path, upstream, ca)
    try:
        await turn(daemon, "keep", x_subrouter_user_email="Dev <Dev@Example.com>")
        await turn(daemon, "keep2")
        backend.exhausted.add("ws-spare")
        await turn(daemon, "keep2")  # moves to ws-fresh, ws-spare marked
        before = {row["session"]: row for row in await daemon.get_json("/_subrouter/sessions")}
        state = tmp_path / "state" / "state.json"
        deadline = time.monotonic() + 5
        while not state.exists():
            assert time.monotonic() < deadline
            await sleep(0.05)
    finally:
        await daemon.stop()
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    backend.exhausted.clear()
    # without polling, nothing can clear the restored mark
    again = await start(tmp_path, upstream, ca, fetch_usage=False)
    try:
        after = {row["session"]: row for row in await again.get_json("/_subrouter/sessions")}
        assert {k: v["account"] for k, v in after.items()} == {
            k: v["account"] for k, v in before.items()
        }
        assert after["keep"]["user_email"] == "dev@example.com"
        accounts = await again.accounts_by_id()
        assert accounts["spare@example.com"]["exhausted_until"] is not None
    finally:
        await again.stop()
    state.write_text("{ not json")
    third = await start(tmp_path, upstream, ca)
    try:
        assert await third.get_json("/_subrouter/sessions") == []
        assert list(state.parent.glob("state.json.corrupt-*"))
    finally:
        await third.stop()


@pytest_twisted.ensureDeferred
async def test_conversations_unseen_past_the_retention_are_forgotten_and_leave_the_state_file(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    now = time.time()

    def row(key: str, days_ago: float) -> dict[str, object]:
        seen = now - days_ago * 86400
        return {"agent": "codex", "key": key, "account_id": "fresh@example.com",
                "fallback": False, "first_seen": seen, "last_seen": seen, "requests": 3}

    state = tmp_path / "state" / "state.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"format": 1, "saved_at": now, "exhausted": {},
                                 "sessions": [row("old", 40), row("recent", 2)]}))
    daemon = await start(tmp_path, upstream, ca, fetch_usage=False, session_retention=30 * 86400)
    try:
        listed = [r["session"] for r in await daemon.get_json("/_subrouter/sessions")]
        assert listed == ["recent"]
        assert any("forgot the accounts of 1 conversations" in str(e.get("log_format", ""))
                   .replace("{count}", str(e.get("count"))) for e in daemon.log)
        deadline = time.monotonic() + 5
        while "old" in state.read_text():
            assert time.monotonic() < deadline, "the state file kept the forgotten one"
            await sleep(0.05)
        assert [r["key"] for r in json.loads(state.read_text())["sessions"]] == ["recent"]
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_usage_fetch_scores_the_account_unknown_risky(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    backend = Backend(upstream)

    async def flaky(exchange: Exchange) -> None:
        workspace = (exchange.seen.header(b"chatgpt-account-id") or b"").decode()
        if workspace == "ws-fresh":
            exchange.respond_json(500, {"error": "down"})
            return
        await backend.answer_usage(exchange)

    upstream.script(USAGE_PATH, flaky)
    write_accounts(tmp_path / "accounts-store")
    daemon = await start_daemon(make_config(tmp_path, upstream, ca, fetch_usage=True,
                                            usage_score_ttl=30.0))
    try:
        deadline = time.monotonic() + 5
        while True:
            accounts = await daemon.accounts_by_id()
            if accounts["fresh@example.com"]["usage_error"]:
                break
            assert time.monotonic() < deadline
            await sleep(0.02)
        assert accounts["fresh@example.com"]["headroom"] == 0.4
        _, body = await turn(daemon, "x")
        assert workspace_of(body) == "ws-spare"  # known-healthy beats unknown-risky
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_api_keys_take_over_only_when_no_login_is_usable(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    backend = Backend(upstream)
    write_apikey_account(tmp_path / "accounts-store", "backup", "sk-backup-key-12345")
    daemon = await start(tmp_path, upstream, ca)
    try:
        code, body = await turn(daemon, "k1")
        assert workspace_of(body) in ("ws-fresh", "ws-spare")
        backend.exhausted.update({"ws-fresh", "ws-spare", "ws-busy"})
        upstream.script(b"/v1/responses", sse([json.dumps({"workspace": "apikey"})]))
        code, body = await turn(daemon, "k1")
        assert code == 200 and workspace_of(body) == "apikey"
        assert upstream.requests[-1].header(b"authorization") == b"Bearer sk-backup-key-12345"
    finally:
        await daemon.stop()
