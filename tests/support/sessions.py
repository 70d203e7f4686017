"""
A scripted Codex backend of three logins (usage per workspace, answers that
say which workspace served them, usage-limit errors on demand) and a daemon
started on it: shared by the placement tests over real sockets.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from twisted.web.http_headers import Headers

from tests.support.daemon import Daemon, make_config, read_all, sleep, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import (
    Exchange,
    FakeUpstream,
    sse,
    write_oauth_account,
)

FAR = time.time() + 30 * 86400
ACCOUNTS = {  # email -> (workspace, 5h used %, 7d used %)
    "busy@example.com": ("ws-busy", 70.0, 50.0),
    "fresh@example.com": ("ws-fresh", 5.0, 10.0),
    "spare@example.com": ("ws-spare", 5.0, 10.0),
}
USAGE_PATH = b"/backend-api/wham/usage"
RESPONSES = b"/backend-api/codex/responses"


def usage_answer(h5: float, d7: float) -> dict[str, Any]:
    return {
        "plan_type": "pro",
        "rate_limit": {
            "allowed": True,
            "limit_reached": False,
            "primary_window": {"used_percent": h5, "limit_window_seconds": 18000,
                               "reset_after_seconds": 3600},
            "secondary_window": {"used_percent": d7, "limit_window_seconds": 604800,
                                 "reset_after_seconds": 86400},
        },
    }


class Backend:
    """
    Scripts the fake upstream: usage per workspace, and answers that say
    which workspace served them (or a usage-limit error for exhausted ones).
    """

    def __init__(self, upstream: FakeUpstream) -> None:
        self.usage = {ws: (h5, d7) for ws, h5, d7 in ACCOUNTS.values()}
        self.exhausted: set[str] = set()
        self.stream_error: set[str] = set()
        self.served: list[tuple[str, str]] = []  # (session header, workspace)
        upstream.script(USAGE_PATH, self.answer_usage)
        upstream.script(RESPONSES, self.answer_turn)

    async def answer_usage(self, exchange: Exchange) -> None:
        workspace = (exchange.seen.header(b"chatgpt-account-id") or b"").decode()
        h5, d7 = self.usage[workspace]
        exchange.respond_json(200, usage_answer(h5, d7))

    async def answer_turn(self, exchange: Exchange) -> None:
        workspace = (exchange.seen.header(b"chatgpt-account-id") or b"").decode()
        session = (exchange.seen.header(b"session-id") or b"").decode()
        if workspace in self.exhausted:
            exchange.respond_json(
                429, {"error": {"type": "usage_limit_reached",
                                "message": "The usage limit has been reached"}},
            )
            return
        if workspace in self.stream_error:
            await sse([json.dumps({"type": "error", "error": {"type": "usage_limit_reached"}})])(
                exchange
            )
            return
        self.served.append((session, workspace))
        h5, d7 = self.usage[workspace]
        headers = {b"x-codex-primary-used-percent": str(h5).encode(),
                   b"x-codex-primary-window-minutes": b"300",
                   b"x-codex-secondary-used-percent": str(d7).encode(),
                   b"x-codex-secondary-window-minutes": b"10080"}
        await sse([json.dumps({"type": "response.completed", "workspace": workspace})],
                  headers=headers)(exchange)


def write_accounts(directory: Path) -> None:
    for email, (workspace, _, _) in ACCOUNTS.items():
        write_oauth_account(directory, email, exp=FAR, account_id=workspace)


async def start(tmp_path: Path, upstream: FakeUpstream, ca: TestCA, **kw: Any) -> Daemon:
    write_accounts(tmp_path / "accounts-store")
    settings: dict[str, Any] = {"fetch_usage": True, "usage_score_ttl": 30.0}
    settings.update(kw)
    daemon = await start_daemon(make_config(tmp_path, upstream, ca, **settings))
    deadline = time.monotonic() + 5
    while True:
        listing = await daemon.get_json("/_subrouter/accounts")
        logins = [row for row in listing["accounts"] if row["kind"] == "oauth"]
        polled = all(row["usage_source"] == "poll" for row in logins) or not settings[
            "fetch_usage"
        ]
        if len(logins) == len(ACCOUNTS) and polled:
            return daemon
        assert time.monotonic() < deadline, listing
        await sleep(0.02)


async def turn(daemon: Daemon, session: str, **headers: str) -> tuple[int, bytes]:
    h = Headers({b"session-id": [session.encode()], b"content-type": [b"application/json"]})
    for name, value in headers.items():
        h.setRawHeaders(name.replace("_", "-").encode(), [value.encode()])
    response = await daemon.request("POST", "/v1/responses", data=b'{"input":[]}', headers=h)
    return response.code, await read_all(response)


def workspace_of(body: bytes) -> str:
    for line in body.splitlines():
        if line.startswith(b"data: "):
            return str(json.loads(line[6:])["workspace"])
    raise AssertionError(body)
