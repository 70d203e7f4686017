# -*- test-case-name: tests.test_exchange -*-
"""
The exchange the HTTP proxy and the WebSocket relay share: place the
conversation, make the token fresh, send, and on the way:

- a 401 from the upstream refreshes the token once and sends once more on the
  same account (the token may have been revoked or rotated early);
- an account whose token cannot be refreshed is skipped (it is now unusable,
  with the reason shown);
- an answer saying the account ran out of quota marks it exhausted and, while
  nothing has reached the client, places the request on the next best
  account (the conversation moves), up to ``MAX_ACCOUNTS_PER_REQUEST``;
- an answer saying the upstream is overloaded (Anthropic's 529, Codex's "at
  capacity") is not the account's fault and moving would throw the
  conversation's prompt cache away: while nothing has reached the client the
  same request is sent again on the same account after a pause (honouring
  ``Retry-After``, doubling otherwise), until ``overload_wait`` seconds are
  spent; then the upstream's error is the answer. The account is never marked.

How to send, and what an answer means, is the transport's business: it hands
:meth:`Exchange.run` an ``attempt`` callable that sends as one account and says
what happened with one of the verdicts below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from subrouter.accounts.refresh import RefreshFailed, TokenRefresher
from subrouter.accounts.store import Account
from subrouter.routing.shared import SharedPlacement
from subrouter.routing.usage import UsagePoller, bounded
from subrouter.sessions.identity import Identity
from subrouter.sessions.placement import NoAccount, Placement
from subrouter.sessions.reasons import STICKY, Reason

#: accounts one request may try when they turn out exhausted
MAX_ACCOUNTS_PER_REQUEST = 4
#: how long a new conversation waits for stale usage scores
USAGE_WAIT_BOUND = 1.5
#: the first pause before an overloaded upstream is asked again, doubling
#: after each further overload up to the cap, within the request's budget
OVERLOAD_FIRST_PAUSE = 1.0
OVERLOAD_MAX_PAUSE = 30.0
#: a Retry-After of 0 still pauses this long, so the budget always runs down
OVERLOAD_MIN_PAUSE = 0.5

_log = Logger()

T = TypeVar("T")
H = TypeVar("H")


@attrs.frozen
class Sent(Generic[T]):
    """
    The attempt is over, whatever the answer was: nothing more to try.
    """

    value: T


@attrs.frozen
class AuthRejected:
    """
    The upstream refused the credentials (HTTP 401) and nothing reached the
    client: refresh the token and try the same account once more.
    """


@attrs.frozen
class OutOfQuota(Generic[H]):
    """
    The account has run out and nothing reached the client.

    :ivar held: what to give the client if no other account can take the
        request (an error answer read so far), or None.
    :ivar retry_after: seconds the upstream said to wait, if it said.
    :ivar why: what showed it, for the exhaustion mark.
    """

    held: H | None
    retry_after: float | None
    why: str


@attrs.frozen
class Overloaded(Generic[H]):
    """
    The upstream is overloaded right now (not the account's fault) and
    nothing reached the client.

    :ivar held: the upstream's error, the answer once waiting is given up.
    :ivar retry_after: seconds the upstream said to wait, if it said.
    :ivar why: what showed it, for the log.
    :ivar drop: lets go of ``held`` when the request is sent again instead.
    """

    held: H
    retry_after: float | None
    why: str
    drop: Callable[[], None] = lambda: None


def overload_pause(
    waits: int, retry_after: float | None, remaining: float
) -> float | None:
    """
    How long to wait before asking an overloaded upstream again, or None
    when the budget does not allow another try.

    :param waits: how many pauses this request already took.
    :param retry_after: the upstream's ``Retry-After``, if any: never asked
        again sooner, and given up at once when it is beyond the budget.
    :param remaining: seconds of the budget left.
    """
    if retry_after is not None and retry_after >= 0:
        pause = max(retry_after, OVERLOAD_MIN_PAUSE)
        return pause if pause <= remaining else None
    pause = min(OVERLOAD_FIRST_PAUSE * (2 ** waits), OVERLOAD_MAX_PAUSE, remaining)
    return pause if pause >= OVERLOAD_MIN_PAUSE else None


@attrs.frozen
class Gone:
    """
    The exchange ended without an answer to give (the client left, or the
    transport already answered).
    """


GONE = Gone()
AUTH_REJECTED = AuthRejected()

Verdict = Sent[T] | AuthRejected | OutOfQuota[H] | Overloaded[H] | Gone
#: ``attempt(account, may_refresh)``: send as ``account``; ``may_refresh`` is
#: False on the retry after a refresh, when a 401 is the answer to give
Attempt = Callable[[Account, bool], Awaitable["Verdict[T, H]"]]


@attrs.define
class Exchange(Generic[T, H]):
    """
    One request's way through placement.

    :param placement: places the conversation and keeps the exhaustion marks.
    :param refresher: keeps OAuth tokens fresh.
    :param identity: who is asking, for which conversation.
    :param oauth_only: only ChatGPT logins can serve this path.
    :param gone: tells whether the client has left (checked after each wait).
    :param poller: refreshes stale usage before a new conversation is placed.
    :param overload_wait: seconds one request may spend waiting out an
        overloaded upstream on its account (0: never wait).
    :param shared: placement across instances (``--state redis://``).
    """

    placement: Placement
    refresher: TokenRefresher
    identity: Identity
    clock: IReactorTime
    gone: Callable[[], bool]
    oauth_only: bool = False
    poller: UsagePoller | None = None
    overload_wait: float = 0.0
    shared: SharedPlacement | None = None
    tried: list[str] = attrs.Factory(list)
    #: seconds spent waiting out overloads so far
    waited: float = 0.0
    waits: int = 0
    #: why the last account tried was chosen (None: the conversation's own)
    reason: Reason | None = None
    #: the account place_now() chose, until run() takes its first verdict
    _first: Account | None = attrs.field(default=None, init=False)

    @property
    def why(self) -> str:
        """
        The short reason for the request log: ``sticky``, ``new:...``,
        ``moved<...``, ``forced``, or ``-`` before any account was chosen.
        """
        if self.reason is not None:
            return self.reason.short()
        return STICKY if self.tried else "-"

    def place_now(self) -> Account | None:
        """
        The first account, when it can be chosen at once: no placement shared
        with other instances, usage scores fresh enough for this
        conversation, and the account's token fresh. The transport may then
        send the first attempt itself, without waiting on anything, and hand
        its verdict to :meth:`run` as ``first``. None when :meth:`run` must
        place the request from the start.
        """
        if self.shared is not None or self.tried:
            return None
        poller = self.poller
        if not (
            poller is None
            or self.identity.forced is not None
            or self.placement.knows(self.identity)
            or poller.fresh()
        ):
            return None
        try:
            account, reason = self.placement.decide(self.identity, oauth_only=self.oauth_only)
        except NoAccount:
            return None  # run() says so
        if self.refresher.needs_refresh(account):
            return None
        self.tried.append(account.id)
        self.reason = reason
        self._first = account
        return account

    async def run(
        self, attempt: Attempt[T, H], first: Awaitable[Verdict[T, H]] | None = None
    ) -> Sent[T] | OutOfQuota[H] | Overloaded[H] | NoAccount | Gone:
        """
        Try accounts until one answers, the client leaves or none is left.

        :param first: the verdict of a first attempt already sent on the
            account :meth:`place_now` chose; the exchange goes on from it.
        :return: the answer (``Sent``); the last account's ``OutOfQuota`` when
            no other account could take the request; ``Overloaded`` when the
            upstream stayed overloaded for the whole budget; ``NoAccount``
            when no account was usable at all; ``GONE`` when the client left
            or the transport already answered.
        """
        shared = self.shared
        view = None
        if first is None:
            view = await shared.look_up(self.identity) if shared is not None else None
            if not await self._usage_fresh_enough():
                return GONE
        last: OutOfQuota[H] | None = None
        while True:
            if first is not None:
                if self._first is None:
                    raise AssertionError("a first verdict without place_now()")
                account, self._first = self._first, None
                verdict = await self._on(account, attempt, first)
                first = None
            else:
                try:
                    if shared is None:
                        account, reason = self.placement.decide(
                            self.identity, oauth_only=self.oauth_only, exclude=self.tried
                        )
                    else:
                        account, reason = shared.decide(
                            self.identity, view, oauth_only=self.oauth_only, exclude=self.tried
                        )
                        placed = await shared.placed(self.identity, view, account,
                                                     oauth_only=self.oauth_only,
                                                     exclude=self.tried)
                        if placed.id != account.id:
                            reason = None  # another instance placed it first: followed
                        account = placed
                except NoAccount as e:
                    return last if last is not None else e
                self.tried.append(account.id)
                self.reason = reason
                verdict = await self._on(account, attempt)
            if isinstance(verdict, OutOfQuota):
                self.placement.mark_exhausted(account.id, verdict.retry_after, verdict.why)
                last = verdict
                if self.identity.forced is None and len(self.tried) < MAX_ACCOUNTS_PER_REQUEST:
                    continue  # replay on the next best account; the conversation moves
                return last
            if verdict is None:
                continue  # the token could not be refreshed: the next account
            return verdict

    async def _on(
        self, account: Account, attempt: Attempt[T, H],
        first: Awaitable[Verdict[T, H]] | None = None,
    ) -> Sent[T] | OutOfQuota[H] | Overloaded[H] | Gone | None:
        """
        One account: send (waiting out overloads), and on a 401 refresh once
        and resend. None when the account's token cannot be refreshed.

        :param first: the verdict of an attempt already sent on it.
        """
        while True:
            verdict = await self._once(account, attempt, first)
            first = None
            if not isinstance(verdict, Overloaded):
                return verdict
            pause = overload_pause(
                self.waits, verdict.retry_after, self.overload_wait - self.waited
            )
            if pause is None:
                _log.warn(
                    "the upstream is still overloaded ({why}) for account {account} after "
                    "{waited}s of waiting; passing its error on",
                    why=verdict.why, account=account.id, waited=round(self.waited, 1),
                )
                return verdict
            verdict.drop()
            self.waits += 1
            self.waited += pause
            _log.info(
                "the upstream is overloaded ({why}) for account {account}: waiting {pause}s "
                "before sending again on the same account (wait {n}, {left}s of the "
                "overload budget left)",
                why=verdict.why, account=account.id, pause=round(pause, 1), n=self.waits,
                left=round(self.overload_wait - self.waited, 1),
            )
            await deferLater(self.clock, pause, lambda: None)
            if self.gone():
                return GONE
            # a long wait may have taken the token close to its expiry
            current = self.placement.pool.store.get(account.id)
            account = current if current is not None else account

    async def _once(
        self, account: Account, attempt: Attempt[T, H],
        first: Awaitable[Verdict[T, H]] | None = None,
    ) -> Sent[T] | OutOfQuota[H] | Overloaded[H] | Gone | None:
        if first is not None:
            verdict = await first
        else:
            fresh = await self._refreshed(self.refresher.ensure_fresh, account)
            if not isinstance(fresh, Account):
                return fresh
            account = fresh
            verdict = await attempt(account, account.is_oauth)
        if isinstance(verdict, AuthRejected):
            fresh = await self._refreshed(self.refresher.refresh_rejected, account)
            if not isinstance(fresh, Account):
                return fresh
            verdict = await attempt(fresh, False)
            if isinstance(verdict, AuthRejected):
                raise AssertionError("an attempt without may_refresh answered AuthRejected")
        return verdict

    async def _refreshed(
        self, refresh: Callable[[Account], Awaitable[Account]], account: Account
    ) -> Account | Gone | None:
        """
        The account as ``refresh`` gives it back; None when the refresh
        failed, ``GONE`` when the client left meanwhile.
        """
        try:
            account = await refresh(account)
        except RefreshFailed:
            return None
        return GONE if self.gone() else account

    async def _usage_fresh_enough(self) -> bool:
        """
        A new conversation is placed on fresh usage scores: wait a short,
        bounded time for a poll when they are stale. False when the client
        left meanwhile.
        """
        poller = self.poller
        if poller is None or self.identity.forced is not None:
            return True
        if self.placement.knows(self.identity):
            return True
        stale = poller.refresh_if_stale()
        if stale is None:
            return True
        await bounded(stale, self.clock, USAGE_WAIT_BOUND)
        return not self.gone()
