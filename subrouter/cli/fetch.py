# -*- test-case-name: tests.test_cx -*-
"""
What the account views show, from one source of truth: the running daemon's
``/_subrouter/accounts`` when it serves the same store, else the daemon's own
code run here for the length of the command (the store, the token refresher,
the usage poller, the exhaustion marks the daemon saved in
``<state-dir>/state.json``, and :class:`~subrouter.sessions.placement.Placement`
to describe it all). Either way the rows have the same shape and the same
meaning, and ``cx status`` never disagrees with ``cx switch`` or the daemon.

Every function here runs on the one reactor of the command's process.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from subrouter.accounts.store import Account
from subrouter.config import DEFAULT_ADDR

#: how long a command waits for a running daemon before computing on its own
DAEMON_TIMEOUT = 0.5
DEFAULT_DAEMON = "http://" + DEFAULT_ADDR


def daemon_origin(environ: Mapping[str, str]) -> str:
    """
    Where the daemon listens: ``$SUBROUTER_URL``, else the origin of
    ``$SUBROUTER_CODEX_BASE_URL`` (what ``subrouter codex`` points Codex at),
    else ``http://127.0.0.1:31415``.
    """
    explicit = environ.get("SUBROUTER_URL", "").strip()
    if explicit:
        return explicit.rstrip("/")
    base = environ.get("SUBROUTER_CODEX_BASE_URL", "").strip()
    if base:
        from urllib.parse import urlsplit

        parts = urlsplit(base)
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
    return DEFAULT_DAEMON


def command_http(reactor: Any, environ: Mapping[str, str]) -> tuple[Any, Any]:
    """
    A treq client for one command's requests, and its pool (close it when
    done): the platform's trust roots plus ``SUBROUTER_CA_BUNDLE``.
    """
    from subrouter.upstream.client import make_agent, make_http_client, make_pool, make_tls_policy

    bundle = environ.get("SUBROUTER_CA_BUNDLE")
    pool = make_pool(reactor)
    http = make_http_client(make_agent(reactor, pool, make_tls_policy([bundle] if bundle else [])))
    return http, pool


async def get_daemon_json(reactor: Any, environ: Mapping[str, str], path: str,
                          timeout: float = DAEMON_TIMEOUT) -> Any:
    """
    A JSON answer of the running daemon, or None when none answers in time.
    """
    import treq

    http, pool = command_http(reactor, environ)
    try:
        response = await http.get(daemon_origin(environ) + path, timeout=timeout)
        body = await treq.content(response)
        if response.code != 200:
            return None
        return json.loads(body)
    except Exception:
        return None  # no daemon (refused, timed out, not JSON): we compute ourselves
    finally:
        await pool.closeCachedConnections()


class _WallClock:
    def seconds(self) -> float:
        import time

        return time.time()


@attrs.frozen
class Listing:
    """
    The accounts as the daemon sees them (``/_subrouter/accounts`` rows).

    :ivar source: ``"daemon"`` (asked the running one) or ``"local"``.
    :ivar fetched: how many usage fetches were made here, and how many failed.
    """

    rows: list[dict[str, Any]]
    source: str
    fetched: int = 0
    failed: int = 0


async def account_listing(reactor: Any, store_dir: str, state_dir: str,
                          environ: Mapping[str, str], usage_url: str, token_url: str,
                          *, ask_daemon: bool = True, fetch: bool = True) -> Listing:
    """
    Every account's state, best source first (see the module docstring).
    """
    from subrouter.accounts.activate import load_all

    accounts, _ = load_all(store_dir)
    if reactor is None:  # driven without one (tests): nothing to ask, nothing to fetch
        reactor, ask_daemon, fetch = _WallClock(), False, False
    if ask_daemon and accounts:
        answer = await get_daemon_json(reactor, environ, "/_subrouter/accounts")
        rows = answer.get("accounts") if isinstance(answer, dict) else None
        if isinstance(rows, list) and sorted(str(r.get("id")) for r in rows) == sorted(
            a.id for a in accounts
        ):
            return Listing(rows, "daemon")
    return await _local_listing(reactor, store_dir, state_dir, environ, usage_url, token_url,
                                fetch)


async def _local_listing(reactor: Any, store_dir: str, state_dir: str,
                         environ: Mapping[str, str], usage_url: str, token_url: str,
                         fetch: bool) -> Listing:
    from twisted.internet.defer import Deferred, DeferredList
    from twisted.internet.threads import deferToThread

    from subrouter.accounts.pool import AccountPool
    from subrouter.accounts.refresh import TokenRefresher, codex_auth_path
    from subrouter.accounts.store import AccountStore
    from subrouter.routing.usage import UsagePoller
    from subrouter.sessions.placement import Placement
    from subrouter.sessions.table import SessionTable
    from subrouter.sessions.usage import UsageBook
    from subrouter.web.admin import accounts_json

    http: Any
    pool: Any
    http, pool = command_http(reactor, environ) if fetch else (None, None)
    store = AccountStore(store_dir, deferToThread)
    store.scan_now()
    refresher = TokenRefresher(store=store, http=http, token_url=token_url, clock=reactor,
                               run_blocking=deferToThread,
                               codex_auth=codex_auth_path(dict(environ)))
    book = UsageBook()
    table = SessionTable(1800)
    book.load_marks(saved_marks(state_dir), reactor.seconds())
    poller = UsagePoller(store=store, refresher=refresher, http=http, usage_url=usage_url,
                         usage=book, clock=reactor, score_ttl=0)
    logins = [a for a in store.accounts() if a.is_oauth and a.problem is None] if fetch else []
    if pool is not None:
        try:
            await DeferredList([Deferred.fromCoroutine(poller.fetch(a)) for a in logins],
                               consumeErrors=True)
        finally:
            await pool.closeCachedConnections()
    placement = Placement(AccountPool(store, refresher), table, book, reactor)
    rows = accounts_json(placement)["accounts"]
    failed = sum(1 for r in rows if r["kind"] == "oauth" and r.get("usage_error")
                 and not r.get("windows"))
    return Listing(rows, "local", fetched=len(logins), failed=failed)


def saved_marks(state_dir: str) -> dict[str, Any]:
    """
    The exhaustion marks the daemon saved (read only: a file the daemon
    cannot use is its business, never moved or rewritten here).
    """
    from subrouter.accounts.activate import StoreError, read_json_object
    from subrouter.jobs.state_file import STATE_FILE

    if not state_dir:
        return {}
    try:
        document = read_json_object(f"{state_dir}/{STATE_FILE}") or {}
    except (StoreError, OSError):
        return {}
    marks = document.get("exhausted")
    return marks if isinstance(marks, dict) else {}


async def refresh_account(reactor: Any, store_dir: str, account: Account, token_url: str,
                          environ: Mapping[str, str]) -> None:
    """
    Refresh a login's tokens now, with the daemon's refresher (under the
    account's lock; Codex's ``auth.json`` follows when it is the active one).

    :raises subrouter.accounts.refresh.RefreshFailed: when it cannot.
    """
    from twisted.internet.threads import deferToThread

    from subrouter.accounts.refresh import TokenRefresher, codex_auth_path
    from subrouter.accounts.store import AccountStore

    http, pool = command_http(reactor, environ)
    store = AccountStore(store_dir, deferToThread)
    store.scan_now()
    refresher = TokenRefresher(store=store, http=http, token_url=token_url, clock=reactor,
                               run_blocking=deferToThread,
                               codex_auth=codex_auth_path(dict(environ)))
    try:
        await refresher.ensure_fresh(account)
    finally:
        await pool.closeCachedConnections()


async def validate_admin_key(reactor: Any, base_url: str, key: str,
                             environ: Mapping[str, str]) -> str | None:
    """
    Whether OpenAI accepts an admin key: the projects list, or (when that is
    forbidden) the costs endpoint. None when accepted, else why not.
    """
    import time as _time

    import treq

    from subrouter.errors import describe_failure_reason
    from subrouter.redact import scrub_text

    http, pool = command_http(reactor, environ)
    headers: Any = {"Authorization": [f"Bearer {key}"], "Accept": ["application/json"]}
    base = base_url.rstrip("/")
    urls = [
        f"{base}/v1/organization/projects?limit=1",
        f"{base}/v1/organization/costs?start_time={int(_time.time()) - 86400}"
        "&bucket_width=1d&limit=1",
    ]
    try:
        for url in urls:
            try:
                response = await http.get(url, headers=headers, timeout=30)
                body = await treq.content(response)
            except Exception as e:
                return describe_failure_reason(e)
            if 200 <= response.code < 300:
                return None
            if response.code != 403:
                text = scrub_text(body.decode("utf-8", "replace"), [key])[:200]
                return f"OpenAI answered HTTP {response.code}: {text}"
        return "OpenAI answered HTTP 403 to both the projects and the costs endpoints"
    finally:
        await pool.closeCachedConnections()
