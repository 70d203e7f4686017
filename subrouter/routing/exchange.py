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
  account (the conversation moves), up to ``MAX_ACCOUNTS_PER_REQUEST``.

How to send, and what an answer means, is the transport's business: it hands
:meth:`Exchange.run` an ``attempt`` callable that sends as one account and says
what happened with one of the verdicts below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import attrs
from twisted.internet.interfaces import IReactorTime

from subrouter.accounts.refresh import RefreshFailed, TokenRefresher
from subrouter.accounts.store import Account
from subrouter.routing.usage import UsagePoller, bounded
from subrouter.sessions.identity import Identity
from subrouter.sessions.placement import NoAccount, Placement

#: accounts one request may try when they turn out exhausted
MAX_ACCOUNTS_PER_REQUEST = 4
#: how long a new conversation waits for stale usage scores
USAGE_WAIT_BOUND = 1.5

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
class Gone:
    """
    The exchange ended without an answer to give (the client left, or the
    transport already answered).
    """


GONE = Gone()
AUTH_REJECTED = AuthRejected()

Verdict = Sent[T] | AuthRejected | OutOfQuota[H] | Gone
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
    """

    placement: Placement
    refresher: TokenRefresher
    identity: Identity
    clock: IReactorTime
    gone: Callable[[], bool]
    oauth_only: bool = False
    poller: UsagePoller | None = None
    tried: list[str] = attrs.Factory(list)

    async def run(self, attempt: Attempt[T, H]) -> Sent[T] | OutOfQuota[H] | NoAccount | Gone:
        """
        Try accounts until one answers, the client leaves or none is left.

        :return: the answer (``Sent``); the last account's ``OutOfQuota`` when
            no other account could take the request; ``NoAccount`` when no
            account was usable at all; ``GONE`` when the client left or the
            transport already answered.
        """
        if not await self._usage_fresh_enough():
            return GONE
        last: OutOfQuota[H] | None = None
        while True:
            try:
                account = self.placement.choose(
                    self.identity, oauth_only=self.oauth_only, exclude=self.tried
                )
            except NoAccount as e:
                return last if last is not None else e
            self.tried.append(account.id)
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
        self, account: Account, attempt: Attempt[T, H]
    ) -> Sent[T] | OutOfQuota[H] | Gone | None:
        """
        One account: fresh token, send, and on a 401 refresh once and resend.
        None when the account's token cannot be refreshed.
        """
        try:
            account = await self.refresher.ensure_fresh(account)
        except RefreshFailed:
            return None
        if self.gone():
            return GONE
        verdict = await attempt(account, account.is_oauth)
        if isinstance(verdict, AuthRejected):
            try:
                account = await self.refresher.refresh_rejected(account)
            except RefreshFailed:
                return None
            if self.gone():
                return GONE
            verdict = await attempt(account, False)
            if isinstance(verdict, AuthRejected):
                raise AssertionError("an attempt without may_refresh answered AuthRejected")
        return verdict

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
