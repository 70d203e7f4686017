# -*- test-case-name: tests.test_dashboard -*-
"""
The JSON behind the dashboard's panels:

- ``GET /_subrouter/token-usage?since=&until=&bucket=&by=&tz=&limit=``:
  totals, time buckets and breakdowns (by user, account, model, agent;
  ``provider`` and ``conversation`` on request) of the token ledger;
- ``GET /_subrouter/conversations?since=&until=&limit=``: each conversation's
  agent, id, account, user, first and last seen, requests, tokens and
  cache-hit ratio, whether it is live, and its transcript's endpoints when
  recording is on;
- ``/_subrouter/account-status``: GET refreshes the tokens that expired (or
  are about to) and reports each account's auth state; POST refreshes every
  login's token.

Queries run off the reactor thread; nothing here shows a secret.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from subrouter.accounting.ledger import Ledger, QueryError
from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import RefreshFailed
from subrouter.accounts.store import Account
from subrouter.errors import error_body, method_not_allowed
from subrouter.sessions.placement import Placement
from subrouter.transcripts.recorder import Recorder

_log = Logger()

Runner = Callable[[Callable[[], Any]], Deferred[Any]]


def query_args(request: Request) -> dict[str, str]:
    """
    The first value of each query parameter, as text.
    """
    return {
        key.decode("utf-8", "replace"): values[0].decode("utf-8", "replace")
        for key, values in (request.args or {}).items() if values
    }


def _json(request: Request, value: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _error(request: Request, status: int, kind: str, message: str) -> bytes:
    _json(request, None, status)
    return error_body(kind, message)


def _finish(request: Request, gone: list[bool], body: bytes) -> None:
    if not gone:
        request.write(body)
        request.finish()


class _Async(Resource):
    """
    A GET leaf whose answer is computed off the reactor thread.
    """

    isLeaf = True

    def __init__(self, run_blocking: Runner, clock: IReactorTime) -> None:
        super().__init__()
        self._run_blocking = run_blocking
        self._clock = clock

    def produce(self, args: dict[str, str], now: float) -> Any:
        raise NotImplementedError

    def decorate(self, value: Any) -> Any:
        return value

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, b"GET, HEAD")
        args = query_args(request)
        now = self._clock.seconds()
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))

        def answered(value: Any) -> None:
            _finish(request, gone, _json(request, self.decorate(value)))

        def failed(failure: Failure) -> None:
            if failure.check(QueryError):
                _finish(request, gone, _error(request, 400, "invalid_request",
                                                  str(failure.value)))
                return
            _log.failure("answering {path} failed", failure, path=request.path)
            _finish(request, gone, _error(request, 500, "internal_error",
                                              "Subrouter failed to answer; see its log"))

        self._run_blocking(lambda: self.produce(args, now)).addCallbacks(answered, failed)
        return NOT_DONE_YET


class TokenUsageResource(_Async):
    """
    ``/_subrouter/token-usage``.
    """

    def __init__(self, ledger: Ledger, run_blocking: Runner, clock: IReactorTime) -> None:
        super().__init__(run_blocking, clock)
        self._ledger = ledger

    def produce(self, args: dict[str, str], now: float) -> Any:
        return self._ledger.query(args, now)


class ConversationsResource(_Async):
    """
    ``/_subrouter/conversations``: the ledger's per-conversation sums joined
    with the live placement table (conversations placed but without usage
    yet are listed too) and the transcripts, when recording is on.
    """

    def __init__(self, ledger: Ledger, placement: Placement, recorder: Recorder | None,
                 run_blocking: Runner, clock: IReactorTime) -> None:
        super().__init__(run_blocking, clock)
        self._ledger = ledger
        self._placement = placement
        self._recorder = recorder

    def produce(self, args: dict[str, str], now: float) -> Any:
        if "since" not in args:
            args = {**args, "since": "7d"}
        return self._ledger.conversations(args, now)

    def decorate(self, value: Any) -> Any:
        # on the reactor thread: the placement table is the reactor's
        now = self._clock.seconds()
        table = self._placement.table
        horizon = now - table.idle_ttl
        listed = value["conversations"]
        seen = {(c["agent"], c["session"]) for c in listed}
        for a in table:
            if (a.agent, a.key) in seen or a.fallback:
                continue
            if not value["since_ts"] <= a.last_seen < value["until_ts"]:
                continue
            listed.append({
                "agent": a.agent, "session": a.key, "account": a.account_id,
                "accounts": [a.account_id], "user": a.user_email, "models": [],
                "first_seen": a.first_seen, "last_seen": a.last_seen, "usage": None,
            })
        recorded: set[tuple[str, str]] = set()
        recorder = self._recorder
        if recorder is not None:
            recorded = {(s.agent, s.session_id) for s in recorder.summaries()}
        for entry in listed:
            assignment = table.get(entry["agent"], entry["session"])
            entry["live"] = assignment is not None and assignment.last_seen > horizon
            entry["placed_on"] = assignment.account_id if assignment is not None else None
            entry["placed_requests"] = assignment.requests if assignment is not None else None
            entry["transcript"] = None
            if (entry["agent"], entry["session"]) in recorded:
                base = ("/_subrouter/transcripts/" + quote(entry["agent"], safe="") + "/"
                        + quote(entry["session"], safe=""))
                entry["transcript"] = {"events": base, "raw": base + "/raw"}
        listed.sort(key=lambda c: c["last_seen"], reverse=True)
        value["recording"] = recorder is not None
        return value


def _provider(account: Account) -> str:
    """
    The original product's ``provider`` names: ``codex`` and ``claude`` for
    logins, ``openai`` and ``anthropic`` for API keys.
    """
    if account.provider == "anthropic":
        return "claude" if account.is_oauth else "anthropic"
    return "codex" if account.is_oauth else "openai"


class AccountStatusResource(Resource):
    """
    ``/_subrouter/account-status``.

    :param pool: the accounts and their refresher.
    """

    isLeaf = True

    def __init__(self, pool: AccountPool) -> None:
        super().__init__()
        self._pool = pool

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD", b"POST"):
            return method_not_allowed(request, b"GET, HEAD, POST")
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        force = request.method == b"POST"
        d = Deferred.fromCoroutine(self._status(force))

        def answered(rows: list[dict[str, Any]]) -> None:
            _finish(request, gone, _json(request, {"accounts": rows, "forced": force}))

        def failed(failure: Failure) -> None:
            _log.failure("checking the accounts failed", failure)
            _finish(request, gone, _error(
                request, 500, "internal_error",
                "Subrouter failed to check the accounts; see its log"))

        d.addCallbacks(answered, failed)
        return NOT_DONE_YET

    async def _status(self, force: bool) -> list[dict[str, Any]]:
        accounts = self._pool.store.accounts()
        checks = [Deferred.fromCoroutine(self._one(a, force)) for a in accounts]
        results = await DeferredList(checks, consumeErrors=True)
        return [row for ok, row in results if ok]

    async def _one(self, account: Account, force: bool) -> dict[str, Any]:
        refresher = self._pool.refresher
        row: dict[str, Any] = {
            "id": account.id,
            "provider": _provider(account),
            "auth_mode": "oauth" if account.is_oauth else "apikey",
            "email": account.email,
            "source": account.source,
            "auth_checked": account.is_oauth,
            "auth_valid": None,
            "refreshed": False,
            "error": None,
        }
        if not account.is_oauth:
            row["error"] = self._pool.why_unusable(account)
            return row
        before = account.secret
        try:
            if force:
                current = self._pool.store.get(account.id) or account
                fresh = await refresher.refresh_rejected(current)
            else:
                fresh = await refresher.ensure_fresh(account)
        except RefreshFailed as e:
            row["auth_valid"] = False
            row["error"] = e.reason
            return row
        row["refreshed"] = fresh.secret != before
        problem = self._pool.why_unusable(fresh)
        expires = fresh.expires_at
        now = refresher.now()
        row["auth_valid"] = problem is None and (expires is None or expires > now)
        row["error"] = problem
        row["access_token_expires_in"] = None if expires is None else int(expires - now)
        return row
