# -*- test-case-name: tests.test_sessions_live -*-
"""
Polling the usage endpoints: ``wham/usage`` for every ChatGPT login, the
Anthropic OAuth usage endpoint for every Claude profile.

The poll runs at start and every ``--usage-interval``; a request that opens a
new conversation also asks for a refresh when the scores are older than
``--usage-score-ttl``, and waits a short, bounded time for it. One poll runs
at a time. A failed fetch is logged and scores that account as unknown-risky;
the poller never stops on an error.
"""

from __future__ import annotations

import json

import treq
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from subrouter.accounts.refresh import RefreshFailed, TokenRefresher
from subrouter.accounts.store import Account, AccountStore
from subrouter.config import DEFAULT_ANTHROPIC_USAGE_URL
from subrouter.errors import describe_failure_reason
from subrouter.sessions.anthropic import windows_from_oauth_usage
from subrouter.sessions.scheduler import Window
from subrouter.sessions.usage import UsageBook, windows_from_usage
from subrouter.upstream.routing import ANTHROPIC, ANTHROPIC_OAUTH_BETA

_log = Logger()

FETCH_TIMEOUT = 10.0


class UsagePoller:
    """
    :param score_ttl: scores older than this are refreshed before a new
        conversation is placed (0 turns that off).
    """

    def __init__(
        self,
        *,
        store: AccountStore,
        refresher: TokenRefresher,
        http: HTTPClient,
        usage_url: str,
        usage: UsageBook,
        clock: IReactorTime,
        score_ttl: float,
        anthropic_usage_url: str = DEFAULT_ANTHROPIC_USAGE_URL,
    ) -> None:
        self._store = store
        self._anthropic_url = anthropic_usage_url
        self._refresher = refresher
        self._http = http
        self._url = usage_url
        self._usage = usage
        self._clock = clock
        self.score_ttl = score_ttl
        self._running: Deferred[None] | None = None
        self._last_poll: float | None = None

    def run_once(self) -> Deferred[None]:
        """
        Poll every usable login (joining a poll already running). Never fails.
        """
        if self._running is not None:
            waiter: Deferred[None] = Deferred()
            self._running.addBoth(lambda _: waiter.callback(None))
            return waiter
        self._last_poll = self._clock.seconds()
        d = Deferred.fromCoroutine(self._poll_all())

        def done(result: object) -> None:
            self._running = None
            if result is not None and hasattr(result, "getTraceback"):
                _log.failure("usage poll failed", result)  # type: ignore[arg-type]

        d.addBoth(done)
        self._running = d
        return d

    def stale(self) -> bool:
        if self.score_ttl <= 0:
            return False
        if self._last_poll is None:
            return True
        return self._clock.seconds() - self._last_poll >= self.score_ttl

    def fresh(self) -> bool:
        """
        Whether a new conversation may be placed on the scores as they are:
        no poll is running and none is due.
        """
        return self._running is None and not self.stale()

    def refresh_if_stale(self) -> Deferred[None] | None:
        """
        Start a poll when the scores are older than the TTL; the Deferred
        fires when it is done. None when they are fresh enough.
        """
        if self._running is not None:
            return self.run_once()
        if not self.stale():
            return None
        return self.run_once()

    async def _poll_all(self) -> None:
        logins = [
            a for a in self._store.accounts()
            if a.is_oauth and a.problem is None and self._refresher.why_unusable(a) is None
        ]
        if not logins:
            return
        await DeferredList(
            [Deferred.fromCoroutine(self.fetch(a)) for a in logins], consumeErrors=True
        )

    async def fetch(self, account: Account) -> None:
        """
        Fetch one login's usage into the book. Never raises.
        """
        now = self._clock.seconds()
        try:
            account = await self._refresher.ensure_fresh(account)
        except RefreshFailed as e:
            self._usage.record_failure(account.id, e.reason, now)
            return
        headers: dict[bytes | str, list[bytes | str]] = {
            "Authorization": [f"Bearer {account.secret}"], "Accept": ["application/json"]
        }
        url = self._url
        if account.provider == ANTHROPIC:
            # cx-accounts.md §5.3: the bearer plus the OAuth beta flag
            url = self._anthropic_url
            headers["anthropic-beta"] = [ANTHROPIC_OAUTH_BETA.decode("ascii")]
        elif account.chatgpt_account_id:
            headers["ChatGPT-Account-ID"] = [account.chatgpt_account_id]
        try:
            response = await self._http.request(
                "GET", url, headers=headers, timeout=FETCH_TIMEOUT
            )
            raw = await treq.content(response)
        except Exception as e:
            reason = describe_failure_reason(e)
            if reason == "cancelled":  # only our own timeout cancels it
                reason = f"timed out after {FETCH_TIMEOUT:g}s"
            self._failed(account, reason)
            return
        if not 200 <= response.code < 300:
            self._failed(account, f"HTTP {response.code}")
            return
        try:
            document = json.loads(raw)
        except ValueError:
            self._failed(account, "the answer is not JSON")
            return
        now = self._clock.seconds()
        windows: list[Window]
        plan: str | None
        if account.provider == ANTHROPIC:
            windows, plan = windows_from_oauth_usage(document, now), account.plan
        else:
            windows, plan = windows_from_usage(document, now)
        if not windows:
            self._failed(account, "the answer holds no usage windows")
            return
        self._usage.record(account.id, windows, now, "poll", plan)

    def _failed(self, account: Account, reason: str) -> None:
        _log.warn("fetching the usage of {account} failed: {reason}", account=account.id,
                  reason=reason)
        self._usage.record_failure(account.id, reason, self._clock.seconds())


def bounded(d: Deferred[None], clock: IReactorTime, seconds: float) -> Deferred[None]:
    """
    A Deferred that fires when ``d`` does or after ``seconds``, whichever
    comes first; ``d`` itself goes on.
    """
    if d.called:
        return succeed(None)
    out: Deferred[None] = Deferred()
    def give_up() -> None:
        if not out.called:
            out.callback(None)

    timer = clock.callLater(seconds, give_up)

    def fire(_: object) -> None:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(None)

    d.addBoth(fire)
    return out
