"""
The ``cx`` commands on a temporary HOME: the files they write, byte for byte
where other tools read them, and what they refuse.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from subrouter.cli.cx import CxOptions
from tests.support.cx import cx
from tests.support.daemon import reactor
from tests.support.tlsca import TestCA
from tests.support.upstream import (
    FakeUpstream,
    access_token_for,
    id_token_for,
    write_apikey_account,
    write_oauth_account,
)

FAR = time.time() + 30 * 86400


def test_add_key_writes_the_cx_format_privately(tmp_path: Path) -> None:
    code, out, _ = cx(tmp_path, "add-key", stdin="work\nsk-work-123\n")
    assert code == 0 and out.endswith("Added API key account: work\n")
    path = tmp_path / "store" / "accounts" / "apikey_work.json"
    document = json.loads(path.read_text())
    assert document["email"] == "apikey:work"
    assert document["auth"] == {"auth_mode": "apikey", "OPENAI_API_KEY": "sk-work-123"}
    assert document["addedAt"].endswith("Z")
    assert path.read_text().startswith('{\n  "email"') and path.read_text().endswith("}\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # an existing label is never replaced silently: --force off a terminal
    code, out, err = cx(tmp_path, "add-api-key", "--label", "work", "--key", "sk-new-456")
    assert code == 1 and "--force" in err and out == ""
    assert json.loads(path.read_text())["auth"]["OPENAI_API_KEY"] == "sk-work-123"
    code, out, _ = cx(tmp_path, "add-api-key", "--label", "work", "--key", "sk-new-456",
                      "--force")
    assert out == "Updated API key account: work\n"
    assert json.loads(path.read_text())["addedAt"] == document["addedAt"]
    code, _, err = cx(tmp_path, "add-key", "--label", "x", "--key", "nope")
    assert code == 1 and "sk-" in err


def test_import_reads_codex_auth_and_keeps_unknown_fields(tmp_path: Path) -> None:
    (tmp_path / "codex").mkdir()
    auth = {"auth_mode": "chatgpt", "OPENAI_API_KEY": None, "future_field": {"x": 1},
            "tokens": {"id_token": id_token_for("me@example.com"),
                       "access_token": access_token_for("me@example.com", exp=FAR),
                       "refresh_token": "rt-1", "account_id": "acct-1"},
            "last_refresh": "2026-01-01T00:00:00Z"}
    (tmp_path / "codex" / "auth.json").write_text(json.dumps(auth))
    code, out, _ = cx(tmp_path, "import")
    assert code == 0 and out == "Imported account: me@example.com\n"
    stored = json.loads((tmp_path / "store" / "accounts" / "me@example.com.json").read_text())
    assert stored["auth"] == auth
    assert cx(tmp_path, "import")[1] == "Updated existing account: me@example.com\n"
    code, out, _ = cx(tmp_path, "list")
    assert out.splitlines()[1].split()[0] == "me@example.com"
    assert out.splitlines()[1].split()[-2:] == ["active,", "next"]


def test_switch_writes_codex_opencode_and_pi_keeping_other_providers(tmp_path: Path) -> None:
    write_oauth_account(tmp_path / "store", "a@example.com", exp=2_000_000_000,
                        refresh_token="rt-a", account_id="ws-a")
    (tmp_path / "codex").mkdir()
    (tmp_path / "codex" / "auth.json").write_text('{"old": true}')
    (tmp_path / "xdg" / "opencode").mkdir(parents=True)
    (tmp_path / "xdg" / "opencode" / "auth.json").write_text(
        json.dumps({"anthropic": {"type": "api", "key": "sk-ant"}, "openai": {"old": 1}}))
    (tmp_path / "pi").mkdir()
    (tmp_path / "pi" / "auth.json").write_text(json.dumps({"google": {"k": 1}}))
    code, out, err = cx(tmp_path, "switch", "a@ex")
    assert code == 0, err
    assert out.splitlines() == [
        "Switched to a@example.com",
        f"Synced OpenCode auth: {tmp_path / 'xdg' / 'opencode' / 'auth.json'}",
        f"Synced pi auth: {tmp_path / 'pi' / 'auth.json'}",
        "Restart any running Codex, OpenCode or pi sessions to use the new account.",
        "Pinned: the daemon's auto-switch keeps a@example.com active until it runs out "
        "(`cx switch --auto` to let it choose again).",
    ]
    stored = json.loads((tmp_path / "store" / "accounts" / "a@example.com.json").read_text())
    codex = json.loads((tmp_path / "codex" / "auth.json").read_text())
    assert codex == stored["auth"]
    assert json.loads((tmp_path / "codex" / "auth.json.bak").read_text()) == {"old": True}
    assert stat.S_IMODE((tmp_path / "codex" / "auth.json").stat().st_mode) == 0o600
    tokens = stored["auth"]["tokens"]
    expected = {"type": "oauth", "refresh": "rt-a", "access": tokens["access_token"],
                "expires": 2_000_000_000_000, "accountId": "ws-a"}
    opencode = json.loads((tmp_path / "xdg" / "opencode" / "auth.json").read_text())
    assert opencode == {"anthropic": {"type": "api", "key": "sk-ant"}, "openai": expected}
    pi = json.loads((tmp_path / "pi" / "auth.json").read_text())
    assert pi == {"google": {"k": 1}, "openai-codex": expected}


def test_switching_to_an_api_key_writes_only_the_key(tmp_path: Path) -> None:
    write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    code, _, err = cx(tmp_path, "use", "work", "--opencode", "--pi")
    assert code == 0, err
    assert json.loads((tmp_path / "codex" / "auth.json").read_text()) == {
        "auth_mode": "apikey", "OPENAI_API_KEY": "sk-work-1"}
    assert json.loads((tmp_path / "xdg" / "opencode" / "auth.json").read_text()) == {
        "openai": {"type": "api", "key": "sk-work-1"}}
    assert json.loads((tmp_path / "pi" / "auth.json").read_text()) == {
        "openai": {"type": "api_key", "key": "sk-work-1"}}


def test_a_corrupt_opencode_file_is_reported_and_left_alone(tmp_path: Path) -> None:
    write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    (tmp_path / "xdg" / "opencode").mkdir(parents=True)
    (tmp_path / "xdg" / "opencode" / "auth.json").write_text("{broken")
    code, _, err = cx(tmp_path, "switch", "work")
    assert code == 0
    assert "Warning: OpenCode auth sync failed: parse" in err
    assert (tmp_path / "xdg" / "opencode" / "auth.json").read_text() == "{broken"


def test_switch_refuses_an_exhausted_account_unless_forced(tmp_path: Path) -> None:
    write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(json.dumps({
        "format": 1, "sessions": [],
        "exhausted": {"apikey:work": {"until": time.time() + 600, "reason": "HTTP 429"}}}))
    code, _, err = cx(tmp_path, "switch", "work")
    assert code == 1 and "exhausted (HTTP 429" in err and "--force" in err
    assert not (tmp_path / "codex" / "auth.json").exists()
    assert cx(tmp_path, "switch", "work", "--force")[0] == 0


def test_lookup_errors_and_remove(tmp_path: Path) -> None:
    write_oauth_account(tmp_path / "store", "alice@example.com", exp=FAR)
    write_oauth_account(tmp_path / "store", "alicia@example.com", exp=FAR)
    code, _, err = cx(tmp_path, "rm", "nobody")
    assert code == 1 and err == 'cx: no account found matching "nobody"\n'
    code, _, err = cx(tmp_path, "rm", "ali")
    assert code == 1 and "multiple accounts match" in err
    code, out, _ = cx(tmp_path, "remove", "alicia")
    assert out == "Removed account: alicia@example.com\n"
    assert [p.name for p in (tmp_path / "store" / "accounts").glob("*.json")] == [
        "alice@example.com.json"]


def test_hidden_ids_are_refused_and_corrupt_records_never_rewritten(tmp_path: Path) -> None:
    code, _, err = cx(tmp_path, "add-key", "--label", "", "--key", "sk-1")
    assert code == 1
    from subrouter.accounts import activate as manage

    with pytest.raises(manage.StoreError, match="hidden"):
        manage.path_for(str(tmp_path / "store"), ".secret")
    accounts = tmp_path / "store" / "accounts"
    accounts.mkdir(parents=True)
    (accounts / "apikey_work.json").write_text("{corrupt")
    code, _, err = cx(tmp_path, "add-key", "--label", "work", "--key", "sk-2")
    assert code == 1 and "left as it is" in err
    assert (accounts / "apikey_work.json").read_text() == "{corrupt"


def test_twistd_runs_a_cx_command_and_exits_without_a_pidfile(tmp_path: Path) -> None:
    write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    result = subprocess.run(
        [twistd, "subrouter", "cx", "--accounts-dir", str(tmp_path / "store"), "list"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env=dict(os.environ, HOME=str(tmp_path), CODEX_HOME=str(tmp_path / "codex")),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:3] == ["work", "api", "key"]
    assert not (tmp_path / "twistd.pid").exists()
    failing = subprocess.run(
        [twistd, "subrouter", "cx", "--accounts-dir", str(tmp_path / "store"), "rm", "nope"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env=dict(os.environ, HOME=str(tmp_path)),
    )
    assert failing.returncode == 1 and "no account found" in failing.stderr


def test_add_runs_codex_login_in_a_private_home_and_leaves_the_active_login(
    tmp_path: Path,
) -> None:
    fake = tmp_path / "fake-codex"
    auth = {"auth_mode": "chatgpt", "tokens": {
        "id_token": id_token_for("new@example.com"),
        "access_token": access_token_for("new@example.com", exp=FAR),
        "refresh_token": "rt-new", "account_id": "acct-new"}}
    fake.write_text(
        "#!/bin/sh\n"
        f"[ \"$1\" = login ] || exit 3\n"
        f"printf '%s' '{json.dumps(auth)}' > \"$CODEX_HOME/auth.json\"\n"
        f"printf '%s ' \"$@\" > {tmp_path}/login-args\n"
    )
    fake.chmod(0o755)
    (tmp_path / "codex").mkdir()
    (tmp_path / "codex" / "auth.json").write_text('{"active": "untouched"}')
    code, out, err = cx(tmp_path, "add", "--device-auth",
                        env={"SUBROUTER_CODEX_BIN": str(fake)})
    assert code == 0, err
    assert "Added account: new@example.com" in out
    assert (tmp_path / "login-args").read_text() == "login --device-auth "
    stored = json.loads((tmp_path / "store" / "accounts" / "new@example.com.json").read_text())
    assert stored["auth"] == auth
    assert (tmp_path / "codex" / "auth.json").read_text() == '{"active": "untouched"}'


@pytest_twisted.ensureDeferred
async def test_status_fetches_every_login_and_prints_bars_or_json(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    async def usage(exchange: Any) -> None:
        workspace = (exchange.seen.header(b"chatgpt-account-id") or b"").decode()
        used = {"ws-a": 12.5, "ws-b": 90.0}[workspace]
        exchange.respond_json(200, {"plan_type": "pro", "rate_limit": {
            "primary_window": {"used_percent": used, "limit_window_seconds": 18000,
                               "reset_after_seconds": 5400},
            "secondary_window": {"used_percent": 30, "limit_window_seconds": 604800,
                                 "reset_after_seconds": 86400 * 3}}})

    upstream.script(b"/backend-api/wham/usage", usage)
    write_oauth_account(tmp_path / "store", "a@example.com", exp=FAR, account_id="ws-a")
    write_oauth_account(tmp_path / "store", "b@example.com", exp=FAR, account_id="ws-b")
    write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    cx_script = os.path.join(os.path.dirname(sys.executable), "cx")
    env = dict(os.environ, HOME=str(tmp_path), CODEX_HOME=str(tmp_path / "codex"),
               SUBROUTER_CA_BUNDLE=ca.ca_pem_path, CX_NO_COLOR="1")
    args = ["--accounts-dir", str(tmp_path / "store"), "status", "--usage-url",
            upstream.base_url + "/backend-api/wham/usage", "--token-url", upstream.token_url]
    text = await _run(cx_script, args, env)
    lines = text.splitlines()
    assert lines[0].split() == ["ACCOUNT", "KIND", "PLAN", "5H", "WEEKLY", "RESETS",
                                "HEADROOM", "STATE"]
    # ranked best first: a (70% headroom), then b (10%: below the band, but a
    # login with quota left goes before a pay-per-token key), then the key
    assert [line.split()[0] for line in lines[1:4]] == ["a@example.com", "b@example.com",
                                                        "work"]
    # the plan is the daemon's view of the login (its token's claim)
    assert lines[1].split()[:3] == ["a@example.com", "login", "plus"]
    assert "[#---------]  12%" in lines[1] and "[###-------]  30%" in lines[1]
    assert re.search(r"5h 1h (29|30)m · wk (2d 23h|3d 0h)", lines[1]) and " 70% " in lines[1]
    assert lines[1].rstrip().endswith("next")
    assert "pay per token" in lines[3]
    assert "low, no new conversations" in lines[2] and " 10% " in lines[2]
    columns = {line.index("login") for line in (lines[1], lines[2])}
    assert len(columns) == 1  # aligned
    rows = json.loads(await _run(cx_script, [*args, "--json"], env))
    by_id = {row["id"]: row for row in rows}
    assert [row["id"] for row in rows] == ["a@example.com", "b@example.com", "apikey:work"]
    assert by_id["b@example.com"]["headroom_percent"] == 10.0
    first = by_id["a@example.com"]["windows"][0]
    assert 5390 <= first.pop("resets_in_seconds") <= 5400
    # one observation here: a forecast needs the running daemon's history
    assert first.pop("forecast")["reason"] == "not enough data"
    assert first == {"name": "5h", "used_percent": 12.5, "window_minutes": 300}
    assert by_id["a@example.com"]["windows"][1]["name"] == "weekly"
    assert by_id["a@example.com"]["next"] and not by_id["b@example.com"]["next"]
    assert by_id["apikey:work"]["billing"] == "pay per token"
    assert "sk-work-1" not in text


async def _run(executable: str, args: list[str], env: dict[str, str]) -> str:
    from twisted.internet.utils import getProcessOutputAndValue

    out, err, code = await getProcessOutputAndValue(executable, args, env=env, reactor=reactor)
    assert code == 0, err.decode()
    return bytes(out).decode()


@pytest_twisted.ensureDeferred
async def test_admin_keys_are_validated_stored_masked_and_removed(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    from tests.support.upstream import json_response

    upstream.script(b"/v1/organization/projects", json_response(403, {"error": "no"}))
    upstream.script(b"/v1/organization/costs", json_response(200, {"data": []}))
    cx_script = os.path.join(os.path.dirname(sys.executable), "cx")
    env = dict(os.environ, HOME=str(tmp_path), SUBROUTER_CA_BUNDLE=ca.ca_pem_path)
    store = ["--accounts-dir", str(tmp_path / "store")]
    key = "sk-admin-abcdefghijklmnopqrstuvwxyz123456"
    out = await _run(cx_script, [*store, "add-admin-key", "--label", "org", "--key", key,
                                 "--openai-url", upstream.base_url], env)
    assert out == "Validating with OpenAI... ok\nAdded admin key: org\n"
    seen = [r.path for r in upstream.requests]
    assert seen[-2:] == [b"/v1/organization/projects", b"/v1/organization/costs"]
    assert upstream.requests[-1].header(b"authorization") == f"Bearer {key}".encode()
    saved = json.loads((tmp_path / "store" / "admin-keys" / "org.json").read_text())
    assert saved["key"] == key and saved["label"] == "org"
    assert stat.S_IMODE((tmp_path / "store" / "admin-keys" / "org.json").stat().st_mode) == 0o600
    listing = await _run(cx_script, [*store, "admin-keys"], env)
    assert listing == f"\n  org  sk-admin-abc***123456  added {saved['addedAt'][:10]}\n\n"
    assert key not in listing
    upstream.script(b"/v1/organization/projects", json_response(401, {"error": "bad key"}))
    from twisted.internet.utils import getProcessOutputAndValue

    _, err, code = await getProcessOutputAndValue(
        cx_script, [*store, "add-admin-key", "--label", "x", "--key", "sk-admin-nope",
                    "--openai-url", upstream.base_url], env=env, reactor=reactor)
    assert code == 1 and b"not accepted: OpenAI answered HTTP 401" in err
    assert not (tmp_path / "store" / "admin-keys" / "x.json").exists()
    code, out, _ = cx(tmp_path, "remove-admin-key", "org")
    assert out == "Removed admin key: org\n"
    assert cx(tmp_path, "remove-admin-key", "org")[2] == 'cx: no admin key labeled "org"\n'
    assert cx(tmp_path, "admin-keys")[1] == "No admin keys. Add one with `cx add-admin-key`.\n"


def test_gemini_scaffold_lists_profiles(tmp_path: Path) -> None:
    assert cx(tmp_path, "gemini")[1] == "No Gemini profiles configured yet.\n"
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "gemini.json").write_text(json.dumps(
        {"active": "work", "profiles": {"work": {"name": "work", "createdAt":
                                                  "2026-05-01T00:00:00Z"}}}))
    assert cx(tmp_path, "gemini", "list")[1] == "  work * (added 2026-05-01)\n"


def test_switch_during_a_refresh_never_writes_the_spent_tokens(tmp_path: Path) -> None:
    """
    The daemon holds the account's lock while it refreshes: a `cx switch`
    that starts meanwhile waits, then copies the new tokens, never the old.
    """
    import threading

    from subrouter.accounts.refresh import _lock_and_read, _write_account, apply_new_tokens

    path = write_oauth_account(tmp_path / "store", "a@example.com", exp=FAR,
                               refresh_token="rt-old")
    held = _lock_and_read(str(path))  # the refresh has begun
    results: list[tuple[int, str, str]] = []
    switching = threading.Thread(
        target=lambda: results.append(cx(tmp_path, "switch", "a@", "--pi")))
    switching.start()
    switching.join(0.3)
    assert switching.is_alive(), "switch must wait for the refresh"
    new = {"access_token": access_token_for("a@example.com", exp=FAR + 10),
           "refresh_token": "rt-new", "id_token": id_token_for("a@example.com")}
    apply_new_tokens(held.document, new, time.time())
    _write_account(str(path), held.document)
    held.release()
    switching.join(10)
    assert results and results[0][0] == 0, results
    active = json.loads((tmp_path / "codex" / "auth.json").read_text())
    assert active["tokens"]["refresh_token"] == "rt-new"
    pi = json.loads((tmp_path / "pi" / "auth.json").read_text())
    assert pi["openai-codex"]["refresh"] == "rt-new"


def test_gui_switch_says_restarts_are_macos_only_here(tmp_path: Path) -> None:
    write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    code, out, _ = cx(tmp_path, "gui-use", "work")
    assert code == 0
    assert out.splitlines()[0] == "Switched to apikey:work"
    if sys.platform != "darwin":
        assert "Codex.app restart is only supported on macOS." in out.splitlines()


def test_a_login_codex_refreshed_is_copied_back_before_switching(tmp_path: Path) -> None:
    path = write_oauth_account(tmp_path / "store", "a@example.com", exp=FAR,
                               refresh_token="rt-stale")
    write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    rotated = json.loads(path.read_text())["auth"]
    rotated["tokens"] = dict(rotated["tokens"], refresh_token="rt-rotated-by-codex",
                             access_token=access_token_for("a@example.com", exp=FAR + 600))
    (tmp_path / "codex").mkdir()
    (tmp_path / "codex" / "auth.json").write_text(json.dumps(rotated))
    assert cx(tmp_path, "switch", "work")[0] == 0
    stored = json.loads(path.read_text())["auth"]["tokens"]
    assert stored["refresh_token"] == "rt-rotated-by-codex"
    # an older active login never overwrites a newer stored one
    older = dict(rotated, tokens=dict(rotated["tokens"], refresh_token="rt-older",
                 access_token=access_token_for("a@example.com", exp=FAR - 600)))
    (tmp_path / "codex" / "auth.json").write_text(json.dumps(older))
    assert cx(tmp_path, "switch", "work")[0] == 0
    assert json.loads(path.read_text())["auth"]["tokens"]["refresh_token"] == (
        "rt-rotated-by-codex")


@pytest_twisted.ensureDeferred
async def test_cx_alone_ranks_accounts_and_switches_to_the_chosen_row(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    async def usage(exchange: Any) -> None:
        workspace = (exchange.seen.header(b"chatgpt-account-id") or b"").decode()
        used = {"ws-a": 80.0, "ws-b": 10.0}[workspace]
        exchange.respond_json(200, {"rate_limit": {"primary_window": {
            "used_percent": used, "limit_window_seconds": 18000, "reset_after_seconds": 600}}})

    upstream.script(b"/backend-api/wham/usage", usage)
    write_oauth_account(tmp_path / "store", "a@example.com", exp=FAR, account_id="ws-a")
    write_oauth_account(tmp_path / "store", "b@example.com", exp=FAR, account_id="ws-b")
    from twisted.internet import protocol

    class Collect(protocol.ProcessProtocol):
        def __init__(self) -> None:
            from twisted.internet.defer import Deferred

            self.out = b""
            self.done: Deferred[int] = Deferred()

        def connectionMade(self) -> None:
            assert self.transport is not None
            self.transport.write(b"1\n")  # the first row: the most headroom
            self.transport.closeStdin()

        def outReceived(self, data: bytes) -> None:
            self.out += data

        def processEnded(self, reason: Any) -> None:
            self.done.callback(reason.value.exitCode)

    cx_script = os.path.join(os.path.dirname(sys.executable), "cx")
    collect = Collect()
    env = dict(os.environ, HOME=str(tmp_path), CODEX_HOME=str(tmp_path / "codex"),
               XDG_DATA_HOME=str(tmp_path / "xdg"), PI_CODING_AGENT_DIR=str(tmp_path / "pi"),
               SUBROUTER_CA_BUNDLE=ca.ca_pem_path, CX_NO_COLOR="1",
               SUBROUTER_USAGE_URL=upstream.base_url + "/backend-api/wham/usage",
               SUBROUTER_TOKEN_URL=upstream.token_url)
    reactor.spawnProcess(collect, cx_script, [
        cx_script, "--accounts-dir", str(tmp_path / "store"), "--state-dir",
        str(tmp_path / "state")], env=env)
    assert await collect.done == 0
    text = collect.out.decode()
    first, second = text.index("1)  b@example.com"), text.index("2)  a@example.com")
    assert first < second and "Switch to (#, a name, or Enter for none): " in text
    assert "Switched to b@example.com" in text
    active = json.loads((tmp_path / "codex" / "auth.json").read_text())
    assert active["tokens"]["account_id"] == "ws-b"


def test_interactive_view_is_the_default_command() -> None:
    options = CxOptions()
    options.parseOptions([])
    assert options.subCommand == "interactive"


@pytest_twisted.ensureDeferred
async def test_switch_refreshes_a_token_about_to_expire_first(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    path = write_oauth_account(tmp_path / "store", "a@example.com", exp=time.time() + 20,
                               refresh_token="rt-expiring")
    upstream.refresh_emails["rt-expiring"] = "a@example.com"
    from twisted.internet.utils import getProcessOutputAndValue

    cx_script = os.path.join(os.path.dirname(sys.executable), "cx")
    env = dict(os.environ, HOME=str(tmp_path), CODEX_HOME=str(tmp_path / "codex"),
               XDG_DATA_HOME=str(tmp_path / "xdg"), PI_CODING_AGENT_DIR=str(tmp_path / "pi"),
               SUBROUTER_CA_BUNDLE=ca.ca_pem_path, SUBROUTER_TOKEN_URL=upstream.token_url)
    _out, err, code = await getProcessOutputAndValue(
        cx_script, ["--accounts-dir", str(tmp_path / "store"), "switch", "a@"], env=env,
        reactor=reactor)
    assert code == 0, err
    assert len(upstream.token_requests) == 1
    stored = json.loads(path.read_text())["auth"]["tokens"]
    assert stored["refresh_token"] != "rt-expiring"
    active = json.loads((tmp_path / "codex" / "auth.json").read_text())
    assert active["tokens"]["refresh_token"] == stored["refresh_token"]


def test_what_subrouter_writes_has_the_cx_schema_field_for_field(tmp_path: Path) -> None:
    cx(tmp_path, "add-key", "--label", "work", "--key", "sk-1")
    (tmp_path / "codex").mkdir()
    auth = {"auth_mode": "chatgpt", "tokens": {
        "id_token": id_token_for("me@example.com"),
        "access_token": access_token_for("me@example.com", exp=FAR),
        "refresh_token": "rt", "account_id": "acct"}, "last_refresh": "2026-01-01T00:00:00Z"}
    (tmp_path / "codex" / "auth.json").write_text(json.dumps(auth))
    cx(tmp_path, "import")
    key = json.loads((tmp_path / "store" / "accounts" / "apikey_work.json").read_text())
    login = json.loads((tmp_path / "store" / "accounts" / "me@example.com.json").read_text())
    assert sorted(key) == ["addedAt", "auth", "email"]
    assert sorted(key["auth"]) == ["OPENAI_API_KEY", "auth_mode"]
    assert sorted(login) == ["addedAt", "auth", "email"]
    assert sorted(login["auth"]) == ["auth_mode", "last_refresh", "tokens"]
    assert sorted(login["auth"]["tokens"]) == ["access_token", "account_id", "id_token",
                                               "refresh_token"]
    # and it reads back as the accounts it describes
    from subrouter.accounts.activate import load_all

    accounts, skipped = load_all(str(tmp_path / "store"))
    assert [(a.id, a.kind.value) for a in accounts] == [
        ("apikey:work", "apikey"), ("me@example.com", "oauth")]
    assert skipped == {}


@pytest.mark.parametrize("key", ["sk-ключ", "sk-a\x1bb", "sk-a b"])
def test_add_key_refuses_a_key_that_cannot_go_into_a_header(tmp_path: Path, key: str) -> None:
    code, _, err = cx(tmp_path, "add-key", "--label", "bad", "--key", key)
    assert code == 1 and "cannot go into an HTTP header" in err
    assert key not in err
    assert not (tmp_path / "store" / "accounts" / "apikey_bad.json").exists()


def test_list_names_an_unusable_account_and_why(tmp_path: Path) -> None:
    write_apikey_account(tmp_path / "store", "weird", "sk-ключ-weird")
    write_apikey_account(tmp_path / "store", "good", "sk-good")
    code, out, _ = cx(tmp_path, "list")
    assert code == 0
    weird = next(line for line in out.splitlines() if "weird" in line)
    assert "unusable" in weird and "outside Latin-1" in weird
    good = next(line for line in out.splitlines() if "good" in line)
    assert "unusable" not in good
    assert "ключ" not in out
    rows = {r["id"]: r for r in json.loads(cx(tmp_path, "list", "--json")[1])}
    assert rows["apikey:weird"]["usable"] is False
    assert "HTTP header" in rows["apikey:weird"]["why_not"]
    assert rows["apikey:good"]["usable"] is True


def test_an_accounts_dir_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    from twisted.python import usage

    store = tmp_path / "not-a-folder"
    store.write_text("x")
    with pytest.raises(usage.UsageError, match="is a file, not a folder"):
        CxOptions().parseOptions(["--accounts-dir", str(store), "list"])
    CxOptions().parseOptions(["--accounts-dir", str(tmp_path / "missing"), "list"])  # made later
