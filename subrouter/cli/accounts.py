# -*- test-case-name: tests.test_cx -*-
"""
``cx add``, ``cx add-key``, ``cx import`` and ``cx remove``: putting
accounts into the store and taking them out.
"""

from __future__ import annotations

import os
from typing import Any

from subrouter.accounts import activate as manage
from subrouter.accounts.refresh import codex_auth_path
from subrouter.accounts.store import AccountKind, header_value_problem, provider_of
from subrouter.cli.console import Context, confirm, prompt, prompt_secret
from subrouter.cli.dispatch import Command, CommandOptions
from subrouter.cli.entry import CommandFailed
from subrouter.upstream.routing import ANTHROPIC


class AddOptions(CommandOptions):
    summary = ("Sign in with `codex login` (in a private CODEX_HOME) and store the login; "
               "your active Codex login is left as it was.")
    optFlags = [["device-auth", None, "Sign in with a device code instead of a browser."]]


class AddKeyOptions(CommandOptions):
    summary = ("Store an OpenAI API key (for Codex) or, with --provider anthropic, an "
               "Anthropic API key (for Claude Code) as the account apikey:<label>.")
    optParameters = [
        ["label", None, None, "The account's label (asked when missing)."],
        ["key", None, None, "The API key (asked, hidden, when missing; prefer that)."],
        ["provider", None, "openai",
         "Whose key it is: openai (for Codex) or anthropic (for Claude Code)."],
    ]
    optFlags = [["force", None, "Replace the key of an existing label without asking."]]


class ImportOptions(CommandOptions):
    summary = "Store the login that is in $CODEX_HOME/auth.json, keeping every field."


class RemoveOptions(CommandOptions):
    summary = "Delete an account from the store (asks first on a terminal)."
    arguments = "<account>"
    optFlags = [["yes", "y", "Do not ask for confirmation."]]


def sync_active_to_store(ctx: Context) -> None:
    """
    Copy the active Codex login back into its stored record, unless the
    stored one is newer: Codex may have rotated its refresh token since.
    """
    from subrouter.accounts import tokens
    from subrouter.accounts.refresh import lock_path_for
    from subrouter.files import atomic_write, dump_json, locked

    path = codex_auth_path(dict(ctx.environ))
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
    accounts, _ = manage.load_all(ctx.store)
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


def add_key(ctx: Context, options: Any) -> int:
    streams = ctx.streams
    provider = provider_of(options["provider"])
    if provider is None:
        raise CommandFailed(f"--provider: {options['provider']!r} is not openai or anthropic")
    anthropic = provider == ANTHROPIC
    sync_active_to_store(ctx)
    label = (options["label"] or prompt(streams, "Label (e.g. work, personal): ")).strip()
    if not label:
        raise CommandFailed("a label is required")
    account_id = f"apikey:{label}"
    accounts, _ = manage.load_all(ctx.store)
    for existing in accounts:
        if existing.id.lower() == account_id.lower() and existing.provider != provider:
            raise CommandFailed(
                f"the label {label!r} is taken by an {existing.provider} key; choose another"
            )
    exists = any(a.id.lower() == account_id.lower() for a in accounts)
    if exists and not options["force"]:
        if not streams.interactive():
            raise CommandFailed(
                f"an API key labeled {label!r} is stored already; add --force to replace it")
    prefix = "sk-ant-" if anthropic else "sk-"
    key = (options["key"] or prompt_secret(streams, f"API key ({prefix}..., hidden): ")).strip()
    if not key.startswith(prefix):
        raise CommandFailed(
            f"an {'Anthropic' if anthropic else 'OpenAI'} API key starts with {prefix}"
        )
    unsendable = header_value_problem(key)
    if unsendable is not None:
        raise CommandFailed(f"the key holds {unsendable}, which cannot go into an HTTP "
                            "header; check what was pasted")
    if exists and not options["force"] and not confirm(
        streams, f"Replace the stored key of {label}?"
    ):
        raise CommandFailed("nothing changed")
    if anthropic:
        _, created = manage.save_auth(
            ctx.store, account_id, {"auth_mode": "apikey", "ANTHROPIC_API_KEY": key},
            extra={"provider": ANTHROPIC},
        )
    else:
        _, created = manage.save_auth(
            ctx.store, account_id, {"auth_mode": "apikey", "OPENAI_API_KEY": key}
        )
    verb = "Added" if created else "Updated"
    kind = "Anthropic API key" if anthropic else "API key"
    streams.say(f"{verb} {kind} account: {label}\n")
    return 0


def import_active(ctx: Context, options: Any) -> int:
    path = codex_auth_path(dict(ctx.environ))
    active = manage.read_json_object(path)
    token_block = (active or {}).get("tokens")
    id_token = token_block.get("id_token") if isinstance(token_block, dict) else None
    if not id_token:
        raise CommandFailed(f"no active Codex OAuth auth found in {path}")
    from subrouter.accounts import tokens

    email = tokens.email_from_id_token(id_token)
    if not email:
        raise CommandFailed(f"the login in {path} names no email")
    _, created = manage.save_auth(ctx.store, email, active or {})
    ctx.streams.say(
        f"Imported account: {email}\n" if created else f"Updated existing account: {email}\n"
    )
    return 0


def remove(ctx: Context, options: Any) -> int:
    streams = ctx.streams
    account = manage.find(ctx.store, options["account"])
    accounts, _ = manage.load_all(ctx.store)
    auth_path = codex_auth_path(dict(ctx.environ))
    active = manage.active_account_id(auth_path, accounts) == account.id
    if active:
        streams.warn(
            f"cx: {account.id} is the active login in {auth_path}: Codex keeps using it "
            "until you `cx switch` to another account\n")
    if streams.interactive() and not options["yes"] and not confirm(
        streams, f"Remove {account.id} from the store?"
    ):
        raise CommandFailed("nothing removed")
    manage.remove(ctx.store, account)
    if manage.read_pin(ctx.state_dir) == account.id:
        manage.clear_pin(ctx.state_dir)
    streams.say(f"Removed account: {account.id}\n")
    return 0


def add(ctx: Context, options: Any) -> int:
    """
    Run the real ``codex login`` under a temporary ``CODEX_HOME`` and import
    what it wrote: the active Codex login is never touched.
    """
    import shutil
    import subprocess
    import tempfile

    from subrouter.accounts import tokens

    streams = ctx.streams
    binary = ctx.environ.get("SUBROUTER_CODEX_BIN", "").strip() or "codex"
    home = tempfile.mkdtemp(prefix="cx-login-")
    try:
        env = dict(ctx.environ, CODEX_HOME=home)
        argv = [binary, "login", *(["--device-auth"] if options["device-auth"] else [])]
        streams.say("Opening Codex OAuth login...\n")
        streams.stdout.flush()
        try:
            result = subprocess.run(argv, env=env, check=False)
        except FileNotFoundError:
            raise CommandFailed(
                f"cannot run {binary!r}: install Codex (npm install -g @openai/codex) "
                "or set SUBROUTER_CODEX_BIN"
            ) from None
        if result.returncode != 0:
            raise CommandFailed(f"codex login failed (exit {result.returncode})")
        auth = manage.read_json_object(os.path.join(home, "auth.json"))
        token_block = (auth or {}).get("tokens")
        id_token = token_block.get("id_token") if isinstance(token_block, dict) else None
        email = tokens.email_from_id_token(id_token) if id_token else None
        if not auth or not email:
            raise CommandFailed("codex login wrote no ChatGPT login with an email")
        _, created = manage.save_auth(ctx.store, email, auth)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    streams.say(f"\n{'Added' if created else 'Updated'} account: {email}\n")
    streams.say("Local Codex auth was left unchanged.\n")
    return 0


COMMANDS = [
    Command("add", AddOptions, "Sign in with `codex login` and store the login.", ("login",),
            run=add),
    Command("add-key", AddKeyOptions, "Store an OpenAI or Anthropic API key.", ("add-api-key",),
            run=add_key),
    Command("import", ImportOptions, "Store the login in $CODEX_HOME/auth.json.",
            run=import_active),
    Command("remove", RemoveOptions, "Delete an account from the store.", ("rm",), run=remove),
]
