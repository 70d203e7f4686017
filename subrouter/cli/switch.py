# -*- test-case-name: tests.test_cx -*-
"""
``cx switch`` and ``cx gui-switch``: make an account the one the local
agents use, with the same :func:`~subrouter.accounts.activate.activate` as
the daemon's auto-switch, and pin the choice so auto-switch respects it
until that account runs out (``cx switch --auto`` hands the choice back).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from twisted.python import usage

from subrouter.accounts import activate as manage
from subrouter.accounts.refresh import codex_auth_path
from subrouter.accounts.store import Account, AccountKind
from subrouter.cli.accounts import sync_active_to_store
from subrouter.cli.console import Context
from subrouter.cli.dispatch import Command, CommandOptions
from subrouter.cli.entry import CommandFailed
from subrouter.config import DEFAULT_TOKEN_URL
from subrouter.upstream.routing import OPENAI


class SwitchOptions(CommandOptions):
    summary = (
        "Make an account the active one for Codex (and OpenCode and pi when they are "
        "installed), and pin it: the daemon's auto-switch keeps it until it runs out. "
        "--auto drops the pin and lets auto-switch choose."
    )
    arguments = "[account]"
    optFlags = [
        ["force", None, "Switch even to an account that reached its usage limit."],
        ["auto", None, "Drop the pin: the daemon's auto-switch chooses again."],
        ["opencode", None, "Write OpenCode's auth even if OpenCode looks absent."],
        ["pi", None, "Write pi's auth even if pi looks absent."],
    ]

    def postOptions(self) -> None:
        if self["auto"] and self["account"]:
            raise usage.UsageError("give an account or --auto, not both")
        if not self["auto"] and not self["account"]:
            raise usage.UsageError("missing <account> (or --auto)")


class GuiSwitchOptions(SwitchOptions):
    summary = "`cx switch`, then restart Codex.app so the desktop app follows (macOS)."
    optFlags = [*SwitchOptions.optFlags, ["no-restart-gui", None, "Do not restart Codex.app."]]

    def opt_no_restart_codex_gui(self) -> None:
        """
        Same as --no-restart-gui.
        """
        self["no-restart-gui"] = 1


def exhaustion(state_dir: str, account_id: str) -> str | None:
    """
    The daemon's exhaustion mark for an account, if one is in force.
    """
    from subrouter.cli.fetch import saved_marks

    mark = saved_marks(state_dir).get(account_id)
    if not isinstance(mark, dict):
        return None
    until = mark.get("until")
    if not isinstance(until, (int, float)) or until <= time.time():
        return None
    minutes = int((until - time.time()) // 60)
    return f"{mark.get('reason') or 'usage limit reached'}; resets in about {minutes} min"


async def switch(ctx: Context, options: Any, *, gui: bool = False) -> int:
    streams = ctx.streams
    if options["auto"]:
        dropped = manage.clear_pin(ctx.state_dir)
        streams.say("Unpinned: the daemon's auto-switch chooses the active login again.\n"
                    if dropped else "Nothing was pinned.\n")
        return 0
    sync_active_to_store(ctx)
    account = manage.find(ctx.store, options["account"])
    if account.provider != OPENAI:
        raise CommandFailed(
            f"cannot switch to {account.id}: it is an Anthropic key, which Codex cannot use "
            "(Claude Code reaches it through `subrouter claude`)"
        )
    if account.problem:
        raise CommandFailed(f"cannot switch to {account.id}: {account.problem}")
    exhausted = exhaustion(ctx.state_dir, account.id)
    if exhausted and not options["force"]:
        raise CommandFailed(
            f"cannot switch to {account.id}: account is exhausted ({exhausted}); "
            "use --force to switch anyway"
        )
    if account.kind is AccountKind.OAUTH and account.expires_at is not None and \
            account.expires_at - time.time() < 60:
        await _refresh_first(ctx, account)
        account = manage.find(ctx.store, account.id)
    return activate_and_report(ctx, account, options, gui=gui)


def activate_and_report(ctx: Context, account: Account, options: Any, *,
                        gui: bool = False) -> int:
    streams = ctx.streams
    accounts, _ = manage.load_all(ctx.store)
    keys = [a.secret for a in accounts if a.kind is AccountKind.APIKEY and a.secret]
    always = [tool for tool, flag in ((manage.OPENCODE, "opencode"), (manage.PI, "pi"))
              if options.get(flag)]
    done = manage.activate(account, codex_auth_path(dict(ctx.environ)), ctx.environ,
                           our_keys=keys, always=always)
    manage.write_pin(ctx.state_dir, account.id)
    streams.say(f"Switched to {account.id}\n")
    for tool, path in done.synced:
        streams.say(f"Synced {tool} auth: {path}\n")
    for tool, why in done.failed:
        streams.warn(f"Warning: {tool} auth sync failed: {why}\n")
    if gui:
        _restart_codex_app(ctx)
    else:
        names = ["Codex", *(tool for tool, _ in done.synced)]
        tools = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        streams.say(f"Restart any running {tools} sessions to use the new account.\n")
    streams.say(
        f"Pinned: the daemon's auto-switch keeps {account.id} active until it runs out "
        "(`cx switch --auto` to let it choose again).\n")
    return 0


async def _refresh_first(ctx: Context, account: Account) -> None:
    """
    Refresh an access token about to expire before handing it to Codex;
    a failure is a warning (the cached tokens are used).
    """
    from subrouter.accounts.refresh import RefreshFailed
    from subrouter.cli.fetch import refresh_account

    token_url = ctx.environ.get("SUBROUTER_TOKEN_URL") or DEFAULT_TOKEN_URL
    try:
        await refresh_account(ctx.reactor, ctx.store, account, token_url, ctx.environ)
    except RefreshFailed as e:
        ctx.streams.warn(f"Warning: token refresh failed, using cached tokens: {e.reason}\n")


def _restart_codex_app(ctx: Context) -> None:
    """
    Restart Codex.app so the desktop app uses the new account (macOS only;
    failures are warnings).
    """
    import subprocess

    streams = ctx.streams
    if sys.platform != "darwin":
        streams.say("Codex.app restart is only supported on macOS.\n")
        return
    try:
        if subprocess.run(["pgrep", "-x", "Codex"], capture_output=True).returncode != 0:
            streams.say(
                "Codex.app is not running; it will use the new account on next launch.\n")
            return
        subprocess.run(["pkill", "-x", "Codex"], capture_output=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and subprocess.run(
            ["pgrep", "-x", "Codex"], capture_output=True
        ).returncode == 0:
            time.sleep(0.1)
        if subprocess.run(["open", "-b", "com.openai.codex"], capture_output=True).returncode:
            subprocess.run(["open", "/Applications/Codex.app"], check=True, capture_output=True)
        streams.say("Restarted Codex.app so the GUI uses the new account.\n")
    except (OSError, subprocess.CalledProcessError) as e:
        streams.warn(f"Warning: Restart Codex.app manually ({e})\n")


async def gui_switch(ctx: Context, options: Any) -> int:
    return await switch(ctx, options, gui=not options["no-restart-gui"])


COMMANDS = [
    Command("switch", SwitchOptions, "Make an account the active one (and pin it).", ("use",),
            run=switch),
    Command("gui-switch", GuiSwitchOptions, "Switch, then restart Codex.app (macOS).",
            ("gui-use",), run=gui_switch),
]
