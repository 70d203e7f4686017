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

import bisect
from collections.abc import Collection

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.store import Account
from subrouter.sessions import keys
from subrouter.sessions.identity import Identity
from subrouter.sessions.reasons import FORCED, MOVED, NEW, Reason
from subrouter.sessions.scheduler import Candidate, Choice, explain, order, standing
from subrouter.sessions.table import Assignment, SessionTable
from subrouter.sessions.usage import UsageBook, windows_from_event
from subrouter.upstream.routing import ANTHROPIC, OPENAI

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
        # each ranked candidate's order (standing, live + recent, id), sorted
        self._keys: list[tuple[int, int, float, float, int, str]] = []
        self._key_of: dict[str, tuple[int, int, float, float, int, str]] = {}
        table.on_count = self._recount
        self._ranked_key: tuple[int, int, float] | None = None

    def ranking(self, now: float) -> list[Candidate]:
        """
        Every account, best first, with its live and recent conversations.

        Rebuilt when the book or the store changed, or once a second as resets
        count down; in between, a change of an account's counts moves just
        that account to its new place (see :meth:`_recount`).
        """
        store = self.pool.store
        cached = self._ranked_key
        if (
            cached is not None
            and cached[0] == self.usage.version
            and cached[1] == store.version
            and now - cached[2] < RANKING_TTL
        ):
            return self._ranked
        live = self.table.own_live_counts(now)
        recent = self.table.recent_counts(now)
        entries = sorted(
            (order(c), c)
            for c in (
                Candidate(a.id, a.is_oauth, self.usage.score(a.id, a.is_oauth, now),
                          live.get(a.id, 0), recent.get(a.id, 0))
                for a in store.accounts()
            )
        )
        self._keys = [key for key, _ in entries]
        self._ranked = [c for _, c in entries]
        self._key_of = {c.id: key for key, c in entries}
        self._ranked_key = (self.usage.version, store.version, now)
        return self._ranked

    def _recount(self, account_id: str) -> None:
        """
        An account's live or recent count changed: move it to its new place
        in the kept ranking (a bisection, not a sort). Its standing is worked
        out again only when its recent count changed.
        """
        old = self._key_of.get(account_id)
        if old is None:
            return
        keys, ranked = self._keys, self._ranked
        index = bisect.bisect_left(keys, old)
        candidate = ranked[index]
        live, recent = self.table.counts_of(account_id)
        if live == candidate.sessions and recent == candidate.recent:
            return
        del keys[index], ranked[index]
        same_standing = recent == candidate.recent
        candidate = candidate.counted(live, recent)
        known = old[:4] if same_standing else standing(candidate)
        new = (*known, live + recent, account_id)
        index = bisect.bisect_left(keys, new)
        keys.insert(index, new)
        ranked.insert(index, candidate)
        self._key_of[account_id] = new

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
        return self.decide(identity, oauth_only=oauth_only, exclude=exclude)[0]

    def decide(
        self, identity: Identity, *, oauth_only: bool = False, exclude: Collection[str] = ()
    ) -> tuple[Account, Reason | None]:
        """
        The account for a request and why: the new placement's reason, or
        None when the conversation simply stays where it is (sticky; its
        assignment keeps the reason it got there).

        :raises NoAccount: when none can take it.
        """
        now = self.clock.seconds()
        session = identity.session
        store = self.pool.store
        provider = identity.provider
        if identity.forced is not None:
            return self._forced(identity, now, exclude)
        sticky = self.table.get(session.agent, session.key)
        moved_from: str | None = None
        cause: str | None = None
        if sticky is not None:
            cause = self._why_not_stay(sticky, now, oauth_only, exclude, provider)
            if cause is None:
                self.table.touch(session.agent, session.key, now, user_email=identity.email)
                account = store.get(sticky.account_id)
                assert account is not None
                return account, None
            moved_from = sticky.account_id
        choice = self.pick(now, provider, oauth_only, exclude)
        best = choice.chosen
        reason = (
            Reason(NEW, now, best.id, choice) if moved_from is None or moved_from == best.id
            else Reason(MOVED, now, best.id, choice, moved_from, cause)
        )
        self.table.assign(
            session.agent, session.key, best.id, now,
            fallback=session.fallback, user_email=identity.email, reason=reason,
        )
        account = store.get(best.id)
        assert account is not None
        if not best.oauth and not session.fallback and moved_from != best.id:
            # once per conversation (it stays on the key afterwards): this costs money
            _log.warn(
                "conversation {conversation} ({agent}) {moved} the pay-per-token API key "
                "{account}: no ChatGPT login can take it",
                conversation=session.key[:12], agent=session.agent, account=best.id,
                moved=f"moved from {moved_from} to" if moved_from else "placed on",
            )
        return account, reason

    def standings(self, now: float) -> list[tuple[Candidate, str | None]]:
        """
        Every account as a new conversation would see it now, best first,
        with live and recent counts, and why it cannot take one (or None).
        For explaining; :meth:`pick` is the fast path.
        """
        self.table.own_live_counts(now)
        self.table.recent_counts(now)
        store = self.pool.store
        out = []
        for candidate in self.ranking(now):
            account = store.get(candidate.id)
            if account is None:
                continue
            why = self.pool.why_unusable(account)
            if why is None and self.usage.exhausted_until(candidate.id, now) is not None:
                why = self.usage.get(candidate.id).exhausted_reason or "usage limit reached"
            out.append((candidate, why))
        out.sort(key=lambda pair: (pair[1] is not None, order(pair[0])))
        return out

    def why_not_stay(self, sticky: Assignment, now: float) -> str | None:
        """
        Why a conversation's next request would leave its account, or None.
        """
        provider = ANTHROPIC if sticky.agent == "claude" else OPENAI
        return self._why_not_stay(sticky, now, False, (), provider)

    def _why_not_stay(
        self, sticky: Assignment, now: float, oauth_only: bool, exclude: Collection[str],
        provider: str,
    ) -> str | None:
        """
        Why a conversation cannot stay on its account for this request, or
        None when it can.
        """
        account_id = sticky.account_id
        account = self.pool.store.get(account_id)
        if account is None:
            return "the account is no longer in the store"
        if account_id in exclude:
            usage = self.usage.get(account_id) if account_id in self.usage.ids() else None
            reason = usage.exhausted_reason if usage is not None else None
            return reason or "it failed this request"
        if account.provider != provider:
            return f"a {sticky.agent} conversation cannot use a{_credential(account.provider)}"
        if oauth_only and not account.is_oauth:
            return "this path needs a ChatGPT login"
        why = self.pool.why_unusable(account)
        if why is not None:
            return why
        if self.usage.exhausted_until(account_id, now) is not None:
            usage = self.usage.get(account_id)
            return usage.exhausted_reason or "it reached its usage limit"
        return None

    def pick(
        self, now: float, provider: str = OPENAI, oauth_only: bool = False,
        exclude: Collection[str] = (),
    ) -> Choice:
        """
        The best account for a new conversation and the next best, with the
        reason, without placing anything. The kept ranking is already in
        order, so this is the first two accounts that can take a request.

        :raises NoAccount: when none can take it.
        """
        # expire idle conversations and faded placements first: each one
        # moves its account in the kept ranking
        self.table.own_live_counts(now)
        self.table.recent_counts(now)
        ranked = self.ranking(now)
        shared = self.table.shared_counts
        if shared is not None:
            # every instance's live conversations (several workers): the kept
            # order counts this one's only, so order by the shared counts here
            ranked = sorted(
                (c.counted(shared.get(c.id, 0), c.recent) for c in ranked), key=order
            )
        store = self.pool.store
        best: Candidate | None = None
        second: Candidate | None = None
        for candidate in ranked:
            if candidate.id in exclude or (oauth_only and not candidate.oauth):
                continue
            account = store.get(candidate.id)
            if (
                account is None
                or account.provider != provider
                or self.pool.why_unusable(account) is not None
            ):
                continue
            if best is None:
                best = candidate
            else:
                second = candidate
                break  # kept in order: the first two that can take it
        if best is None:
            raise self._nothing(provider, oauth_only)
        chosen = best
        if chosen.oauth and chosen.score.exhausted:
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
        return explain(chosen, second)

    def _forced(
        self, identity: Identity, now: float, exclude: Collection[str]
    ) -> tuple[Account, Reason | None]:
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
        sticky = self.table.get(session.agent, session.key)
        if sticky is not None and sticky.account_id == account_id and sticky.reason is not None \
                and sticky.reason.kind == FORCED:
            self.table.touch(session.agent, session.key, now, user_email=identity.email)
            return account, None
        reason = Reason(FORCED, now, account_id, selector=selector,
                        moved_from=sticky.account_id if sticky is not None
                        and sticky.account_id != account_id else None)
        self.table.assign(
            session.agent, session.key, account_id, now,
            fallback=session.fallback, user_email=identity.email, reason=reason,
        )
        return account, reason

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
