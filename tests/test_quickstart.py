"""
The README's quick start, run as written, in order, against a fake backend:
add an account (``cx add-key``, ``cx add`` with a fake ``codex login``),
start the daemon (``subrouter serve``), then ``subrouter codex`` with a fake
``codex`` that sends one request where the wrapper points it.

Three things differ from a user's machine, each because a test must not touch
this one: every path is under a temporary HOME, the daemon listens on a free
port instead of 31415 (``--addr``, and ``SUBROUTER_CODEX_BASE_URL`` for the
wrapper), and its upstreams are the fake backend (``--*-upstream``,
``--ca-bundle``).
"""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue

from tests.support.cli import home_env, script
from tests.support.daemon import reactor
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, access_token_for, id_token_for

README = Path(__file__).resolve().parents[1] / "README.md"

FAKE_CODEX = '''#!{python}
import json, os, re, sys, urllib.request
args = sys.argv[1:]
if args[:1] == ["login"]:
    auth = {auth}
    with open(os.path.join(os.environ["CODEX_HOME"], "auth.json"), "w") as f:
        json.dump(auth, f)
    sys.exit(0)
base = next(json.loads(a.split("=", 1)[1]) for a in args if a.startswith("openai_base_url="))
request = urllib.request.Request(base + "/responses", data=b'{{"model": "m", "input": "hi"}}',
                                 headers={{"Content-Type": "application/json"}})
with urllib.request.urlopen(request, timeout=30) as answer:
    print("codex got", answer.status, answer.read().decode())
'''


def quick_start_commands() -> list[str]:
    """
    The commands of the README's quick start, in order.
    """
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [line.strip()[2:] for line in section.splitlines()
            if line.strip().startswith("$ ")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Daemon(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


@pytest_twisted.ensureDeferred
async def test_the_readme_quick_start_works_as_written(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    commands = quick_start_commands()
    assert [c for c in commands if c.startswith(("cx", "subrouter"))] == [
        "cx add", "cx add-key", "subrouter serve", "subrouter codex"]
    assert any(c.startswith("pipx install") for c in commands)
    assert "3.11" in README.read_text().split("## Quick start", 1)[1].split("\n## ")[0]

    auth = {"auth_mode": "chatgpt", "tokens": {
        "id_token": id_token_for("me@example.com"),
        "access_token": access_token_for("me@example.com", exp=2_000_000_000),
        "refresh_token": "rt-me", "account_id": "acct-me"}}
    codex = tmp_path / "codex"
    codex.write_text(FAKE_CODEX.format(python=sys.executable, auth=repr(auth)))
    codex.chmod(0o755)
    port = free_port()
    env = home_env(tmp_path, SUBROUTER_CODEX_BIN=str(codex),
                   SUBROUTER_CODEX_BASE_URL=f"http://127.0.0.1:{port}/v1",
                   SUBROUTER_URL=f"http://127.0.0.1:{port}")

    async def run(command: str, stdin: bytes = b"") -> str:
        program, *args = command.split()
        out, err, code = await getProcessOutputAndValue(
            script(program), args, env=env, reactor=reactor, stdinBytes=stdin)
        assert code == 0, (command, out, err)
        return bytes(out + err).decode()

    # 2. an account: a ChatGPT login through `codex login`, and an API key
    assert "Added account: me@example.com" in await run("cx add")
    assert "Added API key account: work" in await run("cx add-key", b"work\nsk-work-123\n")

    # 3. the daemon, in its own "terminal"
    daemon = _Daemon()
    serve = script("subrouter")
    process = reactor.spawnProcess(daemon, serve, [
        serve, "serve", "--addr", f"127.0.0.1:{port}",
        "--codex-upstream", upstream.codex_url, "--openai-upstream", upstream.openai_url,
        "--usage-url", upstream.base_url + "/backend-api/wham/usage",
        "--token-url", upstream.token_url, "--ca-bundle", ca.ca_pem_path,
        "--cx-switch-interval", "0"], env=env)
    try:
        for _ in range(300):
            if b"listening on" in daemon.output:
                break
            await deferLater(reactor, 0.1, lambda: None)
        assert b"listening on" in daemon.output, daemon.output
        # then Codex through it
        text = await run("subrouter codex")
        assert "codex got 200" in text
        assert any(r.path.endswith(b"/responses") for r in upstream.requests)
        # and the account views agree with the daemon
        rows = json.loads(await run("cx status --json"))
        assert {r["id"] for r in rows} == {"me@example.com", "apikey:work"}
        assert sum(r["next"] for r in rows) == 1
    finally:
        process.signalProcess("TERM")
        await daemon.ended
    assert b"Traceback" not in daemon.output
    line = next(x for x in daemon.output.decode().splitlines() if "/responses" in x)
    assert re.search(r"status=200|200", line), line


@pytest_twisted.ensureDeferred
async def test_subrouter_codex_says_what_to_do_when_the_daemon_is_down(tmp_path: Path) -> None:
    codex = tmp_path / "codex"
    codex.write_text("#!/bin/sh\necho codex ran\n")
    codex.chmod(0o755)
    port = free_port()
    env = home_env(tmp_path, SUBROUTER_CODEX_BIN=str(codex),
                   SUBROUTER_CODEX_BASE_URL=f"http://127.0.0.1:{port}/v1")
    out, err, code = await getProcessOutputAndValue(
        script("subrouter"), ["codex", "exec", "hi"], env=env, reactor=reactor)
    assert code == 69 and out == b""
    text = err.decode()
    assert f"Subrouter is not running on 127.0.0.1:{port}" in text
    assert "subrouter serve" in text and "subrouter install-daemon" in text
    assert "SUBROUTER_CODEX_SKIP_CHECK" in text
    out, err, code = await getProcessOutputAndValue(
        script("subrouter"), ["codex", "exec", "hi"],
        env=dict(env, SUBROUTER_CODEX_SKIP_CHECK="1"), reactor=reactor)
    assert code == 0 and out == b"codex ran\n"
