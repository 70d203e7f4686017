"""
``subrouter claude``: Claude Code pointed at Subrouter, after a quick check
that the daemon is there with an Anthropic credential; every argument is
Claude's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from subrouter.cli.claude_code import NO_ACCOUNT, WrapperError, claude_environ, serves_claude
from subrouter.cli.health import NotReady, check_daemon


def test_only_the_base_url_is_set_by_default() -> None:
    env = claude_environ({"PATH": "/bin", "HOME": "/h"})
    assert env == {"PATH": "/bin", "HOME": "/h", "ANTHROPIC_BASE_URL": "http://127.0.0.1:31415"}
    env = claude_environ({"SUBROUTER_CLAUDE_BASE_URL": "http://127.0.0.1:5/"})
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:5"


def test_user_and_account_travel_in_custom_headers_after_the_users_own() -> None:
    env = claude_environ({"SUBROUTER_CLAUDE_USER_EMAIL": "Alice <A@X.com>",
                          "SUBROUTER_CLAUDE_ACCOUNT_ID": "claude:work",
                          "ANTHROPIC_CUSTOM_HEADERS": "X-Team: blue"})
    assert env["ANTHROPIC_CUSTOM_HEADERS"] == (
        "X-Team: blue\nX-Subrouter-User-Email: a@x.com\nX-Subrouter-Account-ID: claude:work")
    with pytest.raises(WrapperError, match="not an email"):
        claude_environ({"SUBROUTER_CLAUDE_USER_EMAIL": "nobody"})
    with pytest.raises(WrapperError):
        claude_environ({"SUBROUTER_CLAUDE_ACCOUNT_ID": "a\nX-Evil: 1"})


def answers(table: dict[str, tuple[int, Any] | Exception]) -> Any:
    def get_json(url: str, timeout: float) -> tuple[int, Any]:
        assert timeout <= 0.3
        found = table[url]
        if isinstance(found, Exception):
            raise found
        return found
    return get_json


ROOT = "http://127.0.0.1:31415"
SKIP = "SUBROUTER_CLAUDE_SKIP_CHECK"


def test_a_daemon_that_is_down_is_named_with_what_to_do() -> None:
    get = answers({ROOT + "/_subrouter/health": ConnectionRefusedError(111, "refused")})
    with pytest.raises(NotReady, match=r"not running on 127\.0\.0\.1:31415.*serve"):
        check_daemon(ROOT, {}, usable=serves_claude, no_account=NO_ACCOUNT, get_json=get,
                 skip_env=SKIP)
    check_daemon(ROOT, {SKIP: "1"}, usable=serves_claude, no_account=NO_ACCOUNT,
                 get_json=get, skip_env=SKIP)


def test_a_daemon_without_an_anthropic_credential_says_how_to_add_one() -> None:
    rows = [{"provider": "openai", "usable": True},
            {"provider": "anthropic", "usable": False}]
    get = answers({ROOT + "/_subrouter/health": (200, {"ok": True}),
                   ROOT + "/_subrouter/accounts": (200, {"accounts": rows})})
    with pytest.raises(NotReady, match="cx claude add"):
        check_daemon(ROOT + "/", {}, usable=serves_claude, no_account=NO_ACCOUNT, get_json=get,
                 skip_env=SKIP)
    rows.append({"provider": "anthropic", "usable": True})
    check_daemon(ROOT, {}, usable=serves_claude, no_account=NO_ACCOUNT, get_json=get,
                 skip_env=SKIP)
    # an accounts listing it may not read is not its business
    get = answers({ROOT + "/_subrouter/health": (200, {"ok": True}),
                   ROOT + "/_subrouter/accounts": (401, None)})
    check_daemon(ROOT, {}, usable=serves_claude, no_account=NO_ACCOUNT, get_json=get,
                 skip_env=SKIP)


def fake_claude(tmp_path: Path) -> Path:
    script = tmp_path / "claude"
    script.write_text(
        "#!/bin/sh\n"
        "printf '%s\\n' \"$@\" > \"$0.args\"\n"
        "printf '%s' \"$ANTHROPIC_BASE_URL\" > \"$0.base\"\n"
        "exit 7\n"
    )
    script.chmod(0o755)
    return script


def run_subrouter(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from subrouter.main import main; main()", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )


def test_every_argument_after_claude_is_claudes_and_its_status_is_ours(tmp_path: Path) -> None:
    script = fake_claude(tmp_path)
    env = dict(os.environ, SUBROUTER_CLAUDE_BIN=str(script), SUBROUTER_CLAUDE_SKIP_CHECK="1",
               SUBROUTER_CLAUDE_BASE_URL="http://127.0.0.1:4444")
    done = run_subrouter(["claude", "-p", "hi there", "--help", "list"], env)
    assert done.returncode == 7, done.stderr
    assert (tmp_path / "claude.args").read_text().splitlines() == [
        "-p", "hi there", "--help", "list"]
    assert (tmp_path / "claude.base").read_text() == "http://127.0.0.1:4444"


def test_a_missing_daemon_stops_before_claude_runs(tmp_path: Path) -> None:
    script = fake_claude(tmp_path)
    env = dict(os.environ, SUBROUTER_CLAUDE_BIN=str(script),
               SUBROUTER_CLAUDE_BASE_URL="http://127.0.0.1:9")
    env.pop("SUBROUTER_CLAUDE_SKIP_CHECK", None)
    done = run_subrouter(["claude", "-p", "hi"], env)
    assert done.returncode == 69  # EX_UNAVAILABLE, as subrouter codex
    assert "Subrouter is not running on 127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "claude.args").exists()


def test_a_missing_claude_is_a_clear_error(tmp_path: Path) -> None:
    env = dict(os.environ, SUBROUTER_CLAUDE_BIN=str(tmp_path / "nope"),
               SUBROUTER_CLAUDE_SKIP_CHECK="1")
    done = run_subrouter(["claude"], env)
    assert done.returncode == 2 and "install Claude Code" in done.stderr


def test_cx_add_key_stores_an_anthropic_key_with_its_provider(tmp_path: Path) -> None:
    from io import StringIO

    from subrouter.cli.cx import CxOptions, Streams, run_cx

    def cx(*args: str) -> tuple[int, str, str]:
        options = CxOptions()
        options.parseOptions(["--accounts-dir", str(tmp_path), *args])
        out, err = StringIO(), StringIO()
        code = run_cx(options, Streams(out, err, StringIO(), {"HOME": str(tmp_path)}))
        return code, out.getvalue(), err.getvalue()

    code, out, _ = cx("add-key", "--provider", "anthropic", "--label", "team",
                      "--key", "sk-ant-api03-abc")
    assert code == 0 and "Anthropic API key account: team" in out
    document = json.loads((tmp_path / "accounts" / "apikey_team.json").read_text())
    assert document["provider"] == "anthropic"
    assert document["auth"] == {"auth_mode": "apikey", "ANTHROPIC_API_KEY": "sk-ant-api03-abc"}
    code, _, err = cx("add-key", "--provider", "anthropic", "--label", "x", "--key", "sk-proj-1")
    assert code == 1 and "starts with sk-ant-" in err
    code, _, err = cx("add-key", "--label", "team", "--key", "sk-proj-1")
    assert code == 1 and "taken by an anthropic key" in err
    code, _, err = cx("switch", "team")
    assert code == 1 and "which Codex cannot use" in err
    code, out, _ = cx("list")
    assert any(line.split()[:3] == ["team", "anthropic", "key"] for line in out.splitlines())
