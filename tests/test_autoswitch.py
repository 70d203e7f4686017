"""
The daemon's auto-switch: the best login becomes the local agents' active one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import AccountStore
from subrouter.jobs.autoswitch import AutoSwitch
from subrouter.sessions.placement import Placement
from subrouter.sessions.scheduler import Window
from subrouter.sessions.table import SessionTable
from subrouter.sessions.usage import UsageBook
from tests.support.upstream import write_oauth_account

FAR = time.time() + 30 * 86400


class _Poller:
    def __init__(self) -> None:
        self.runs = 0

    def run_once(self) -> Any:
        self.runs += 1
        return succeed(None)


def sync(f: Any) -> Any:
    return succeed(f())


def test_the_best_login_becomes_active_and_a_second_round_changes_nothing(
    tmp_path: Path,
) -> None:
    write_oauth_account(tmp_path / "store", "a@example.com", exp=FAR, account_id="ws-a")
    write_oauth_account(tmp_path / "store", "b@example.com", exp=FAR, account_id="ws-b")
    clock = Clock()
    clock.advance(time.time())
    store = AccountStore(str(tmp_path / "store"), sync)
    store.scan_now()
    refresher = TokenRefresher(store=store, http=None, token_url="https://t", clock=clock,
                               run_blocking=sync, codex_auth=str(tmp_path / "codex" / "auth.json"))
    usage = UsageBook()
    now = clock.seconds()
    usage.record("a@example.com", [Window("primary", 80, 18000, 3600)], now, "poll")
    usage.record("b@example.com", [Window("primary", 10, 18000, 3600)], now, "poll")
    placement = Placement(AccountPool(store, refresher), SessionTable(1800), usage, clock)
    poller = _Poller()
    (tmp_path / "xdg" / "opencode").mkdir(parents=True)  # OpenCode is installed; pi is not
    switcher = AutoSwitch(
        placement=placement, poller=poller,  # type: ignore[arg-type]
        codex_auth=str(tmp_path / "codex" / "auth.json"),
        environ={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg"),
                 "PI_CODING_AGENT_DIR": str(tmp_path / "pi")},
        run_blocking=sync,
    )
    switcher.run_once()
    active = json.loads((tmp_path / "codex" / "auth.json").read_text())
    assert active["tokens"]["account_id"] == "ws-b"
    opencode = json.loads((tmp_path / "xdg" / "opencode" / "auth.json").read_text())
    assert opencode["openai"]["accountId"] == "ws-b"
    assert not (tmp_path / "pi").exists()  # files only for the tools that are there
    assert switcher.switches == 1 and poller.runs == 1
    switcher.run_once()
    assert switcher.switches == 1 and poller.runs == 2
    assert not (tmp_path / "codex" / "auth.json.bak").exists() or json.loads(
        (tmp_path / "codex" / "auth.json").read_text())["tokens"]["account_id"] == "ws-b"
    # b runs out: a takes over
    usage.mark_exhausted("b@example.com", clock.seconds(), 600, "429")
    switcher.run_once()
    active = json.loads((tmp_path / "codex" / "auth.json").read_text())
    assert active["tokens"]["account_id"] == "ws-a" and switcher.switches == 2


def test_a_pin_from_cx_switch_holds_until_the_pinned_login_runs_out(tmp_path: Path) -> None:
    from subrouter.accounts import activate as manage

    write_oauth_account(tmp_path / "store", "a@example.com", exp=FAR, account_id="ws-a")
    write_oauth_account(tmp_path / "store", "b@example.com", exp=FAR, account_id="ws-b")
    clock = Clock()
    clock.advance(time.time())
    store = AccountStore(str(tmp_path / "store"), sync)
    store.scan_now()
    refresher = TokenRefresher(store=store, http=None, token_url="https://t", clock=clock,
                               run_blocking=sync, codex_auth=str(tmp_path / "codex" / "auth.json"))
    usage = UsageBook()
    usage.record("a@example.com", [Window("primary", 80, 18000, 3600)], clock.seconds(), "poll")
    usage.record("b@example.com", [Window("primary", 10, 18000, 3600)], clock.seconds(), "poll")
    placement = Placement(AccountPool(store, refresher), SessionTable(1800), usage, clock)
    manage.write_pin(str(tmp_path / "state"), "a@example.com")  # what `cx switch a` leaves
    switcher = AutoSwitch(
        placement=placement, poller=_Poller(),  # type: ignore[arg-type]
        codex_auth=str(tmp_path / "codex" / "auth.json"),
        environ={"HOME": str(tmp_path)}, run_blocking=sync, state_dir=str(tmp_path / "state"),
    )
    switcher.run_once()
    assert switcher.switches == 0  # b is better, but the user chose a
    usage.mark_exhausted("a@example.com", clock.seconds(), 600, "429")
    switcher.run_once()
    active = json.loads((tmp_path / "codex" / "auth.json").read_text())
    assert active["tokens"]["account_id"] == "ws-b" and switcher.switches == 1
    assert manage.read_pin(str(tmp_path / "state")) is None  # the pin is dropped


def test_a_claude_profile_is_never_made_codexs_login(tmp_path: Path) -> None:
    from tests.support.anthropic_backend import write_claude_profile

    write_oauth_account(tmp_path / "store", "a@example.com", exp=FAR, account_id="ws-a")
    write_claude_profile(tmp_path / "store", "aaa", "sk-ant-oat01-x", expires_at=FAR)
    clock = Clock()
    clock.advance(time.time())
    store = AccountStore(str(tmp_path / "store"), sync)
    store.scan_now()
    refresher = TokenRefresher(store=store, http=None, token_url="https://t", clock=clock,
                               run_blocking=sync, codex_auth=str(tmp_path / "codex" / "auth.json"))
    usage = UsageBook()
    now = clock.seconds()
    # the profile looks best by far; the login is the only Codex candidate
    usage.record("claude:aaa", [Window("five_hour", 0, 18000, 60)], now, "poll")
    usage.record("a@example.com", [Window("primary", 70, 18000, 3600)], now, "poll")
    placement = Placement(AccountPool(store, refresher), SessionTable(1800), usage, clock)
    switcher = AutoSwitch(
        placement=placement, poller=_Poller(),  # type: ignore[arg-type]
        codex_auth=str(tmp_path / "codex" / "auth.json"),
        environ={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg"),
                 "PI_CODING_AGENT_DIR": str(tmp_path / "pi")},
        run_blocking=sync,
    )
    switcher.run_once()
    active = json.loads((tmp_path / "codex" / "auth.json").read_text())
    assert active["tokens"]["account_id"] == "ws-a"
