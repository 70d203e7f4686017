"""
Several Subrouter instances sharing one Redis (a real ``redis-server``), in
front of the fake backends: conversations, placement, exhaustion marks and
token refreshes behave as if one daemon served them all, and keep working
while Redis is down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.fernet import Fernet
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.http_headers import Headers

from subrouter.state.settings import parse_state
from tests.live import Daemon, make_config, read_all, sleep, start_daemon
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
