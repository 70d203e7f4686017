"""
Several Subrouter instances sharing one Redis (a real ``redis-server``), in
front of the fake backends: conversations, placement, exhaustion marks and
token refreshes behave as if one daemon served them all, and keep working
while Redis is down.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.fernet import Fernet
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.http_headers import Headers

from subrouter.state.settings import parse_state
from tests.support.daemon import Daemon, make_config, read_all, sleep, start_daemon
from tests.support.redis import RedisServer
from tests.support.tlsca import TestCA
from tests.support.upstream import Exchange, FakeUpstream, sse, write_oauth_account

FAR = time.time() + 30 * 86400
RESPONSES = b"/backend-api/codex/responses"
LOGINS = {"a@example.com": "ws-a", "b@example.com": "ws-b", "c@example.com": "ws-c"}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class Backend:
    """
    Answers every turn with the workspace that served it; can say a
    workspace ran out of quota.
    """

    def __init__(self, upstream: FakeUpstream) -> None:
        self.exhausted: set[str] = set()
        self.served: list[tuple[str, str]] = []
        upstream.script(RESPONSES, self.turn)

    async def turn(self, exchange: Exchange) -> None:
        workspace = (exchange.seen.header(b"chatgpt-account-id") or b"").decode()
        session = (exchange.seen.header(b"session-id") or b"").decode()
        if workspace in self.exhausted:
            exchange.respond_json(429, {"error": {"type": "usage_limit_reached",
                                                  "message": "The usage limit has been reached"}})
            return
        self.served.append((session, workspace))
        await sse([json.dumps({"type": "response.completed", "workspace": workspace})])(exchange)


async def start_instances(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, redis: RedisServer, count: int = 3,
    *, logins: dict[str, tuple[str, float]] | None = None, **kw: Any,
) -> list[Daemon]:
    """
    ``count`` instances, each with its own copy of the logins (as on
    separate machines), sharing ``redis``.
    """
    key = Fernet.generate_key()
    url = parse_state(redis.url)
    daemons = []
    for n in range(count):
        home = tmp_path / f"instance-{n}"
        for email, (workspace, exp) in (logins or {e: (w, FAR) for e, w in LOGINS.items()}).items():
            write_oauth_account(home / "accounts-store", email, exp=exp, account_id=workspace)
        config = make_config(home, upstream, ca, state_url=url, state_key=key, **kw)
        daemons.append(await start_daemon(config))
    deadline = time.monotonic() + 10
    for daemon in daemons:
        while not (await daemon.get_json("/_subrouter/health"))["state"]["reachable"]:
            assert time.monotonic() < deadline, "an instance never reached Redis"
            await sleep(0.05)
    return daemons


async def stop_all(daemons: list[Daemon]) -> None:
    for daemon in daemons:
        await daemon.stop()


async def turn(daemon: Daemon, session: str) -> tuple[int, bytes]:
    headers = Headers({b"session-id": [session.encode()],
                       b"content-type": [b"application/json"]})
    response = await daemon.request("POST", "/v1/responses", data=b'{"input":[]}',
                                    headers=headers)
    return response.code, await read_all(response)


def workspace_of(body: bytes) -> str:
    for line in body.splitlines():
        if line.startswith(b"data: "):
            return str(json.loads(line[6:])["workspace"])
    raise AssertionError(body)


@pytest_twisted.ensureDeferred
async def test_twenty_concurrent_requests_on_an_expired_login_refresh_it_once(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, redis: RedisServer
) -> None:
    Backend(upstream)
    upstream.valid_tokens = set()  # only tokens the endpoint issued are accepted
    upstream.refresh_emails["rt-0"] = "a@example.com"
    upstream.account_ids["a@example.com"] = "ws-a"
    gate: Deferred[None] = Deferred()
    upstream.token_gate = gate
    daemons = await start_instances(
        tmp_path, upstream, ca, redis, logins={"a@example.com": ("ws-a", time.time() - 60)}
    )
    try:
        sent = [Deferred.fromCoroutine(turn(daemons[i % 3], f"conv-{i}")) for i in range(20)]
        await sleep(0.3)
        gate.callback(None)
        answers = await gatherResults(sent)
        assert [code for code, _ in answers] == [200] * 20
        used = [json.loads(r.body or b"{}").get("refresh_token") for r in upstream.token_requests]
        assert used == ["rt-0"], used  # one refresh, and no refresh token used twice
        # every instance's own file now holds the new tokens
        deadline = time.monotonic() + 5
        for daemon in daemons:
            path = daemon.accounts_dir / "accounts" / "a@example.com.json"
            while json.loads(path.read_text())["auth"]["tokens"]["refresh_token"] != "rt-1":
                assert time.monotonic() < deadline, path.read_text()
                await sleep(0.05)
    finally:
        if not gate.called:
            gate.callback(None)
        await stop_all(daemons)


@pytest_twisted.ensureDeferred
async def test_a_conversation_alternating_between_instances_stays_on_one_account(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, redis: RedisServer
) -> None:
    backend = Backend(upstream)
    daemons = await start_instances(tmp_path, upstream, ca, redis)
    try:
        # other conversations first, so "first in the ranking" is not the answer
        for n in range(4):
            await turn(daemons[n % 3], f"other-{n}")
        seen = set()
        for n in range(9):
            code, body = await turn(daemons[n % 3], "the-conversation")
            assert code == 200
            seen.add(workspace_of(body))
        assert len(seen) == 1, seen
        served = {ws for session, ws in backend.served if session == "the-conversation"}
        assert served == seen
    finally:
        await stop_all(daemons)


@pytest_twisted.ensureDeferred
async def test_thirty_new_conversations_spread_as_one_instance_would(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, redis: RedisServer
) -> None:
    Backend(upstream)
    daemons = await start_instances(tmp_path, upstream, ca, redis)
    try:
        placed: Counter[str] = Counter()
        for n in range(30):
            code, body = await turn(daemons[n % 3], f"new-{n}")
            assert code == 200
            placed[workspace_of(body)] += 1
        assert placed == {"ws-a": 10, "ws-b": 10, "ws-c": 10}
    finally:
        await stop_all(daemons)


@pytest_twisted.ensureDeferred
async def test_an_exhaustion_mark_is_seen_by_every_instance_within_a_second(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, redis: RedisServer
) -> None:
    backend = Backend(upstream)
    daemons = await start_instances(tmp_path, upstream, ca, redis)
    try:
        code, body = await turn(daemons[0], "first")
        first = workspace_of(body)
        email = next(e for e, w in LOGINS.items() if w == first)
        backend.exhausted.add(first)
        code, body = await turn(daemons[0], "first")  # 429 there: marked, moved
        assert code == 200 and workspace_of(body) != first
        marked_at = time.monotonic()
        pending = {1, 2}
        while pending:
            for n in sorted(pending):
                listing = await daemons[n].get_json("/_subrouter/accounts")
                row = next(r for r in listing["accounts"] if r["id"] == email)
                if row["exhausted_until"]:
                    pending.discard(n)
            assert time.monotonic() - marked_at < 1.0, pending
            await sleep(0.02)
        # and no instance places a new conversation there
        for n in range(6):
            code, body = await turn(daemons[n % 3], f"after-{n}")
            assert workspace_of(body) != first
    finally:
        await stop_all(daemons)


@pytest_twisted.ensureDeferred
async def test_requests_go_on_while_redis_is_down_and_state_converges_after(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, redis: RedisServer
) -> None:
    backend = Backend(upstream)
    daemons = await start_instances(tmp_path, upstream, ca, redis)
    try:
        code, body = await turn(daemons[0], "before")
        before = workspace_of(body)
        redis.stop()
        # every instance keeps serving, from its own view
        for n in range(6):
            code, body = await turn(daemons[n % 3], f"during-{n}")
            assert code == 200
        code, body = await turn(daemons[0], "before")
        assert code == 200 and workspace_of(body) == before
        during = workspace_of((await turn(daemons[1], "placed-while-down"))[1])
        for daemon in daemons:
            health = await daemon.get_json("/_subrouter/health")
            assert health["state"]["reachable"] is False
        redis.start()  # empty: persistence is off
        deadline = time.monotonic() + 15
        for daemon in daemons:
            while not (await daemon.get_json("/_subrouter/health"))["state"]["reachable"]:
                assert time.monotonic() < deadline
                await sleep(0.1)
        await sleep(0.5)
        # what the instances knew is back in Redis: conversations keep their
        # accounts wherever they go next
        for n in range(3):
            code, body = await turn(daemons[(n + 1) % 3], "before")
            assert workspace_of(body) == before
            code, body = await turn(daemons[(n + 2) % 3], "placed-while-down")
            assert workspace_of(body) == during
        assert redis.command("EXISTS", "subrouter:a:codex:before") == "1"
        # (each daemon's log sees every instance's events: one process here)
        downs = [e for e in daemons[0].log if "is unreachable (" in str(e.get("log_format", ""))]
        assert len(downs) == 3  # logged once per instance
        del backend
    finally:
        await stop_all(daemons)


@pytest_twisted.ensureDeferred
async def test_a_known_conversation_costs_one_round_trip_and_events_none(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, redis: RedisServer
) -> None:
    from subrouter.state import redis as shared

    rate_limits = json.dumps({"type": "codex.rate_limits", "rate_limits": {
        "primary": {"used_percent": 12.0, "window_minutes": 300, "resets_in_seconds": 999}}})
    upstream.script(RESPONSES, sse([rate_limits] * 300 + ['{"type":"response.completed"}']))
    daemons = await start_instances(tmp_path, upstream, ca, redis, count=2)
    link = daemons[1].service.getServiceNamed("shared-state").state.link
    calls: list[str] = []
    original = link.call

    def counting(method: str, *args: Any, **kw: Any) -> Any:
        script = args[0] if method == "eval" else None
        calls.append({shared._LOOKUP: "lookup", shared._ASSIGN: "assign",
                      shared._SYNC_USAGE: "usage-sync"}.get(script, method))
        return original(method, *args, **kw)

    link.call = counting
    try:
        code, _ = await turn(daemons[0], "known")
        assert code == 200
        calls.clear()
        started = time.monotonic()
        code, body = await turn(daemons[1], "known")
        elapsed = time.monotonic() - started
        assert code == 200 and body.count(b"codex.rate_limits") == 300
        per_request = [c for c in calls if c in ("lookup", "assign")]
        assert per_request == ["lookup"]
        # the rest is the timers' (4 book syncs and one token sync a second)
        timers = [c for c in calls if c not in ("lookup", "assign")]
        assert len(timers) <= 6 * (elapsed + 0.5), (timers, elapsed)
    finally:
        link.call = original
        await stop_all(daemons)


@pytest_twisted.ensureDeferred
async def test_every_instance_reports_the_whole_teams_token_usage(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, redis: RedisServer
) -> None:
    tokens = {"conv-0": 15, "conv-1": 25}

    async def answer(exchange: Exchange) -> None:
        session = (exchange.seen.header(b"session-id") or b"").decode()
        total = tokens[session]
        usage = {"input_tokens": total - 5, "input_tokens_details": {"cached_tokens": 4},
                 "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 1},
                 "total_tokens": total}
        await sse([json.dumps({"type": "response.completed",
                               "response": {"model": "m", "usage": usage}})])(exchange)

    upstream.script(RESPONSES, answer)
    daemons = await start_instances(tmp_path, upstream, ca, redis, count=2)
    try:
        for n, daemon in enumerate(daemons):
            code, _ = await turn(daemon, f"conv-{n}")
            assert code == 200
        deadline = time.monotonic() + 10
        for daemon in daemons:
            while True:
                report = await daemon.get_json("/_subrouter/token-usage?since=1h")
                totals = report["totals"]
                if totals["requests"] == 2:
                    break
                assert time.monotonic() < deadline, report
                await sleep(0.1)
            assert totals["total_tokens"] == 40
            assert totals["cached_input_tokens"] == 8
    finally:
        await stop_all(daemons)
