# -*- test-case-name: tests.test_cx -*-
"""
The ``cx`` command tree: one ``usage.Options`` tree for ``cx <cmd>``,
``sr``/``subrouter cx <cmd>`` and ``twistd subrouter cx <cmd>``.

Commands run synchronously against local files and return an exit status;
their output goes to the injected streams.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.python import usage

from subrouter.accounts import activate as manage
from subrouter.accounts.refresh import codex_auth_path
from subrouter.accounts.store import Account, AccountKind, provider_of
from subrouter.cli.claude import ClaudeOptions
from subrouter.config import (
    DEFAULT_ACCOUNTS_DIR,
    DEFAULT_OPENAI_UPSTREAM,
    DEFAULT_TOKEN_URL,
    DEFAULT_USAGE_URL,
    expand_path,
)
from subrouter.timefmt import rfc3339
from subrouter.upstream.routing import ANTHROPIC, OPENAI

SubCommand = tuple[str, None, type[usage.Options], str]


class _Interspersed(usage.Options):
    """
    Options may follow the positional arguments (``cx usage 7 --openai-url
    X``), as people type them; getopt alone stops at the first argument.
    """

    def parseOptions(self, options: list[str] | None = None) -> None:
        args = list(options or [])
        takes_value = {f"--{p[0]}" for p in getattr(self, "optParameters", [])}
        flags = {f"--{f[0]}" for f in getattr(self, "optFlags", [])} | {"--help"}
        for attribute in dir(type(self)):
            method = getattr(type(self), attribute)
            if attribute.startswith("opt_") and method.__code__.co_argcount == 1:
                flags.add("--" + attribute[4:].replace("_", "-"))
        front: list[str] = []
        rest: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            name = arg.split("=", 1)[0]
            if arg == "--":
                rest.extend(args[i:])
                break
            if name in takes_value:
                front.append(arg)
                if "=" not in arg and i + 1 < len(args):
                    front.append(args[i + 1])
                    i += 1
            elif arg in flags:
                front.append(arg)
            else:
                rest.append(arg)
            i += 1
        super().parseOptions(front + rest)


class _ListOptions(usage.Options):
    synopsis = "[--json]"
    optFlags = [["json", None, "Print JSON for scripts."]]


class _AddKeyOptions(_Interspersed):
    synopsis = "[--label LABEL] [--key sk-...] [--provider openai|anthropic]"
    optParameters = [
        ["label", None, None, "The account's label (prompted for when missing)."],
        ["key", None, None, "The API key (prompted for when missing; prefer the prompt)."],
        ["provider", None, "openai",
         "Whose key it is: openai (for Codex) or anthropic (for Claude Code)."],
    ]


class _ImportOptions(usage.Options):
    synopsis = ""


class _SwitchOptions(_Interspersed):
    synopsis = "<account> [--force]"
    optFlags = [["force", None, "Switch even to an account that reached its usage limit."]]

    def parseArgs(self, selector: str) -> None:  # type: ignore[override]
        self["selector"] = selector


class _GuiSwitchOptions(_SwitchOptions):
    synopsis = "<account> [--force] [--no-restart-gui]"
    optFlags = [
        ["force", None, "Switch even to an account that reached its usage limit."],
        ["no-restart-gui", None, "Do not restart Codex.app."],
    ]

    def opt_no_restart_codex_gui(self) -> None:
        """
        Same as --no-restart-gui.
        """
        self["no-restart-gui"] = 1


class _RemoveOptions(_Interspersed):
    synopsis = "<account>"

    def parseArgs(self, selector: str) -> None:  # type: ignore[override]
        self["selector"] = selector


class _AddOptions(_Interspersed):
    synopsis = "[--device-auth]"
    optFlags = [["device-auth", None, "Sign in with a device code instead of a browser."]]


class _StatusOptions(_Interspersed):
    synopsis = "[--json]"
    optFlags = [["json", None, "Print JSON for scripts."]]
    optParameters = [
        ["usage-url", None, DEFAULT_USAGE_URL,
         "The ChatGPT usage endpoint."],
        ["token-url", None, DEFAULT_TOKEN_URL,
         "The OAuth token endpoint (for expired logins)."],
    ]


class _AddAdminKeyOptions(_Interspersed):
    synopsis = "[--label L --key sk-admin-...]"
    optParameters = [
        ["label", None, None, "The key's label (prompted for when missing)."],
        ["key", None, None, "The admin key (prompted for when missing; prefer the prompt)."],
        ["openai-url", None, DEFAULT_OPENAI_UPSTREAM, "The OpenAI API base URL."],
    ]


class _AdminKeysOptions(usage.Options):
    synopsis = ""


class _RemoveAdminKeyOptions(_Interspersed):
    synopsis = "<label>"

    def parseArgs(self, label: str) -> None:  # type: ignore[override]
        self["label"] = label


class _UsageOptions(_Interspersed):
    synopsis = "[days]"
    optParameters = [["openai-url", None, DEFAULT_OPENAI_UPSTREAM, "The OpenAI API base URL."]]

    def parseArgs(self, days: str = "30") -> None:
        if not days.isdigit() or not 1 <= int(days) <= 30:
            raise usage.UsageError("days must be 1..30")
        self["days"] = int(days)


class _AttachOptions(_Interspersed):
    synopsis = "<api-key-label> [--project-id ID|NAME|none]"
    optParameters = [
        ["project-id", None, None, "The project (id or name), or none/org for org-wide."],
        ["openai-url", None, DEFAULT_OPENAI_UPSTREAM, "The OpenAI API base URL."],
    ]

    def parseArgs(self, label: str) -> None:  # type: ignore[override]
        self["label"] = label


class _GeminiList(usage.Options):
    synopsis = ""


class _GeminiOptions(usage.Options):
    synopsis = "[list]"
    subCommands: list[SubCommand] = [
        ("list", None, _GeminiList, "List Gemini profiles."),
        ("ls", None, _GeminiList, "Same as list."),
        ("status", None, _GeminiList, "Same as list."),
    ]


class CxOptions(usage.Options):
    """
    ``cx``: the account manager.
    """

    synopsis = "<command> [options]"
    optParameters = [
        ["accounts-dir", None, DEFAULT_ACCOUNTS_DIR, "The cx account store."],
        ["state-dir", None, "~/.subrouter", "The daemon's state (for exhaustion marks)."],
    ]
    subCommands: list[SubCommand] = [
        ("list", None, _ListOptions, "List the stored accounts (alias: ls)."),
        ("ls", None, _ListOptions, "Same as list."),
        ("add-key", None, _AddKeyOptions, "Add an API-key account (alias: add-api-key)."),
        ("add-api-key", None, _AddKeyOptions, "Same as add-key."),
        ("import", None, _ImportOptions, "Import the login in $CODEX_HOME/auth.json."),
        ("switch", None, _SwitchOptions, "Make an account the active one (alias: use)."),
        ("use", None, _SwitchOptions, "Same as switch."),
        ("gui-switch", None, _GuiSwitchOptions,
         "Switch, then restart Codex.app (macOS; alias: gui-use)."),
        ("gui-use", None, _GuiSwitchOptions, "Same as gui-switch."),
        ("remove", None, _RemoveOptions, "Delete an account from the store (alias: rm)."),
        ("rm", None, _RemoveOptions, "Same as remove."),
        ("add", None, _AddOptions, "Sign in with `codex login` and store the login."),
        ("status", None, _StatusOptions, "Each account's plan, usage, headroom and reset."),
        ("add-admin-key", None, _AddAdminKeyOptions, "Store an OpenAI admin key (validated)."),
        ("admin-keys", None, _AdminKeysOptions, "List admin keys, masked (alias: "
         "list-admin-keys)."),
        ("list-admin-keys", None, _AdminKeysOptions, "Same as admin-keys."),
        ("remove-admin-key", None, _RemoveAdminKeyOptions, "Delete an admin key."),
        ("usage", None, _UsageOptions, "API-key spend over the last days (admin keys)."),
        ("attach-project", None, _AttachOptions, "Tie an API key to an OpenAI project."),
        ("gemini", None, _GeminiOptions, "Gemini profiles (a scaffold: list only)."),
        ("claude", None, ClaudeOptions, "Claude Code profiles (CLAUDE_CONFIG_DIR)."),
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            # no command: the interactive view (rank, show, offer a switch)
            self.subCommand = "interactive"
            self.subOptions = _StatusOptions()
            self.subOptions.parseOptions([])


class Streams:
    """
    Where a command reads and writes; swapped in tests.
    """

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None,
                 stdin: IO[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.stdin = stdin or sys.stdin
        self.environ = os.environ if environ is None else environ


def run_cx(options: CxOptions, streams: Streams | None = None) -> int:
    """
    Run the chosen command; return its exit status (errors print
    ``cx: <reason>`` and give 1).
    """
    streams = streams or Streams()
    store = expand_path(options["accounts-dir"])
    command = options.subCommand
    sub = options.subOptions
    try:
        if command in ("list", "ls"):
            return _list(store, sub, streams)
        if command in ("add-key", "add-api-key"):
            return _add_key(store, sub, streams)
        if command == "import":
            return _import(store, streams)
        if command in ("switch", "use", "gui-switch", "gui-use"):
            code = _switch(store, expand_path(options["state-dir"]), sub, streams,
                           gui=command.startswith("gui") and not sub["no-restart-gui"])
            return code
        if command == "add":
            return _add(store, sub, streams)
        if command == "status":
            return _status(store, sub, streams)
        if command == "interactive":
            return _interactive(store, expand_path(options["state-dir"]), sub, streams)
        if command == "add-admin-key":
            return _add_admin_key(store, sub, streams)
        if command in ("admin-keys", "list-admin-keys"):
            return _admin_keys(store, streams)
        if command == "remove-admin-key":
            return _remove_admin_key(store, sub["label"], streams)
        if command == "gemini":
            return _gemini(store, streams)
        if command == "usage":
            return _usage(store, sub, streams)
        if command == "attach-project":
            return _attach(store, sub, streams)
        if command == "claude":
            from subrouter.cli import claude

            return claude.run(store, sub, streams)
        if command in ("remove", "rm"):
            account = manage.find(store, sub["selector"])
            manage.remove(store, account)
            streams.stdout.write(f"Removed account: {account.id}\n")
            return 0
    except manage.StoreError as e:
        streams.stderr.write(f"cx: {e}\n")
        return 1
    raise usage.UsageError(f"unknown command {command}")


def _display(account: Account) -> str:
    if account.kind is AccountKind.APIKEY:
        kind = "anthropic key" if account.provider == ANTHROPIC else "api key"
        return f"{account.id.removeprefix('apikey:')} ({kind})"
    return account.id


def _added(account: Account) -> str:
    document = manage.read_json_object(account.source) or {}
    added = str(document.get("addedAt") or "")
    return added[:10] if len(added) >= 10 and added[4] == "-" else added


def _list(store: str, sub: usage.Options, streams: Streams) -> int:
    accounts, skipped = manage.load_all(store)
    auth_path = codex_auth_path(dict(streams.environ))
    active = manage.active_account_id(auth_path, accounts)
    if sub["json"]:
        rows = [
            {"id": a.id, "kind": a.kind.value, "plan": a.plan, "active": a.id == active,
             "added": _added(a), "problem": a.problem}
            for a in accounts
        ]
        streams.stdout.write(json.dumps(rows, indent=2) + "\n")
    elif not accounts:
        streams.stdout.write("No accounts configured. Run 'subrouter add' to add one.\n")
    else:
        out = ["", *(
            f"  {_display(a)}{' *' if a.id == active else ''} (added {_added(a)})"
            for a in accounts
        ), "", f"* = currently active in {auth_path}"]
        streams.stdout.write("\n".join(out) + "\n")
    for path, error in sorted(skipped.items()):
        streams.stderr.write(f"cx: skipped {path}: {error}\n")
    return 0


def _prompt(streams: Streams, question: str) -> str:
    streams.stdout.write(question)
    streams.stdout.flush()
    return streams.stdin.readline().strip()


def _add_key(store: str, sub: usage.Options, streams: Streams) -> int:
    provider = provider_of(sub["provider"])
    if provider is None:
        raise manage.StoreError(f"--provider: {sub['provider']!r} is not openai or anthropic")
    anthropic = provider == ANTHROPIC
    _sync_active_to_store(store, streams)
    label = (sub["label"] or _prompt(streams, "Label (e.g. work, personal): ")).strip()
    if not label:
        raise manage.StoreError("a label is required")
    prefix = "sk-ant-" if anthropic else "sk-"
    key = (sub["key"] or _prompt(streams, f"API key ({prefix}...): ")).strip()
    if not key.startswith(prefix):
        raise manage.StoreError(
            f"an {'Anthropic' if anthropic else 'OpenAI'} API key starts with {prefix}"
        )
    account_id = f"apikey:{label}"
    accounts, _ = manage.load_all(store)
    for existing in accounts:
        if existing.id.lower() == account_id.lower() and existing.provider != provider:
            raise manage.StoreError(
                f"the label {label!r} is taken by an {existing.provider} key; choose another"
            )
    if anthropic:
        _, created = manage.save_auth(
            store, account_id, {"auth_mode": "apikey", "ANTHROPIC_API_KEY": key},
            extra={"provider": ANTHROPIC},
        )
    else:
        _, created = manage.save_auth(
            store, account_id, {"auth_mode": "apikey", "OPENAI_API_KEY": key}
        )
    verb = "Added" if created else "Updated"
    kind = "Anthropic API key" if anthropic else "API key"
    streams.stdout.write(f"{verb} {kind} account: {label}\n")
    return 0


def _import(store: str, streams: Streams) -> int:
    path = codex_auth_path(dict(streams.environ))
    active = manage.read_json_object(path)
    token_block = (active or {}).get("tokens")
    id_token = token_block.get("id_token") if isinstance(token_block, dict) else None
    if not id_token:
        raise manage.StoreError(f"no active Codex OAuth auth found in {path}")
    from subrouter.accounts import tokens

    email = tokens.email_from_id_token(id_token)
    if not email:
        raise manage.StoreError(f"the login in {path} names no email")
    _, created = manage.save_auth(store, email, active or {})
    streams.stdout.write(
        f"Imported account: {email}\n" if created else f"Updated existing account: {email}\n"
    )
    return 0


def _exhaustion(state_dir: str, account_id: str) -> str | None:
    """
    The daemon's exhaustion mark for an account, if one is in force.
    """
    import time

    try:
        state = manage.read_json_object(os.path.join(state_dir, "state.json")) or {}
    except manage.StoreError:
        return None
    marks = state.get("exhausted")
    mark = marks.get(account_id) if isinstance(marks, dict) else None
    if not isinstance(mark, dict):
        return None
    until = mark.get("until")
    if not isinstance(until, (int, float)) or until <= time.time():
        return None
    minutes = int((until - time.time()) // 60)
    return f"{mark.get('reason') or 'usage limit reached'}; resets in about {minutes} min"


def _switch(store: str, state_dir: str, sub: usage.Options, streams: Streams,
            gui: bool = False) -> int:
    _sync_active_to_store(store, streams)
    account = manage.find(store, sub["selector"])
    if account.provider != OPENAI:
        raise manage.StoreError(
            f"cannot switch to {account.id}: it is an Anthropic key, which Codex cannot use "
            "(Claude Code reaches it through `subrouter claude`)"
        )
    if account.problem:
        raise manage.StoreError(f"cannot switch to {account.id}: {account.problem}")
    exhausted = _exhaustion(state_dir, account.id)
    if exhausted and not sub["force"]:
        raise manage.StoreError(
            f"cannot switch to {account.id}: account is exhausted ({exhausted}); "
            "use --force to switch anyway"
        )
    environ = dict(streams.environ)
    if account.kind is AccountKind.OAUTH and account.expires_at is not None:
        import time

        if account.expires_at - time.time() < 60:
            _refresh_before_switch(store, account, sub, streams)
    from subrouter.accounts.refresh import lock_path_for
    from subrouter.files import locked

    notes: list[tuple[str, str]] = []
    # under the account's lock: a refresh by the daemon is either finished
    # (its new tokens are what we copy) or waits for us and then updates the
    # files we wrote; a rotated refresh token is never lost
    with locked(lock_path_for(account.source)):
        manage.write_codex_auth(codex_auth_path(environ), manage.codex_auth_for(account))
        for tool, sync in (("OpenCode", manage.sync_opencode), ("pi", manage.sync_pi)):
            try:
                notes.append(("out", f"Synced {tool} auth: {sync(account, environ)}"))
            except (manage.StoreError, OSError) as e:
                notes.append(("err", f"Warning: {tool} auth sync failed: {e}"))
    streams.stdout.write(f"Switched to {account.id}\n")
    for where, text in notes:
        (streams.stdout if where == "out" else streams.stderr).write(text + "\n")
    if gui:
        _restart_codex_app(streams)
    else:
        streams.stdout.write(
            "Restart any running Codex, OpenCode, or pi sessions to use the new account.\n"
        )
    return 0


def _refresh_before_switch(store: str, account: Account, sub: usage.Options,
                           streams: Streams) -> None:
    """
    Refresh an access token about to expire before handing it to Codex, with
    the daemon's refresher (under the account's lock).
    """
    from twisted.internet.threads import deferToThread

    from subrouter.accounts.refresh import TokenRefresher
    from subrouter.accounts.store import AccountStore
    from subrouter.cli.fetch import run_async

    token_url = streams.environ.get("SUBROUTER_TOKEN_URL") or DEFAULT_TOKEN_URL

    async def refresh() -> None:
        from twisted.internet import reactor

        from subrouter.cli.fetch import command_http

        http, pool = command_http(streams.environ)
        accounts = AccountStore(store, deferToThread)
        accounts.scan_now()
        refresher = TokenRefresher(store=accounts, http=http, token_url=token_url,
                                   clock=reactor, run_blocking=deferToThread,
                                   codex_auth=codex_auth_path(dict(streams.environ)))
        try:
            await refresher.ensure_fresh(account)
        finally:
            await pool.closeCachedConnections()

    try:
        run_async(refresh)
    except Exception as e:
        streams.stderr.write(f"Warning: token refresh failed, using cached tokens: {e}\n")


def _restart_codex_app(streams: Streams) -> None:
    """
    Restart Codex.app so the desktop app uses the new account (macOS only;
    failures are warnings).
    """
    import subprocess
    import time

    if sys.platform != "darwin":
        streams.stdout.write("Codex.app restart is only supported on macOS.\n")
        return
    try:
        if subprocess.run(["pgrep", "-x", "Codex"], capture_output=True).returncode != 0:
            streams.stdout.write(
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
        streams.stdout.write("Restarted Codex.app so the GUI uses the new account.\n")
    except (OSError, subprocess.CalledProcessError) as e:
        streams.stderr.write(f"Warning: Restart Codex.app manually ({e})\n")


def _sync_active_to_store(store: str, streams: Streams) -> None:
    """
    Copy the active Codex login back into its stored record, unless the
    stored one is newer: Codex may have rotated its refresh token since.
    """
    from subrouter.accounts import tokens
    from subrouter.accounts.refresh import lock_path_for
    from subrouter.files import atomic_write, dump_json, locked

    path = codex_auth_path(dict(streams.environ))
    try:
        active = manage.read_json_object(path)
    except manage.StoreError:
        return
    token_block = (active or {}).get("tokens")
    if not isinstance(token_block, dict):
        return
    email = tokens.email_from_id_token(token_block.get("id_token"))
    if not email:
        return
    accounts, _ = manage.load_all(store)
    stored = next((a for a in accounts if a.id.lower() == email.lower()), None)
    if stored is None or stored.kind is not AccountKind.OAUTH:
        return
    with locked(lock_path_for(stored.source)):
        document = manage.read_json_object(stored.source) or {}
        auth = document.get("auth") if isinstance(document.get("auth"), dict) else {}
        old = auth.get("tokens") if isinstance(auth, dict) else None
        old_tokens = old if isinstance(old, dict) else {}
        if old_tokens.get("refresh_token") == token_block.get("refresh_token") and \
                old_tokens.get("access_token") == token_block.get("access_token"):
            return
        incoming = tokens.expires_at(token_block.get("access_token"))
        current = tokens.expires_at(old_tokens.get("access_token"))
        if current is not None and (incoming is None or current > incoming):
            return  # the store's login is newer
        document["auth"] = active
        atomic_write(stored.source, dump_json(document))



def _add(store: str, sub: usage.Options, streams: Streams) -> int:
    """
    Run the real ``codex login`` under a temporary ``CODEX_HOME`` and import
    what it wrote: the active Codex login is never touched.
    """
    import shutil
    import subprocess
    import tempfile

    from subrouter.accounts import tokens

    binary = streams.environ.get("SUBROUTER_CODEX_BIN", "").strip() or "codex"
    home = tempfile.mkdtemp(prefix="cx-login-")
    try:
        env = dict(streams.environ, CODEX_HOME=home)
        argv = [binary, "login", *(["--device-auth"] if sub["device-auth"] else [])]
        streams.stdout.write("Opening Codex OAuth login...\n")
        streams.stdout.flush()
        try:
            result = subprocess.run(argv, env=env, check=False)
        except FileNotFoundError:
            raise manage.StoreError(
                f"cannot run {binary!r}: install Codex (npm install -g @openai/codex) "
                "or set SUBROUTER_CODEX_BIN"
            ) from None
        if result.returncode != 0:
            raise manage.StoreError(f"codex login failed (exit {result.returncode})")
        auth = manage.read_json_object(os.path.join(home, "auth.json"))
        token_block = (auth or {}).get("tokens")
        id_token = token_block.get("id_token") if isinstance(token_block, dict) else None
        email = tokens.email_from_id_token(id_token) if id_token else None
        if not auth or not email:
            raise manage.StoreError("codex login wrote no ChatGPT login with an email")
        _, created = manage.save_auth(store, email, auth)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    streams.stdout.write(f"\n{'Added' if created else 'Updated'} account: {email}\n")
    streams.stdout.write("Local Codex auth was left unchanged.\n")
    return 0


def _status(store: str, sub: usage.Options, streams: Streams) -> int:
    accounts, skipped = manage.load_all(store)
    if not accounts:
        streams.stdout.write("No accounts configured. Run 'subrouter add' to add one.\n")
        return 0
    logins = [a for a in accounts if a.kind is AccountKind.OAUTH and not a.problem]
    tty = hasattr(streams.stderr, "isatty") and streams.stderr.isatty()
    if tty and logins:
        streams.stderr.write(f"Fetching usage for {len(logins)} account(s)...\n")
    from subrouter.cli.fetch import fetch_all

    results = fetch_all(store, logins, *_urls(sub, streams), dict(streams.environ))
    auth_path = codex_auth_path(dict(streams.environ))
    active = manage.active_account_id(auth_path, accounts)
    rows = [_status_row(a, results.get(a.id), a.id == active) for a in accounts]
    if sub["json"]:
        streams.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        colour = _colour_wanted(streams)
        for row in rows:
            streams.stdout.write(_render(row, colour))
    for path, error in sorted(skipped.items()):
        streams.stderr.write(f"cx: skipped {path}: {error}\n")
    return 0


def _interactive(store: str, state_dir: str, sub: usage.Options, streams: Streams) -> int:
    """
    ``cx`` with no command: every account ranked (most headroom first),
    numbered, and a prompt to switch to one.
    """
    accounts, _ = manage.load_all(store)
    if not accounts:
        streams.stdout.write("No accounts configured. Run 'subrouter add' to add one.\n")
        return 0
    from subrouter.cli.fetch import fetch_all

    logins = [a for a in accounts if a.kind is AccountKind.OAUTH and not a.problem]
    results = fetch_all(store, logins, *_urls(sub, streams), dict(streams.environ))
    active = manage.active_account_id(codex_auth_path(dict(streams.environ)), accounts)
    rows = [_status_row(a, results.get(a.id), a.id == active) for a in accounts]

    def headroom(row: dict[str, object]) -> float:
        value = row.get("headroom")
        if isinstance(value, (int, float)):
            return float(value)
        return 0.5 if row["kind"] == "apikey" else 0.0

    rows.sort(key=lambda r: (-headroom(r), str(r["id"])))
    colour = _colour_wanted(streams)
    for number, row in enumerate(rows, 1):
        streams.stdout.write(f"{number}) " + _render(row, colour))
    answer = _prompt(streams, "Switch to (#): ")
    if not answer:
        return 0
    if answer.isdigit():
        index = int(answer)
        if not 1 <= index <= len(rows):
            raise manage.StoreError(f"no row numbered {index}")
        selector = str(rows[index - 1]["id"])
        if headroom(rows[index - 1]) <= 0 and rows[index - 1]["kind"] == "oauth":
            raise manage.StoreError(f"cannot switch to {selector}: it has no headroom left")
    else:
        selector = answer
    switch = _SwitchOptions()
    switch.parseOptions([selector])
    return _switch(store, state_dir, switch, streams)


def _urls(sub: usage.Options, streams: Streams) -> tuple[str, str]:
    """
    The usage and token URLs: the options, or ``SUBROUTER_USAGE_URL`` /
    ``SUBROUTER_TOKEN_URL`` where the options were left at their defaults.
    """
    defaults = {p[0]: p[2] for p in _StatusOptions.optParameters}
    found = []
    for option, variable in (("usage-url", "SUBROUTER_USAGE_URL"),
                             ("token-url", "SUBROUTER_TOKEN_URL")):
        value = sub[option]
        if value == defaults[option] and streams.environ.get(variable):
            value = streams.environ[variable]
        found.append(value)
    return found[0], found[1]


def _status_row(account: Account, result: dict[str, object] | None, active: bool
                ) -> dict[str, object]:
    row: dict[str, object] = {
        "id": account.id,
        "kind": account.kind.value,
        "provider": account.provider,
        "plan": account.plan,
        "active": active,
        "windows": [],
        "headroom": None,
        "error": account.problem,
    }
    if result is not None:
        row.update(result)
    return row


def _colour_wanted(streams: Streams) -> bool:
    env = streams.environ
    if env.get("CX_NO_COLOR") is not None or env.get("TERM") == "dumb":
        return False
    force = env.get("FORCE_COLOR", "")
    if force and force != "0":
        return True
    return bool(hasattr(streams.stdout, "isatty") and streams.stdout.isatty())


def _bar(used: float, width: int = 20) -> str:
    filled = max(0, min(width, round(used / 100 * width)))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def _render(row: dict[str, object], colour: bool) -> str:
    name = str(row["id"])
    if row["kind"] == "apikey":
        kind = "anthropic key" if row.get("provider") == ANTHROPIC else "api key"
        name = f"{name.removeprefix('apikey:')} ({kind})"
    plan = f" [{row['plan']}]" if row.get("plan") else ""
    active = " (active)" if row.get("active") else ""
    lines = [f"{name}{plan}{active}"]
    windows = row.get("windows") or []
    assert isinstance(windows, list)
    for window in windows:
        used = float(window["used_percent"])
        label = {"primary": "5h", "secondary": "weekly"}.get(window["name"], window["name"])
        resets = window.get("resets_in")
        when = f", resets in {_duration(int(resets))}" if resets else ""
        bar = _bar(used)
        if colour:
            code = "31" if used >= 90 else "33" if used >= 60 else "32"
            bar = f"\x1b[{code}m{bar}\x1b[0m"
        lines.append(f"  {label:<7}{bar} {used:5.1f}% used{when}")
    headroom = row.get("headroom")
    if isinstance(headroom, (int, float)):
        lines.append(f"  headroom {headroom * 100:.0f}%")
    if row.get("error"):
        lines.append(f"  ({row['error']})")
    return "\n".join(lines) + "\n\n"


def _duration(seconds: int) -> str:
    hours, rest = divmod(max(seconds, 0), 3600)
    days, hours = divmod(hours, 24)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


_SAFE_LABEL = re.compile(r"[^A-Za-z0-9._-]")


def _admin_path(store: str, label: str) -> str:
    name = _SAFE_LABEL.sub("_", label)
    if not name or name.startswith("."):
        raise manage.StoreError(f"{label!r} cannot be an admin key label")
    return os.path.join(store, "admin-keys", name + ".json")


def mask(key: str) -> str:
    """
    A key as ``cx`` shows it: the first 12 and last 6 characters of a long
    key, nothing of a short one.
    """
    return f"{key[:12]}***{key[-6:]}" if len(key) > 18 else "***"


def _add_admin_key(store: str, sub: usage.Options, streams: Streams) -> int:
    label = (sub["label"] or _prompt(streams, "Label (e.g. work): ")).strip()
    if not label:
        raise manage.StoreError("a label is required")
    key = (sub["key"] or _prompt(streams, "Admin key (sk-admin-...): ")).strip()
    if not key.startswith("sk-admin-"):
        raise manage.StoreError("an admin key starts with sk-admin-")
    path = _admin_path(store, label)
    streams.stdout.write("Validating with OpenAI... ")
    streams.stdout.flush()
    from subrouter.cli.fetch import validate_admin_key

    problem = validate_admin_key(sub["openai-url"], key, dict(streams.environ))
    if problem is not None:
        streams.stdout.write("failed\n")
        raise manage.StoreError(f"the admin key was not accepted: {problem}")
    streams.stdout.write("ok\n")
    from subrouter.files import atomic_write, dump_json, ensure_private_directory

    ensure_private_directory(os.path.dirname(path))
    atomic_write(path, dump_json({"label": label, "key": key, "addedAt": rfc3339()}))
    streams.stdout.write(f"Added admin key: {label}\n")
    return 0


def _admin_keys(store: str, streams: Streams) -> int:
    folder = os.path.join(store, "admin-keys")
    rows = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            document = manage.read_json_object(path) or {}
        except manage.StoreError as e:
            streams.stderr.write(f"cx: skipped {path}: {e}\n")
            continue
        key = str(document.get("key") or "")
        added = str(document.get("addedAt") or "")[:10]
        rows.append(f"  {document.get('label') or name[:-5]}  {mask(key)}  added {added}")
    if not rows:
        streams.stdout.write("No admin keys. Run 'subrouter add-admin-key' to add one.\n")
    else:
        streams.stdout.write("\n" + "\n".join(rows) + "\n\n")
    return 0


def _remove_admin_key(store: str, label: str, streams: Streams) -> int:
    path = _admin_path(store, label)
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise manage.StoreError(f'no admin key labeled "{label}"') from None
    streams.stdout.write(f"Removed admin key: {label}\n")
    return 0


def _gemini(store: str, streams: Streams) -> int:
    registry = manage.read_json_object(os.path.join(store, "gemini.json")) or {}
    profiles = registry.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        streams.stdout.write("No Gemini profiles configured yet.\n")
        return 0
    active = registry.get("active")
    for name in sorted(profiles):
        profile = profiles[name] if isinstance(profiles[name], dict) else {}
        star = " *" if name == active else ""
        streams.stdout.write(f"  {name}{star} (added {str(profile.get('createdAt', ''))[:10]})\n")
    return 0


def _admin_keys_map(store: str) -> dict[str, str]:
    folder = os.path.join(store, "admin-keys")
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            document = manage.read_json_object(os.path.join(folder, name)) or {}
        except manage.StoreError:
            continue
        key = document.get("key")
        if isinstance(key, str) and key:
            found[str(document.get("label") or name[:-5])] = key
    return found


def _admin_for(account: Account, admins: dict[str, str]) -> str:
    document = manage.read_json_object(account.source) or {}
    chosen = document.get("adminKeyLabel")
    if isinstance(chosen, str) and chosen in admins:
        return chosen
    return sorted(admins)[0]


def _usage(store: str, sub: usage.Options, streams: Streams) -> int:
    import time

    from subrouter.accounts import spend
    from subrouter.cli.fetch import run_async
    from subrouter.files import atomic_write, dump_json, ensure_private_directory

    accounts, _ = manage.load_all(store)
    keys = [a for a in accounts if a.kind is AccountKind.APIKEY and a.provider == OPENAI]
    if not keys:
        streams.stdout.write("No API-key accounts. Run 'subrouter add-key' first.\n")
        return 0
    admins = _admin_keys_map(store)
    if not admins:
        raise manage.StoreError("no admin keys. Run 'subrouter add-admin-key' first")
    days = sub["days"]
    base = sub["openai-url"]
    streams.stdout.write(f"Fetching {days}-day usage for {len(keys)} API-key account(s)...\n")
    plans = []
    for account in keys:
        document = manage.read_json_object(account.source) or {}
        project = document.get("projectId") if isinstance(document.get("projectId"), str) else None
        plans.append((account, _admin_for(account, admins), project,
                      document.get("projectName")))

    async def fetch_all() -> list[Any]:
        from twisted.internet import reactor
        from twisted.internet.defer import Deferred, DeferredList

        from subrouter.cli.fetch import command_http

        http, pool = command_http(streams.environ)
        start = int(time.time()) - days * 86400

        async def one(admin: str, project: str | None) -> Any:
            scope = f"&project_ids[]={project}" if project else ""
            query = f"?start_time={start}&bucket_width=1d&limit={days}{scope}"
            costs, usage_ = await DeferredList([
                Deferred.fromCoroutine(spend.get_json(
                    http, reactor, base, "/v1/organization/costs" + query, admins[admin])),
                Deferred.fromCoroutine(spend.get_json(
                    http, reactor, base,
                    "/v1/organization/usage/completions" + query + "&group_by[]=model",
                    admins[admin])),
            ], consumeErrors=True)
            for ok, value in (costs, usage_):
                if not ok:
                    raise spend.SpendError(str(value.value))
            return spend.summarise(costs[1], usage_[1], time.time())

        try:
            results = await DeferredList(
                [Deferred.fromCoroutine(one(admin, project)) for _, admin, project, _ in plans],
                consumeErrors=True,
            )
        finally:
            await pool.closeCachedConnections()
        return list(results)

    started = time.monotonic()
    results = run_async(fetch_all)
    took = int(time.monotonic() - started)
    failures = 0
    blocks = []
    for (account, admin, project, project_name), (ok, value) in zip(plans, results,
                                                                     strict=True):
        label = account.id.removeprefix("apikey:")
        streams.stdout.write(f"  {label} via {admin}: {'ok' if ok else 'failed'} ({took}s)\n")
        if not ok:
            failures += 1
            streams.stderr.write(f"cx: {label}: {value.value}\n")
            continue
        snapshot = dict(value, adminKeyLabel=admin, projectId=project,
                        projectName=project_name, fetchedAt=rfc3339())
        cache_name = f"{_SAFE_LABEL.sub('_', admin)}__{_SAFE_LABEL.sub('_', project or 'all')}"
        cache = os.path.join(store, "usage-cache", cache_name + ".json")
        ensure_private_directory(os.path.dirname(cache))
        atomic_write(cache, dump_json({"fetchedAt": snapshot["fetchedAt"], "snapshot": snapshot}))
        scope = f"proj {project_name or project}" if project else "org-wide"
        top = snapshot.get("topModel")
        lines = [
            f"{label} (api key)",
            f"  scope: {scope} via {admin}, just now",
            f"  today: {spend.usd(snapshot['todayUsd'])} "
            f"({spend.count(snapshot['todayTokens'])} tok)",
            f"  7d: {spend.usd(snapshot['weekUsd'])} ({spend.count(snapshot['weekTokens'])} tok)",
            f"  {days}d: {spend.usd(snapshot['monthUsd'])} "
            f"({spend.count(snapshot['monthTokens'])} tok)",
        ]
        if top:
            lines.append(f"  top model: {top['model']} ({spend.count(top['tokens'])} tok {days}d)")
        blocks.append("\n".join(lines))
    if blocks:
        streams.stdout.write("\n" + "\n\n".join(blocks) + "\n")
    return 1 if failures else 0


def _attach(store: str, sub: usage.Options, streams: Streams) -> int:
    from subrouter.accounts import spend
    from subrouter.cli.fetch import run_async
    from subrouter.files import atomic_write, dump_json

    account = manage.find(store, sub["label"])
    if account.kind is not AccountKind.APIKEY or account.provider != OPENAI:
        raise manage.StoreError(f"{account.id} is not an OpenAI API-key account")
    admins = _admin_keys_map(store)
    if not admins:
        raise manage.StoreError("no admin keys. Run 'subrouter add-admin-key' first")
    admin = _admin_for(account, admins)
    choice = sub["project-id"]
    project: dict[str, Any] | None = None
    if choice not in ("none", "org"):
        async def listing() -> list[dict[str, Any]]:
            from twisted.internet import reactor

            from subrouter.cli.fetch import command_http

            http, pool = command_http(streams.environ)
            try:
                return await spend.projects(http, reactor, sub["openai-url"], admins[admin])
            finally:
                await pool.closeCachedConnections()

        found: list[dict[str, Any]] = run_async(listing)
        if choice is None:
            for number, p in enumerate(found, 1):
                streams.stdout.write(f"  {number}) {p.get('name')}  {p.get('id')}\n")
            streams.stdout.write("  0) <none / org-wide>\n")
            answer = _prompt(streams, "Pick project (#): ")
            if not answer.isdigit() or int(answer) > len(found):
                raise manage.StoreError(f"no project numbered {answer!r}")
            project = found[int(answer) - 1] if int(answer) else None
        else:
            matches = [p for p in found if choice in (p.get("id"), p.get("name"))]
            if not matches:
                raise manage.StoreError(f'no project matching "{choice}"')
            project = matches[0]
    from subrouter.accounts.refresh import lock_path_for
    from subrouter.files import locked

    with locked(lock_path_for(account.source)):
        document = manage.read_json_object(account.source) or {}
        if project is None:
            document.pop("projectId", None)
            document.pop("projectName", None)
        else:
            document["projectId"] = project.get("id")
            document["projectName"] = project.get("name")
        document["adminKeyLabel"] = admin
        atomic_write(account.source, dump_json(document))
    label = account.id.removeprefix("apikey:")
    name = project.get("name") if project else "<org-wide>"
    streams.stdout.write(f"Updated {label}: project={name} via admin={admin}\n")
    return 0
