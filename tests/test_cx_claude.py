"""
``cx claude``: profiles as CLAUDE_CONFIG_DIR folders, with a fake ``claude``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from tests.support.cx import cx
from tests.support.daemon import reactor
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream

FAKE_CLAUDE = """#!/bin/sh
if [ "$1" = auth ] && [ "$2" = status ]; then
  if [ -f "$CLAUDE_CONFIG_DIR/.credentials.json" ]; then
    echo '{{"loggedIn": true, "email": "{email}", "subscriptionType": "max"}}'
  else
    echo '{{"loggedIn": false}}'
  fi
  exit 0
fi
if [ $# -eq 0 ]; then
  {login}
  exit 0
fi
printf '%s\\n' "$CLAUDE_CONFIG_DIR" "$@" > "{log}"
exit 5
"""


def fake_claude(tmp_path: Path, email: str = "me@example.com", log_in: bool = True) -> Path:
    login = ('printf \'{"claudeAiOauth": {"subscriptionType": "max"}}\' '
             '> "$CLAUDE_CONFIG_DIR/.credentials.json"') if log_in else "true"
    script = tmp_path / f"claude-{email}-{log_in}"
    script.write_text(FAKE_CLAUDE.format(email=email, login=login, log=tmp_path / "run.log"))
    script.chmod(0o755)
    return script


def test_profiles_add_list_switch_env_remove(tmp_path: Path) -> None:
    env = {"SUBROUTER_CLAUDE_BIN": str(fake_claude(tmp_path)), "PATH": os.environ["PATH"]}
    code, out, err = cx(tmp_path, "claude", "add", env=env)
    assert code == 0, err
    assert out == 'Added Claude profile "me@example.com". (me@example.com) [max]\n'
    env2 = {"SUBROUTER_CLAUDE_BIN": str(fake_claude(tmp_path, "w@example.com")),
            "PATH": os.environ["PATH"]}
    assert cx(tmp_path, "claude", "add", "personal", env=env2)[0] == 0
    registry = json.loads((tmp_path / "store" / "claude.json").read_text())
    assert registry["active"] == "me@example.com"  # the first profile
    folder = tmp_path / "store" / "claude" / "personal"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert (folder / "session-env").is_dir() and (folder / ".anthropic").is_dir()
    code, out, _ = cx(tmp_path, "claude", "list")
    assert "  me@example.com * [max] (added " in out and "  personal [max] (added " in out
    code, out, _ = cx(tmp_path, "claude", "use", "pers")
    assert out.splitlines()[:2] == ["Active Claude profile: personal",
                                    f"export CLAUDE_CONFIG_DIR={folder}"]
    assert cx(tmp_path, "claude", "env")[1] == f"export CLAUDE_CONFIG_DIR={folder}\n"
    code, out, _ = cx(tmp_path, "claude", "rm", "personal")
    assert out == "Removed Claude profile: personal\n" and not folder.exists()
    assert json.loads((tmp_path / "store" / "claude.json").read_text())["active"] == (
        "me@example.com")


def test_a_failed_sign_in_leaves_nothing_behind(tmp_path: Path) -> None:
    env = {"SUBROUTER_CLAUDE_BIN": str(fake_claude(tmp_path, log_in=False)),
           "PATH": os.environ["PATH"]}
    code, _, err = cx(tmp_path, "claude", "add", "work", env=env)
    assert code == 1 and "did not sign in" in err
    assert not (tmp_path / "store" / "claude" / "work").exists()
    assert cx(tmp_path, "claude", "add", "list", env=env)[0] == 1  # a reserved name


def test_run_execs_claude_in_the_profile(tmp_path: Path) -> None:
    env = {"SUBROUTER_CLAUDE_BIN": str(fake_claude(tmp_path)), "PATH": os.environ["PATH"]}
    cx(tmp_path, "claude", "add", "work", env=env)
    cx_script = os.path.join(os.path.dirname(sys.executable), "cx")
    result = subprocess.run(
        [cx_script, "--accounts-dir", str(tmp_path / "store"), "claude", "run", "work", "-p",
         "hello"],
        env=dict(os.environ, **env), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 5  # claude's own exit status
    assert (tmp_path / "run.log").read_text().splitlines() == [
        str(tmp_path / "store" / "claude" / "work"), "-p", "hello"]


@pytest_twisted.ensureDeferred
async def test_list_shows_each_profiles_anthropic_usage(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    async def usage(exchange: Any) -> None:
        assert exchange.seen.header(b"anthropic-beta") == b"oauth-2025-04-20"
        assert exchange.seen.header(b"authorization") == b"Bearer claude-token-1"
        exchange.respond_json(200, {
            "five_hour": {"utilization": 25.0, "resets_at": None},
            "seven_day": {"utilization": 60.0, "resets_at": None},
            "seven_day_opus": {"utilization": None},
            "extra_usage": {"is_enabled": False}})

    upstream.script(b"/api/oauth/usage", usage)
    folder = tmp_path / "store" / "claude" / "work"
    folder.mkdir(parents=True)
    (folder / ".credentials.json").write_text(json.dumps(
        {"claudeAiOauth": {"accessToken": "claude-token-1", "subscriptionType": "max"}}))
    (tmp_path / "store" / "claude.json").write_text(json.dumps(
        {"active": "work", "profiles": {"work": {"name": "work", "dir": "work",
                                                  "createdAt": "2026-05-01T00:00:00Z"}}}))
    cx_script = os.path.join(os.path.dirname(sys.executable), "cx")
    out, err, code = await getProcessOutputAndValue(
        cx_script, ["--accounts-dir", str(tmp_path / "store"), "claude", "list", "--usage-url",
                    upstream.base_url + "/api/oauth/usage"],
        env=dict(os.environ, SUBROUTER_CA_BUNDLE=ca.ca_pem_path), reactor=reactor)
    text = bytes(out).decode()
    assert code == 0, err
    assert "  work * [max] (added 2026-05-01)" in text
    assert "    5h limit        [#####---------------]  75.0% left" in text
    assert "    7d limit        [############--------]  40.0% left" in text
    assert "Opus" not in text and "claude-token-1" not in text
