# -*- test-case-name: tests.test_cx -*-
"""
The write side of the ``cx`` store, and :func:`activate`: making an account
the one the local agents (Codex, OpenCode, pi) use, for ``cx switch`` and the
daemon's auto-switch alike, and the pin by which ``cx switch`` asks
auto-switch to leave its choice alone. Blocking file work: for commands, or
off the reactor thread.

Every write is atomic and private (0600 files in 0700 folders); account files
are written under their ``cx`` lock file, so a token refresh in the daemon and
a command never lose each other's update. Unknown fields are kept. A corrupt
file is reported by name and never rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Collection, Mapping
from typing import Any

import attrs

from subrouter.accounts import tokens
from subrouter.accounts.refresh import lock_path_for
from subrouter.accounts.store import (
    Account,
    AccountFileError,
    AccountKind,
    filename_for_id,
    parse_account,
    scan_directory,
)
from subrouter.files import atomic_write, dump_json, ensure_private_directory, locked
from subrouter.timefmt import rfc3339


class StoreError(Exception):
    """
    A command cannot do what was asked; the message says why.
    """


def accounts_dir(store: str) -> str:
    return os.path.join(store, "accounts")


def path_for(store: str, account_id: str) -> str:
    """
    Where an account's file goes; refuses ids that would make a hidden file
    or leave the folder.
    """
    name = filename_for_id(account_id.strip())
    if name.startswith(".") or name in (".json", "..json"):
        raise StoreError(f"{account_id!r} cannot be an account id (it would be a hidden file)")
    return os.path.join(accounts_dir(store), name)


def load_all(store: str) -> tuple[list[Account], dict[str, str]]:
    """
    Every readable account (sorted by id) and the files that could not be
    used, with the reason.
    """
    scanned = scan_directory(accounts_dir(store), {})
    accounts = sorted((f.account for f in scanned.values() if f.account), key=lambda a: a.id)
    skipped = {f.path: f.error or "unusable" for f in scanned.values() if f.account is None}
    return accounts, skipped


def find(store: str, selector: str) -> Account:
    """
    ``cx``'s lookup: the exact file, then ``apikey:<selector>``, then a
    unique case-insensitive substring of the ids.

    :raises StoreError: when nothing, or more than one account, matches.
    """
    selector = selector.strip()
    accounts, _ = load_all(store)
    by_id = {a.id.lower(): a for a in accounts}
    for candidate in (selector, f"apikey:{selector}"):
        if candidate.lower() in by_id:
            return by_id[candidate.lower()]
    matches = [a for a in accounts if selector.lower() in a.id.lower()]
    if not matches:
        raise StoreError(f'no account found matching "{selector}"')
    if len(matches) > 1:
        raise StoreError(
            f'multiple accounts match "{selector}": ' + ", ".join(a.id for a in matches)
        )
    return matches[0]


def save_auth(store: str, account_id: str, auth: Mapping[str, Any],
              extra: Mapping[str, Any] | None = None) -> tuple[str, bool]:
    """
    Create or update an account's file with ``auth`` (replaced whole), keeping
    ``addedAt`` and every other field of an existing record.

    :return: the path, and whether the account is new.
    """
    ensure_private_directory(accounts_dir(store))
    accounts, _ = load_all(store)
    for existing in accounts:
        if existing.id.lower() == account_id.lower():
            account_id = existing.id  # keep the stored spelling
            break
    path = path_for(store, account_id)
    with locked(lock_path_for(path)):
        document: dict[str, Any] = {}
        created = True
        if os.path.exists(path):
            with open(path, "rb") as f:
                raw = f.read()
            try:
                parse_account(raw, path)
                document = json.loads(raw)
            except (AccountFileError, ValueError) as e:
                raise StoreError(f"{path} is not a usable account file ({e}); left as it is"
                                 ) from None
            if str(document.get("email", "")).lower() != account_id.lower():
                raise StoreError(f"storage key collision: {path} holds {document.get('email')}")
            created = False
        document["email"] = account_id
        document.setdefault("addedAt", rfc3339())
        document["auth"] = dict(auth)
        if extra:
            document.update(extra)
        atomic_write(path, dump_json(document))
    return path, created


def remove(store: str, account: Account) -> None:
    """
    Delete an account's file, and then its lock file (nothing else waits on
    the lock of a file that is gone).
    """
    lock = lock_path_for(account.source)
    with locked(lock):
        os.unlink(account.source)
    try:
        os.unlink(lock)
    except FileNotFoundError:
        pass


def read_json_object(path: str) -> dict[str, Any] | None:
    """
    A JSON object file, None when missing.

    :raises StoreError: when it exists but is not a JSON object.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        document = json.loads(raw)
    except ValueError as e:
        raise StoreError(f"parse {path}: {e}") from None
    if not isinstance(document, dict):
        raise StoreError(f"parse {path}: not a JSON object")
    return document


def raw_auth(account: Account) -> dict[str, Any]:
    document = read_json_object(account.source) or {}
    auth = document.get("auth")
    return dict(auth) if isinstance(auth, dict) else {}


# -- the local agents' files ------------------------------------------------------


def codex_auth_for(account: Account) -> dict[str, Any]:
    """
    What goes into ``$CODEX_HOME/auth.json`` for an account: the stored auth
    for a login; exactly ``{"auth_mode": "apikey", "OPENAI_API_KEY": key}`` for
    a key (Codex rejects an empty ``tokens.id_token``).
    """
    if account.kind is AccountKind.APIKEY:
        return {"auth_mode": "apikey", "OPENAI_API_KEY": account.secret}
    return raw_auth(account)


def write_codex_auth(path: str, auth: Mapping[str, Any]) -> None:
    """
    Make ``auth`` the active Codex login, keeping the old file as ``.bak``.
    """
    ensure_private_directory(os.path.dirname(path))
    if os.path.exists(path):
        os.replace(path, path + ".bak")
    atomic_write(path, dump_json(dict(auth)))


def active_account_id(codex_auth_path: str, accounts: list[Account]) -> str | None:
    """
    Which stored account Codex uses now: by the id token's email, or by the
    API key.
    """
    try:
        active = read_json_object(codex_auth_path)
    except StoreError:
        return None
    if not active:
        return None
    token_block = active.get("tokens")
    if isinstance(token_block, dict):
        email = tokens.email_from_id_token(token_block.get("id_token"))
        if email:
            for account in accounts:
                if account.id.lower() == email.lower():
                    return account.id
    key = active.get("OPENAI_API_KEY")
    if isinstance(key, str) and key:
        for account in accounts:
            if account.kind is AccountKind.APIKEY and account.secret == key:
                return account.id
    return None


def _merge_provider(path: str, provider: str, entry: dict[str, Any]) -> None:
    document = read_json_object(path) or {}
    document[provider] = entry
    ensure_private_directory(os.path.dirname(path))
    atomic_write(path, dump_json(document))


def opencode_auth_path(environ: Mapping[str, str]) -> str:
    data = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                        "share")
    return os.path.join(data, "opencode", "auth.json")


def pi_auth_path(environ: Mapping[str, str]) -> str:
    folder = environ.get("PI_CODING_AGENT_DIR", "").strip()
    if folder:
        if folder == "~" or folder.startswith("~/"):
            folder = os.path.expanduser(folder)
    else:
        folder = os.path.join(os.path.expanduser("~"), ".pi", "agent")
    return os.path.join(folder, "auth.json")


def _oauth_entry(account: Account, kind: str) -> dict[str, Any]:
    auth = raw_auth(account)
    found = auth.get("tokens")
    token_block: dict[str, Any] = found if isinstance(found, dict) else {}
    access = token_block.get("access_token") or ""
    refresh = token_block.get("refresh_token") or ""
    if not access or not refresh:
        raise StoreError(f"{kind} sync requires Codex OAuth tokens")
    exp = tokens.expires_at(access)
    entry: dict[str, Any] = {
        "type": "oauth",
        "refresh": refresh,
        "access": access,
        "expires": int((exp if exp is not None else time.time() + 3600) * 1000),
    }
    workspace = token_block.get("account_id") or tokens.chatgpt_account_id(
        token_block.get("id_token"), access
    )
    if workspace:
        entry["accountId"] = workspace
    return entry


def sync_opencode(account: Account, environ: Mapping[str, str]) -> str:
    """
    Make the account OpenCode's ``openai`` provider; every other provider in
    the file is kept as it is.
    """
    path = opencode_auth_path(environ)
    if account.kind is AccountKind.APIKEY:
        entry: dict[str, Any] = {"type": "api", "key": account.secret}
    else:
        entry = _oauth_entry(account, "OpenCode")
    _merge_provider(path, "openai", entry)
    return path


def sync_pi(account: Account, environ: Mapping[str, str],
            our_keys: Collection[str] = ()) -> str:
    """
    Make the account pi's ``openai-codex`` (login) or ``openai`` (key)
    provider, keeping every other provider. Switching to a login drops an
    ``openai`` key entry that holds one of ``our_keys`` (an earlier switch to
    a key wrote it; pi would keep using it).
    """
    path = pi_auth_path(environ)
    if account.kind is AccountKind.APIKEY:
        _merge_provider(path, "openai", {"type": "api_key", "key": account.secret})
        return path
    document = read_json_object(path) or {}
    stale = document.get("openai")
    if isinstance(stale, dict) and stale.get("type") == "api_key" and stale.get("key") in set(
        our_keys
    ):
        del document["openai"]
    document["openai-codex"] = _oauth_entry(account, "pi")
    ensure_private_directory(os.path.dirname(path))
    atomic_write(path, dump_json(document))
    return path


# -- activating an account ------------------------------------------------------

OPENCODE = "OpenCode"
PI = "pi"


def tool_present(tool: str, environ: Mapping[str, str]) -> bool:
    """
    Whether a local agent looks installed: its folder exists or its binary is
    on ``PATH``. Files are not written for tools that are not there.
    """
    home = environ.get("HOME") or os.path.expanduser("~")
    if tool == OPENCODE:
        folders = [os.path.dirname(opencode_auth_path(environ)),
                   os.path.join(environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"),
                                "opencode")]
        binary = "opencode"
    else:
        folders = [os.path.dirname(pi_auth_path(environ))]
        binary = "pi"
    if any(os.path.isdir(f) for f in folders):
        return True
    return shutil.which(binary, path=environ.get("PATH")) is not None


@attrs.frozen
class Activation:
    """
    What :func:`activate` did.

    :ivar synced: ``(tool, path)`` for each agent file written.
    :ivar skipped: the tools left alone because they are not installed.
    :ivar failed: ``(tool, why)`` for each file that could not be written.
    """

    codex: str
    synced: tuple[tuple[str, str], ...] = ()
    skipped: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()


def activate(account: Account, codex_auth: str, environ: Mapping[str, str], *,
             our_keys: Collection[str] = (), always: Collection[str] = ()) -> Activation:
    """
    Make ``account`` the active one for the local agents: Codex's
    ``auth.json``, then OpenCode's and pi's files when those tools are
    installed (or named in ``always``). All under the account's lock, so a
    refresh is never half copied. A failed OpenCode or pi write is reported,
    not raised.

    :param our_keys: every stored API key (for pi's stale entry).
    :raises StoreError: or ``OSError`` when Codex's file cannot be written.
    """
    synced: list[tuple[str, str]] = []
    skipped: list[str] = []
    failed: list[tuple[str, str]] = []
    # under the account's lock: a refresh by the daemon is either finished
    # (its new tokens are what we copy) or waits for us and then updates the
    # files we wrote; a rotated refresh token is never lost
    with locked(lock_path_for(account.source)):
        write_codex_auth(codex_auth, codex_auth_for(account))
        for tool in (OPENCODE, PI):
            if tool not in always and not tool_present(tool, environ):
                skipped.append(tool)
                continue
            try:
                if tool == OPENCODE:
                    synced.append((tool, sync_opencode(account, environ)))
                else:
                    synced.append((tool, sync_pi(account, environ, our_keys)))
            except (StoreError, OSError) as e:
                failed.append((tool, str(e)))
    return Activation(codex_auth, tuple(synced), tuple(skipped), tuple(failed))


# -- the pin: cx switch's choice, which auto-switch respects ------------------------

PIN_FILE = "pin.json"


def read_pin(state_dir: str) -> str | None:
    """
    The account ``cx switch`` pinned, if any (an unreadable pin is none).
    """
    try:
        document = read_json_object(os.path.join(state_dir, PIN_FILE)) or {}
    except (StoreError, OSError):
        return None
    account = document.get("account")
    return account if isinstance(account, str) and account else None


def write_pin(state_dir: str, account_id: str) -> None:
    ensure_private_directory(state_dir)
    atomic_write(os.path.join(state_dir, PIN_FILE),
                 dump_json({"account": account_id, "pinnedAt": rfc3339()}))


def clear_pin(state_dir: str) -> bool:
    """
    Remove the pin; whether there was one.
    """
    try:
        os.unlink(os.path.join(state_dir, PIN_FILE))
    except FileNotFoundError:
        return False
    return True
