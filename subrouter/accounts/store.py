# -*- test-case-name: tests.test_accounts -*-
"""
The read side of the ``cx`` account store: ``<accounts-dir>/accounts/*.json``.

Files are parsed into immutable :class:`Account` values. A scan re-reads only
the files whose size, mtime or inode changed, so the store can be rescanned
every few seconds and accounts added or removed with ``cx`` are seen without a
restart. A file that cannot be read or parsed is reported by name and skipped;
it is never rewritten.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from subrouter.accounts import tokens
from subrouter.accounts.model import Account as Account
from subrouter.accounts.model import AccountFileError as AccountFileError
from subrouter.accounts.model import AccountKind as AccountKind
from subrouter.accounts.model import FileVersion as FileVersion
from subrouter.accounts.model import ScannedFile as ScannedFile
from subrouter.accounts.model import header_value_problem as header_value_problem
from subrouter.upstream.routing import ANTHROPIC, OPENAI

_log = Logger()

_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._@-]")


def filename_for_id(account_id: str) -> str:
    """
    The file name ``cx`` gives an account: every character outside
    ``[A-Za-z0-9._@-]`` replaced by ``_``, plus ``.json``.
    """
    return _UNSAFE_FILENAME_CHARS.sub("_", account_id) + ".json"


def _credential_problem(what: str, value: str, fix: str) -> str | None:
    found = header_value_problem(value)
    if found is None:
        return None
    return f"{what} holds {found}, which cannot go into an HTTP header ({fix})"


def parse_account(raw: bytes, source: str) -> Account:
    """
    Parse the bytes of one account file.

    :param raw: the file's content.
    :param source: the file's path, recorded on the account.
    :raises AccountFileError: when the content is not a ``cx`` account.
    """
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise AccountFileError(f"not valid JSON ({type(e).__name__} at {_where(e)})") from None
    if not isinstance(document, dict):
        raise AccountFileError("not a JSON object")
    account_id = document.get("email")
    if not isinstance(account_id, str) or not account_id.strip():
        raise AccountFileError('has no "email" (the account id)')
    auth = document.get("auth")
    if not isinstance(auth, dict):
        raise AccountFileError('has no "auth" object')

    provider = provider_of(document.get("provider"))
    if provider is None:
        raise AccountFileError(
            f"names provider {str(document.get('provider'))[:40]!r}, which Subrouter does "
            "not serve (openai or anthropic)"
        )
    if provider == ANTHROPIC:
        # an Anthropic API key (`cx add-key --provider anthropic`): the same
        # record as an OpenAI key, the key under its own name
        key = _string(auth.get("ANTHROPIC_API_KEY")) or _string(auth.get("OPENAI_API_KEY"))
        return Account(
            id=account_id,
            kind=AccountKind.APIKEY,
            source=source,
            provider=ANTHROPIC,
            secret=key,
            problem=(
                _credential_problem(
                    "the API key", key, "replace it with `cx add-key --provider anthropic`"
                )
                if key else "the API key is empty"
            ),
        )
    api_key = auth.get("OPENAI_API_KEY")
    if auth.get("auth_mode") == "apikey" or (isinstance(api_key, str) and api_key):
        key = api_key if isinstance(api_key, str) else ""
        return Account(
            id=account_id,
            kind=AccountKind.APIKEY,
            source=source,
            secret=key,
            problem=(
                _credential_problem("the API key", key, "replace it with `cx add-key`")
                if key else "the API key is empty"
            ),
        )

    token_block = auth.get("tokens")
    token_map: dict[str, Any] = token_block if isinstance(token_block, dict) else {}
    access = _string(token_map.get("access_token"))
    refresh = _string(token_map.get("refresh_token"))
    id_token = _string(token_map.get("id_token"))
    workspace = _string(token_map.get("account_id")) or tokens.chatgpt_account_id(
        id_token, access
    )
    problem = (
        _credential_problem("the access token", access, "run `cx add` again")
        or _credential_problem("the ChatGPT account id", workspace or "", "run `cx add` again")
        if access else "the login has no access token (run `cx add` again)"
    )
    return Account(
        id=account_id,
        kind=AccountKind.OAUTH,
        source=source,
        email=tokens.email_from_id_token(id_token) or account_id,
        plan=tokens.plan_type(id_token, access),
        chatgpt_account_id=workspace,
        expires_at=tokens.expires_at(access),
        secret=access,
        refresh_token=refresh,
        id_token=id_token,
        problem=problem,
    )


#: how the store's ``provider`` field may spell each provider we serve (the
#: late Go ``cx`` writes ``codex`` and ``claude``; absent means Codex)
_PROVIDER_NAMES = {
    "": OPENAI, "codex": OPENAI, "openai": OPENAI, "chatgpt": OPENAI,
    "anthropic": ANTHROPIC, "claude": ANTHROPIC,
}


def provider_of(value: object) -> str | None:
    """
    The provider an account record's ``provider`` field names, or None for
    one Subrouter does not serve.
    """
    if value is None:
        return OPENAI
    if not isinstance(value, str):
        return None
    return _PROVIDER_NAMES.get(value.strip().lower())


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _where(error: Exception) -> str:
    if isinstance(error, json.JSONDecodeError):
        return f"line {error.lineno} column {error.colno}"
    return "the start"


#: account directories that could not be listed, with the reason last logged
_unlistable: dict[str, str] = {}


def scan_directory(
    accounts_path: str, previous: dict[str, ScannedFile]
) -> dict[str, ScannedFile]:
    """
    Read every account file in ``accounts_path``, reusing ``previous`` results
    for files that did not change. Blocking: call it off the reactor thread.

    :return: the scan, keyed by path.
    """
    found: dict[str, ScannedFile] = {}
    try:
        entries = list(os.scandir(accounts_path))
    except FileNotFoundError:
        return found
    except OSError as e:
        why = e.strerror or str(e)
        if _unlistable.get(accounts_path) != why:
            # said when it starts (or its reason changes), not every rescan
            _unlistable[accounts_path] = why
            _log.error(
                "cannot list the account directory {path}: {error}; keeping the accounts "
                "as they were until it can be",
                path=accounts_path,
                error=why,
            )
        return dict(previous)
    if _unlistable.pop(accounts_path, None) is not None:
        _log.info("the account directory {path} can be listed again", path=accounts_path)
    for entry in entries:
        name = entry.name
        # dot files are lock files, atomic-write temporaries and macOS forks
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            stat = entry.stat(follow_symlinks=True)
        except OSError:
            continue
        if not entry.is_file():
            continue
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        known = previous.get(entry.path)
        if known is not None and known.version == version:
            found[entry.path] = known
            continue
        try:
            with open(entry.path, "rb") as f:
                raw = f.read()
            account = parse_account(raw, entry.path)
            found[entry.path] = ScannedFile(entry.path, version, account, None)
        except AccountFileError as e:
            found[entry.path] = ScannedFile(entry.path, version, None, str(e))
        except OSError as e:
            found[entry.path] = ScannedFile(
                entry.path, version, None, f"cannot be read: {e.strerror or e}"
            )
    return found


def scan_store(directory: str, previous: dict[str, ScannedFile]) -> dict[str, ScannedFile]:
    """
    Everything the daemon serves from a store: the account files under
    ``accounts/`` and the registered Claude profiles' credentials. Blocking.
    """
    # imported here: the Claude module builds on this one's Account
    from subrouter.accounts.claude_credentials import scan_profiles

    found = scan_directory(os.path.join(directory, "accounts"), previous)
    found.update(scan_profiles(directory, previous))
    return found


BlockingRunner = Callable[[Callable[[], Any]], "Deferred[Any]"]


class AccountStore:
    """
    The accounts currently on disk, kept in memory and refreshed by
    :meth:`rescan`. Lookups never touch the disk.

    :param directory: the ``cx`` store root (``~/.codex-accounts``).
    :param run_blocking: runs a blocking callable off the reactor thread and
        returns a Deferred of its result.
    """

    def __init__(self, directory: str, run_blocking: BlockingRunner) -> None:
        self.directory = directory
        self.accounts_path = os.path.join(directory, "accounts")
        self._run_blocking = run_blocking
        self._files: dict[str, ScannedFile] = {}
        self._by_id: dict[str, Account] = {}
        self._ordered: list[Account] = []
        self._skipped: dict[str, str] = {}
        self._scanning: Deferred[None] | None = None
        #: bumped whenever the set of accounts or any account changes
        self.version = 0

    def scan_now(self) -> None:
        """
        Scan synchronously; for start-up, before the first request arrives.
        """
        self._apply(scan_store(self.directory, self._files))

    def rescan(self) -> Deferred[None]:
        """
        Scan off the reactor thread; concurrent calls share one scan. Never
        fails: a failure is logged and the previous view kept.
        """
        if self._scanning is not None:
            waiter: Deferred[None] = Deferred()
            self._scanning.addBoth(lambda _: waiter.callback(None))
            return waiter
        previous = self._files

        def done(result: dict[str, ScannedFile] | None) -> None:
            self._scanning = None
            if result is not None:
                self._apply(result)

        def failed(failure: Any) -> None:
            _log.failure("scanning the account store failed", failure)

        directory = self.directory
        d: Deferred[Any] = self._run_blocking(lambda: scan_store(directory, previous))
        self._scanning = d
        d.addErrback(failed)
        d.addCallback(done)
        return d

    def _apply(self, files: dict[str, ScannedFile]) -> None:
        by_id: dict[str, Account] = {}
        skipped: dict[str, str] = {}
        for path in sorted(files):
            scanned = files[path]
            if scanned.account is None:
                skipped[path] = scanned.error or "unusable"
                continue
            account = scanned.account
            twin = by_id.get(account.id)
            if twin is not None:
                skipped[path] = f"duplicate of account {account.id} in {twin.source}"
                continue
            by_id[account.id] = account
        for path, error in skipped.items():
            old = self._files.get(path)
            if old is None or old.version != files[path].version or path not in self._skipped:
                _log.error(
                    "skipping account file {path}: {error} (the file is left as it is)",
                    path=path,
                    error=error,
                )
        added = by_id.keys() - self._by_id.keys()
        removed = self._by_id.keys() - by_id.keys()
        if self._files and (added or removed):
            _log.info(
                "account store changed: added {added}, removed {removed}",
                added=sorted(added),
                removed=sorted(removed),
            )
        if by_id != self._by_id:
            self.version += 1
        self._files = files
        self._skipped = skipped
        self._by_id = by_id
        self._ordered = sorted(by_id.values(), key=lambda a: a.id)

    def accounts(self) -> list[Account]:
        """
        Every readable account, sorted by id.
        """
        return list(self._ordered)

    def get(self, account_id: str) -> Account | None:
        return self._by_id.get(account_id)

    def skipped_files(self) -> dict[str, str]:
        """
        The files the last scan could not use, with the reason.
        """
        return dict(self._skipped)

    def replace(self, account: Account, version: FileVersion | None = None) -> None:
        """
        Record an account this process has just rewritten (after a token
        refresh), so the next request uses it without waiting for a rescan.
        """
        self._by_id[account.id] = account
        self._ordered = sorted(self._by_id.values(), key=lambda a: a.id)
        self.version += 1
        if version is not None:
            self._files[account.source] = ScannedFile(account.source, version, account, None)

    def ids(self) -> Iterable[str]:
        return self._by_id.keys()
