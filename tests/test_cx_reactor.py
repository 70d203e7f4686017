"""
A ``cx`` process runs on one reactor: the interactive view fetches usage and
may then refresh the chosen login's token before switching. Both used to
run a reactor of their own, and the second could not start
(``ReactorNotRestartable``), reported as "token refresh failed".
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from tests.support.cli import home_env, script
from tests.support.daemon import reactor
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, write_oauth_account


@pytest_twisted.ensureDeferred
async def test_the_view_then_the_switch_refresh_on_one_reactor(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    # the token expires within the minute: the usage fetch tries to refresh
    # it (the token endpoint fails once), then the switch refreshes it again
    path = write_oauth_account(tmp_path / "store", "a@example.com", exp=time.time() + 20,
                               refresh_token="rt-expiring")
    upstream.refresh_emails["rt-expiring"] = "a@example.com"
    answers = [(500, {"error": "try again"})]

    def token_answer(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return answers.pop(0) if answers else upstream.issue_tokens(body)

    upstream.token_answer = token_answer
    env = home_env(tmp_path, SUBROUTER_CA_BUNDLE=ca.ca_pem_path, NO_COLOR="1",
                   SUBROUTER_USAGE_URL=upstream.base_url + "/backend-api/wham/usage",
                   SUBROUTER_TOKEN_URL=upstream.token_url)

    from twisted.internet import protocol
    from twisted.internet.defer import Deferred

    class Answer(protocol.ProcessProtocol):
        def __init__(self) -> None:
            self.out = b""
            self.err = b""
            self.done: Deferred[int] = Deferred()

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(b"1\n")
            self.transport.closeStdin()

        def outReceived(self, data: bytes) -> None:
            self.out += data

        def errReceived(self, data: bytes) -> None:
            self.err += data

        def processEnded(self, reason: Any) -> None:
            self.done.callback(reason.value.exitCode)

    answer = Answer()
    cx = script("cx")
    reactor.spawnProcess(answer, cx, [cx, "--accounts-dir", str(tmp_path / "store"),
                                      "--state-dir", str(tmp_path / "state")], env=env)
    code = await answer.done
    err = answer.err.decode()
    assert code == 0, err
    assert "ReactorNotRestartable" not in err and "refresh failed" not in err, err
    assert "Switched to a@example.com" in answer.out.decode()
    assert len(upstream.token_requests) == 2  # the failed one, then the switch's
    stored = json.loads(path.read_text())["auth"]["tokens"]
    assert stored["refresh_token"] != "rt-expiring"
    active = json.loads((tmp_path / ".codex" / "auth.json").read_text())
    assert active["tokens"]["refresh_token"] == stored["refresh_token"]


@pytest_twisted.ensureDeferred
async def test_a_token_that_expires_while_the_prompt_waits_is_refreshed_on_the_same_reactor(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    """
    The issue's case: the view fetched usage (the token still had more than a
    minute), the user took a few seconds to answer, and the switch had to
    refresh: on the old code, a second ``reactor.run()``.
    """
    from twisted.internet import protocol
    from twisted.internet.defer import Deferred
    from twisted.internet.task import deferLater

    async def usage(exchange: Any) -> None:
        exchange.respond_json(200, {"rate_limit": {"primary_window": {
            "used_percent": 10, "limit_window_seconds": 18000, "reset_after_seconds": 600}}})

    upstream.script(b"/backend-api/wham/usage", usage)
    expires = time.time() + 75  # the view fetches well before its last minute
    path = write_oauth_account(tmp_path / "store", "a@example.com", exp=expires,
                               refresh_token="rt-soon")
    upstream.refresh_emails["rt-soon"] = "a@example.com"
    env = home_env(tmp_path, SUBROUTER_CA_BUNDLE=ca.ca_pem_path, NO_COLOR="1",
                   SUBROUTER_USAGE_URL=upstream.base_url + "/backend-api/wham/usage",
                   SUBROUTER_TOKEN_URL=upstream.token_url)

    class Answer(protocol.ProcessProtocol):
        def __init__(self) -> None:
            self.out = b""
            self.err = b""
            self.done: Deferred[int] = Deferred()
            self.asked: Deferred[None] = Deferred()

        def outReceived(self, data: bytes) -> None:
            self.out += data
            if b"Switch to" in self.out and not self.asked.called:
                self.asked.callback(None)

        def errReceived(self, data: bytes) -> None:
            self.err += data

        def processEnded(self, reason: Any) -> None:
            self.done.callback(reason.value.exitCode)

    answer = Answer()
    cx = script("cx")
    process = reactor.spawnProcess(answer, cx, [cx, "--accounts-dir", str(tmp_path / "store"),
                                                "--state-dir", str(tmp_path / "state")],
                                   env=env)
    await answer.asked
    assert upstream.token_requests == []  # the view needed no refresh
    # the user thinks until the token is within its last minute
    await deferLater(reactor, max(0.0, expires - 59 - time.time()), lambda: None)
    process.write(b"1\n")
    process.closeStdin()
    code = await answer.done
    err = answer.err.decode()
    assert code == 0, err
    assert "ReactorNotRestartable" not in err and "refresh failed" not in err, err
    assert len(upstream.token_requests) == 1
    stored = json.loads(path.read_text())["auth"]["tokens"]
    active = json.loads((tmp_path / ".codex" / "auth.json").read_text())
    assert stored["refresh_token"] != "rt-soon"
    assert active["tokens"]["refresh_token"] == stored["refresh_token"]


@pytest_twisted.ensureDeferred
async def test_a_hanging_usage_endpoint_says_timed_out(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    from twisted.internet.defer import Deferred

    async def hang(exchange: Any) -> None:
        await Deferred()  # never answers

    upstream.script(b"/backend-api/wham/usage", hang)
    write_oauth_account(tmp_path / "store", "a@example.com", exp=time.time() + 86400)
    env = home_env(tmp_path, SUBROUTER_CA_BUNDLE=ca.ca_pem_path)
    cx = script("cx")
    out, err, code = await getProcessOutputAndValue(
        cx, ["--accounts-dir", str(tmp_path / "store"), "status", "--usage-url",
             upstream.base_url + "/backend-api/wham/usage"], env=env, reactor=reactor)
    text = out.decode() + err.decode()
    assert code == 1  # every fetch failed
    assert "timed out" in text and "cancelled" not in text
    assert "--ca-bundle" in err.decode() and "Traceback" not in text
