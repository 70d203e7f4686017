# -*- test-case-name: tests.test_placement -*-
"""
Placing requests on accounts: the sticky assignment of a known conversation,
a forced account, or the scheduler's pick for a new conversation.

A conversation is only ever placed on its agent's provider: Claude Code's on
Claude profiles and Anthropic keys, Codex's on ChatGPT logins and OpenAI keys
(:func:`~subrouter.sessions.identity.provider_for_agent`); one with none of
its kind gets a 503 saying how to add one, never another provider's account.

Scores are cached and recomputed only when the rate-limit book or the store
changed, or once a second as resets count down; the order of candidates is
kept sorted, so placing a conversation walks a few entries, not every account.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.store import Account
from subrouter.sessions import keys
from subrouter.sessions.identity import Identity
from subrouter.sessions.scheduler import Candidate, rank, standing
from subrouter.sessions.table import SessionTable
from subrouter.sessions.usage import UsageBook, windows_from_event
from subrouter.upstream.routing import ANTHROPIC

_log = Logger()

#: seconds a cached ranking stays valid while nothing else changes
RANKING_TTL = 1.0
#: below this headroom a login's streams are looked at before they are relayed
AT_RISK_HEADROOM = 0.10


class NoAccount(Exception):
    """
    No account can take the request; carries the answer to give.
    """

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


class Placement:
    """
    :param pool: the accounts and their usability.
    :param table: the sticky assignments.
    :param usage: the rate-limit book.
    :param clock: the source of time.
    """

    def __init__(
        self, pool: AccountPool, table: SessionTable, usage: UsageBook, clock: IReactorTime
    ) -> None:
        self.pool = pool
        self.table = table
        self.usage = usage
        self.clock = clock
        self._ranked: list[Candidate] = []
        self._ranked_key: tuple[int, int, float] | None = None

    def ranking(self, now: float) -> list[Candidate]:
        """
        Every account, best first, ignoring live conversation counts.
        """
        store = self.pool.store
        key = (self.usage.version, store.version, now)
        cached = self._ranked_key
        if (
            cached is not None
            and cached[0] == key[0]
            and cached[1] == key[1]
            and now - cached[2] < RANKING_TTL
        ):
            return self._ranked
        self._ranked = rank(
            Candidate(a.id, a.is_oauth, self.usage.score(a.id, a.is_oauth, now))
            for a in store.accounts()
        )
        self._ranked_key = (self.usage.version, store.version, now)
        return self._ranked

    def at_risk(self, account: Account) -> bool:
        """
        Whether a login is known to be close enough to its limits (under 10%
        headroom) that a stream should be looked at before it is relayed, so a
        usage-limit error at its start can still move the request to another
        account. Holding costs the time between the upstream's headers and its
        first event, so it is not done on guesses.
        """
        if not account.is_oauth:
            return False
        now = self.clock.seconds()
        usage = self.usage.get(account.id) if account.id in self.usage.ids() else None
        if usage is None or usage.observed_at is None:
            return False
        score = self.usage.score(account.id, True, now)
        return score.headroom < AT_RISK_HEADROOM or score.short_headroom < AT_RISK_HEADROOM

    def mark_exhausted(self, account_id: str, for_seconds: float | None, why: str) -> None:
        """
        Keep an account out of new placements until its limit resets: the
        given time, else the reset of a full window, else the book's default.
        """
        usage = self.usage
        now = self.clock.seconds()
        if not for_seconds:
            resets = [w.reset_after for w in usage.current_windows(account_id, now)
                      if w.used_percent >= 100 and w.reset_after > 0]
            for_seconds = min(resets) if resets else None
        until = usage.mark_exhausted(account_id, now, for_seconds,
                                     f"usage limit reached ({why})")
        _log.warn(
            "account {account} reached its usage limit ({why}); not placing new "
            "conversations on it for {seconds}s",
            account=account_id, why=why, seconds=int(until - now),
        )

    def observe_rate_limits(self, account_id: str, event: object, source: str) -> None:
        """
        Record the windows of a ``codex.rate_limits`` event (anything else is
        ignored).
        """
        if not isinstance(event, dict) or event.get("type") != "codex.rate_limits":
            return
        now = self.clock.seconds()
        windows, plan = windows_from_event(event, now)
        self.usage.record(account_id, windows, now, source, plan)

    def knows(self, identity: Identity) -> bool:
        """
        Whether the request's conversation already has an account.
        """
        session = identity.session
        return self.table.get(session.agent, session.key) is not None

    def choose(
        self, identity: Identity, *, oauth_only: bool = False, exclude: Collection[str] = ()
    ) -> Account:
        """
        The account for a request, recording the assignment.

        :raises NoAccount: when none can take it.
        """
        now = self.clock.seconds()
        session = identity.session
        store = self.pool.store
        provider = identity.provider
        if identity.forced is not None:
            return self._forced(identity, now, exclude)
        sticky = self.table.get(session.agent, session.key)
        if sticky is not None and sticky.account_id not in exclude:
            account = store.get(sticky.account_id)
            if (
                account is not None
                and account.provider == provider
                and (account.is_oauth or not oauth_only)
                and self.pool.why_unusable(account) is None
                and self.usage.exhausted_until(account.id, now) is None
            ):
                self.table.touch(session.agent, session.key, now, user_email=identity.email)
                return account
        best = self._pick(now, provider, oauth_only, exclude)
        self.table.assign(
            session.agent, session.key, best.id, now,
            fallback=session.fallback, user_email=identity.email,
        )
        account = store.get(best.id)
        assert account is not None
        if not best.oauth and not session.fallback and (
            sticky is None or sticky.account_id != best.id
        ):
            # once per conversation (it stays on the key afterwards): this costs money
            _log.warn(
                "conversation {conversation} ({agent}) {moved} the pay-per-token API key "
                "{account}: no ChatGPT login can take it",
                conversation=session.key[:12], agent=session.agent, account=best.id,
                moved=f"moved from {sticky.account_id} to" if sticky else "placed on",
            )
        return account

    def _pick(
        self, now: float, provider: str, oauth_only: bool, exclude: Collection[str]
    ) -> Candidate:
        counts = self.table.live_counts(now)
        store = self.pool.store
        best: Candidate | None = None
        best_order: tuple[Any, ...] | None = None
        for candidate in self.ranking(now):
            if candidate.id in exclude or (oauth_only and not candidate.oauth):
                continue
            account = store.get(candidate.id)
            if (
                account is None
                or account.provider != provider
                or self.pool.why_unusable(account) is not None
            ):
                continue
            order = standing(candidate)
            if best_order is not None and order != best_order:
                break  # the ranking is sorted: nothing further can win
            sessions = counts.get(candidate.id, 0)
            if best is None or sessions < best.sessions:
                best, best_order = attrs.evolve(candidate, sessions=sessions), order
        if best is None:
            raise self._nothing(provider, oauth_only)
        if best.oauth and best.score.exhausted:
            soonest = min(
                (u for u in (self.usage.exhausted_until(a.id, now) for a in store.accounts()
                             if a.provider == provider) if u),
                default=None,
            )
            when = f" (the first resets in {int(soonest - now)}s)" if soonest else ""
            add = "cx claude add" if provider == ANTHROPIC else "cx add"
            raise NoAccount(
                503, "usage_limit_reached",
                f"every account has reached its usage limit{when}; add one with `{add}`",
            )
        return best

    def _forced(self, identity: Identity, now: float, exclude: Collection[str]) -> Account:
        store = self.pool.store
        selector = identity.forced or ""
        account_id = keys.match_account(selector, ((a.id, a.email) for a in store.accounts()))
        if account_id is None:
            raise NoAccount(503, "unknown_account", f'requested account "{selector}" not found')
        account = store.get(account_id)
        assert account is not None
        if account_id in exclude:
            raise NoAccount(
                503, "account_unavailable", f"the requested account {account_id} failed"
            )
        if account.provider != identity.provider:
            raise NoAccount(
                503, "account_unavailable",
                f"the requested account {account_id} is a{_credential(account.provider)}, "
                f"which a {identity.session.agent} conversation cannot use",
            )
        why = self.pool.why_unusable(account)
        if why is not None:
            raise NoAccount(503, "account_unavailable", f"account {account_id}: {why}")
        session = identity.session
        self.table.assign(
            session.agent, session.key, account_id, now,
            fallback=session.fallback, user_email=identity.email,
        )
        return account

    def _nothing(self, provider: str, oauth_only: bool) -> NoAccount:
        store = self.pool.store
        own = [a for a in store.accounts() if a.provider == provider]
        if provider == ANTHROPIC:
            add = "run `cx claude add` or `cx add-key --provider anthropic`"
            if not own:
                return NoAccount(503, "no_usable_account",
                                 f"no Claude profile or Anthropic key: {add}")
            message = f"no usable Claude profile or Anthropic key right now; {add}"
        else:
            if not own:
                return NoAccount(
                    503, "no_usable_account",
                    "no accounts are set up: run `cx add` to add a ChatGPT login "
                    "(or `cx add-key` for an API key)",
                )
            kind = "ChatGPT login" if oauth_only else "account"
            message = f"no usable {kind} right now; run `cx add` to add one"
        details = [f"{a.id}: {why}" for a, why in self.pool.unusable() if a.provider == provider]
        if details:
            message += " (" + "; ".join(details) + ")"
        return NoAccount(503, "no_usable_account", message)


def _credential(provider: str) -> str:
    return "n Anthropic credential" if provider == ANTHROPIC else " ChatGPT/OpenAI credential"
