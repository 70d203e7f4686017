# -*- test-case-name: tests.test_refresh -*-
"""
OAuth token refresh for ChatGPT logins and Claude profiles, shared by the
daemon and ``cx``.

Refresh tokens rotate on use, so a refresh must happen exactly once per
expiry: one refresh at a time per account in this process (concurrent callers
wait for the same one), and an exclusive lock on the account's lock file
around "re-read, refresh, write back", so a concurrent ``cx`` command never
burns the same refresh token or loses the new one.

The two kinds of login differ only in their file format, token endpoint and
client id (:class:`_Format`): a ChatGPT login lives in a ``cx`` account file
(and may be mirrored into Codex's ``auth.json``), a Claude profile in its
``CLAUDE_CONFIG_DIR/.credentials.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import attrs
import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from subrouter.accounts import claude_credentials, tokens
from subrouter.accounts.store import (
    Account,
    AccountFileError,
    AccountStore,
    BlockingRunner,
    FileVersion,
    parse_account,
)
from subrouter.config import DEFAULT_ANTHROPIC_TOKEN_URL
from subrouter.files import atomic_write, dump_json, locked
from subrouter.redact import fingerprint, scrub_text
from subrouter.timefmt import rfc3339
from subrouter.upstream.routing import ANTHROPIC

_log = Logger()

CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"

#: refresh an access token that expires within this many seconds
REFRESH_SKEW = 60.0
#: how long an account is set aside after a refresh failure that may pass
TRANSIENT_FAILURE_HOLD = 30.0
#: how long a token endpoint call may take
TOKEN_TIMEOUT = 30.0
_JSON_HEADERS: dict[bytes | str, list[bytes | str]] = {
    "Content-Type": ["application/json"], "Accept": ["application/json"]
}


class RefreshFailed(Exception):
    """
    A token refresh that did not produce new tokens.

    :ivar account_id: whose refresh failed.
    :ivar reason: a message for people; it never holds a token.
    :ivar terminal: True when only signing in again can fix it.
    """

    def __init__(self, account_id: str, reason: str, terminal: bool) -> None:
        super().__init__(f"token refresh for {account_id} failed: {reason}")
        self.account_id = account_id
        self.reason = reason
        self.terminal = terminal


@attrs.frozen
class _Failure:
    reason: str
    refresh_fp: str
    until: float | None


def codex_auth_path(environ: dict[str, str] | None = None) -> str:
    """
    Where Codex keeps its active login: ``$CODEX_HOME/auth.json``, by default
    ``~/.codex/auth.json``.
    """
    env = os.environ if environ is None else environ
    home = env.get("CODEX_HOME") or os.path.join(os.path.expanduser("~"), ".codex")
    return os.path.join(home, "auth.json")


def lock_path_for(account_file: str) -> str:
    """
    The ``cx`` lock file of an account file: ``.<lowercased name>.lock`` beside it.
    """
    directory, name = os.path.split(account_file)
    return os.path.join(directory, f".{name.lower()}.lock")


@attrs.define
class _Held:
    """
    An account file read under its lock; the lock is held until released.
    """

    account: Account
    document: dict[str, Any]
    release: Callable[[], None]


Parser = Callable[[bytes, str], Account]


@attrs.frozen
class _Format:
    """
    What differs between the kinds of login a refresh deals with.

    :ivar parse: reads a credentials file's bytes (and its path) into an account.
    :ivar apply: puts a token endpoint's answer into the file's document.
    :ivar required: the answer's fields that must be non-empty strings.
    :ivar numbers: the answer's numeric fields that are kept.
    :ivar sign_in: the command that makes a new login.
    """

    token_url: str
    client_id: str
    parse: Parser
    apply: Callable[[dict[str, Any], dict[str, Any], float], None]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    sign_in: str = "cx add"


def _lock_and_read(path: str, parse: Parser = parse_account) -> _Held:
    manager = locked(lock_path_for(path))
    manager.__enter__()
    try:
        with open(path, "rb") as f:
            raw = f.read()
        account = parse(raw, path)
        document = json.loads(raw)
    except BaseException:
        manager.__exit__(None, None, None)
        raise
    def release() -> None:
        manager.__exit__(None, None, None)

    return _Held(account, document, release)


def apply_new_tokens(document: dict[str, Any], new: dict[str, Any], now: float) -> None:
    """
    Put refreshed tokens into an auth-bearing document (an account file or
    Codex's ``auth.json``), keeping every field it does not replace.
    """
    auth = document.get("auth")
    target = auth if isinstance(auth, dict) else document
    token_block = target.get("tokens")
    if not isinstance(token_block, dict):
        token_block = {}
        target["tokens"] = token_block
    token_block["access_token"] = new["access_token"]
    token_block["refresh_token"] = new["refresh_token"]
    token_block["id_token"] = new["id_token"]
    target["last_refresh"] = rfc3339(now)


def _write_account(path: str, document: dict[str, Any]) -> FileVersion:
    atomic_write(path, dump_json(document))
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _mirror_into_codex_auth(
    auth_path: str, account_id: str, new: dict[str, str], now: float
) -> bool:
    """
    Rewrite Codex's active ``auth.json`` with the new tokens when it holds the
    same login. Blocking.

    :return: whether the file was rewritten.
    """
    try:
        with open(auth_path, "rb") as f:
            active = json.loads(f.read())
    except (OSError, ValueError):
        return False
    if not isinstance(active, dict):
        return False
    token_block = active.get("tokens")
    if not isinstance(token_block, dict):
        return False
    email = tokens.email_from_id_token(token_block.get("id_token"))
    if email is None or email.lower() != account_id.lower():
        return False
    apply_new_tokens(active, new, now)
    atomic_write(auth_path, dump_json(active))
    return True


class TokenRefresher:
    """
    Keeps OAuth access tokens fresh.

    :param store: the account store, told about every account rewritten.
    :param http: a treq ``HTTPClient`` for the token endpoint.
    :param token_url: the OAuth token endpoint.
    :param clock: the source of time.
    :param run_blocking: runs file work off the reactor thread.
    :param codex_auth: the path of Codex's active ``auth.json``.
    :param anthropic_token_url: the token endpoint of Claude profiles.
    """

    def __init__(
        self,
        *,
        store: AccountStore,
        http: HTTPClient,
        token_url: str,
        clock: IReactorTime,
        run_blocking: BlockingRunner,
        codex_auth: str,
        anthropic_token_url: str = DEFAULT_ANTHROPIC_TOKEN_URL,
    ) -> None:
        self._store = store
        self._http = http
        self._codex_format = _Format(
            token_url, CLIENT_ID, parse_account, apply_new_tokens,
            ("access_token", "refresh_token", "id_token"),
        )
        self._anthropic_token_url = anthropic_token_url
        self._clock = clock
        self._run_blocking = run_blocking
        self._codex_auth = codex_auth
        self._inflight: dict[str, list[Deferred[Account]]] = {}
        self._failures: dict[str, _Failure] = {}

    def now(self) -> float:
        return self._clock.seconds()

    def _format(self, account: Account) -> _Format:
        if account.provider != ANTHROPIC:
            return self._codex_format
        name = account.id.removeprefix(claude_credentials.ID_PREFIX)

        def parse(raw: bytes, path: str) -> Account:
            return claude_credentials.parse_credentials(raw, path, name)

        return _Format(
            self._anthropic_token_url, claude_credentials.CLIENT_ID, parse,
            claude_credentials.apply_new_tokens, ("access_token",),
            optional=("refresh_token", "scope"), numbers=("expires_in",),
            sign_in="cx claude add",
        )

    def needs_refresh(self, account: Account) -> bool:
        """
        Whether the account's access token expires within :data:`REFRESH_SKEW`.
        A token without a readable expiry is taken as fresh.
        """
        return (
            account.is_oauth
            and account.expires_at is not None
            and account.expires_at - self._clock.seconds() < REFRESH_SKEW
        )

    def why_unusable(self, account: Account) -> str | None:
        """
        The reason a recent refresh failure keeps this account out of use, if
        any. A terminal failure lasts until the login on disk changes.
        """
        failure = self._failures.get(account.id)
        if failure is None:
            return None
        if failure.refresh_fp != fingerprint(account.refresh_token):
            del self._failures[account.id]
            return None
        if failure.until is not None and self._clock.seconds() >= failure.until:
            del self._failures[account.id]
            return None
        return failure.reason

    def ensure_fresh(self, account: Account) -> Deferred[Account]:
        """
        The account with an access token that is not about to expire,
        refreshing it first when needed.

        :raises RefreshFailed: (as a failed Deferred) when the refresh fails.
        """
        if not self.needs_refresh(account):
            return succeed(account)
        return self._single_flight(account, force=False)

    def refresh_rejected(self, account: Account) -> Deferred[Account]:
        """
        The upstream rejected ``account``'s access token: get a new one,
        unless another refresh already replaced it.
        """
        current = self._store.get(account.id) or account
        if current.secret != account.secret:
            return succeed(current)
        return self._single_flight(current, force=True)

    def _single_flight(self, account: Account, force: bool) -> Deferred[Account]:
        waiter: Deferred[Account] = Deferred()
        waiting = self._inflight.get(account.id)
        if waiting is not None:
            waiting.append(waiter)
            return waiter
        waiting = self._inflight[account.id] = [waiter]

        def deliver(result: Account | Failure) -> None:
            del self._inflight[account.id]
            for each in waiting:
                if isinstance(result, Failure):
                    each.errback(result)
                else:
                    each.callback(result)

        Deferred.fromCoroutine(self._refresh(account, force)).addBoth(deliver)
        return waiter

    async def _refresh(self, account: Account, force: bool) -> Account:
        form = self._format(account)
        try:
            held: _Held = await self._run_blocking(
                lambda: _lock_and_read(account.source, form.parse)
            )
        except (OSError, AccountFileError) as e:
            raise self._failed(account, f"cannot read its account file: {e}", terminal=False) from e
        try:
            current = held.account
            if current.secret != account.secret and not self.needs_refresh(current):
                # someone else (cx, or Codex via "sync active") refreshed it
                self._store.replace(current)
                return current
            if not force and not self.needs_refresh(current):
                return current
            if not current.refresh_token:
                raise self._failed(current, "the login has no refresh token", terminal=True)
            new_tokens = await self._call_token_endpoint(current, form)
            now = self._clock.seconds()
            document = held.document
            form.apply(document, new_tokens, now)
            path = current.source
            version = await self._run_blocking(lambda: _write_account(path, document))
            refreshed = form.parse(dump_json(document), path)
            mirrored = False
            if refreshed.is_codex_login:
                mirrored = await self._mirror(refreshed, new_tokens, now)
        finally:
            held.release()
        self._store.replace(refreshed, version)
        self._failures.pop(account.id, None)
        _log.info(
            "refreshed the access token of {account} (expires in {expires_in}s)",
            account=refreshed.id,
            expires_in=(
                None if refreshed.expires_at is None else int(refreshed.expires_at - now)
            ),
        )
        if mirrored:
            _log.info("updated {path}, where {account} is active", path=self._codex_auth,
                      account=refreshed.id)
        return refreshed

    async def _mirror(self, refreshed: Account, new_tokens: dict[str, Any], now: float) -> bool:
        # still under the account's lock: a `cx switch` of this account
        # either ran before (and is mirrored over now) or waits and reads
        # the new tokens; neither can put the spent refresh token back
        try:
            mirrored: bool = await self._run_blocking(
                lambda: _mirror_into_codex_auth(self._codex_auth, refreshed.id, new_tokens, now)
            )
        except OSError as e:
            _log.warn(
                "could not update {path} with the new tokens of {account}: {error}",
                path=self._codex_auth,
                account=refreshed.id,
                error=str(e),
            )
            return False
        return mirrored

    async def _call_token_endpoint(self, account: Account, form: _Format) -> dict[str, Any]:
        # both endpoints take the same JSON refresh grant
        body = json.dumps(
            {
                "client_id": form.client_id,
                "grant_type": "refresh_token",
                "refresh_token": account.refresh_token,
            }
        ).encode()
        try:
            response = await self._http.request(
                "POST",
                form.token_url,
                data=body,
                headers=_JSON_HEADERS,
                timeout=TOKEN_TIMEOUT,
            )
            raw = await treq.content(response)
        except Exception as e:
            raise self._failed(
                account, f"the token endpoint could not be reached ({_describe(e)})", terminal=False
            ) from e
        if not 200 <= response.code < 300:
            terminal = response.code in (400, 401, 403)
            detail = _provider_error(raw, (account.refresh_token, account.secret))
            advice = f"; sign in again with `{form.sign_in}`" if terminal else ""
            raise self._failed(
                account, f"the token endpoint answered HTTP {response.code}{detail}{advice}",
                terminal=terminal,
            )
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        new: dict[str, Any] = {}
        if isinstance(answer, dict):
            for key in form.required + form.optional:
                value = answer.get(key)
                if isinstance(value, str) and value:
                    new[key] = value
            for key in form.numbers:
                value = answer.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    new[key] = value
        if any(key not in new for key in form.required):
            raise self._failed(
                account,
                "the token endpoint's answer lacks " + " or ".join(form.required),
                terminal=False,
            )
        return new

    def _failed(self, account: Account, reason: str, terminal: bool) -> RefreshFailed:
        until = None if terminal else self._clock.seconds() + TRANSIENT_FAILURE_HOLD
        self._failures[account.id] = _Failure(
            f"token refresh failed: {reason}", fingerprint(account.refresh_token), until
        )
        _log.warn(
            "token refresh for {account} failed: {reason}", account=account.id, reason=reason
        )
        return RefreshFailed(account.id, reason, terminal)


def _describe(error: BaseException) -> str:
    from subrouter.errors import describe_failure_reason

    return describe_failure_reason(error)


def _provider_error(raw: bytes, known: tuple[str, ...]) -> str:
    try:
        answer = json.loads(raw)
    except ValueError:
        return ""
    if not isinstance(answer, dict):
        return ""
    parts: list[str] = []
    error = answer.get("error")
    if isinstance(error, dict):
        for key in ("code", "type", "message"):
            value = error.get(key)
            if isinstance(value, str) and value and value not in parts:
                parts.append(value)
    elif isinstance(error, str):
        parts.append(error)
    description = answer.get("error_description")
    if isinstance(description, str) and description:
        parts.append(description)
    if not parts:
        return ""
    return ": " + scrub_text(": ".join(parts), known)[:300]
