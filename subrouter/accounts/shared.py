# -*- test-case-name: tests.test_state_redis -*-
"""
What token refresh needs from a store shared by several Subrouter instances
(Redis, in :mod:`subrouter.state`): a lock per account with an expiry, and
the newest token set of each account.

Refresh tokens rotate on use, so across instances exactly one may refresh an
account at a time, and it must first take any newer set another instance
already got. The protocol lives here, below the state backends, so the
refresher depends on the idea and not on Redis.
"""

from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred


@attrs.frozen
class TokenSet:
    """
    One account's tokens as a refresh leaves them. Secrets stay out of ``repr``.
    """

    access_token: str = attrs.field(repr=False)
    refresh_token: str = attrs.field(repr=False)
    id_token: str = attrs.field(repr=False)
    #: the access token's expiry (POSIX seconds): a later one is a newer set
    expires_at: float
    last_refresh: float

    def as_tokens(self) -> dict[str, str]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "id_token": self.id_token,
        }


class Lease(Protocol):
    def release(self) -> Deferred[None]:
        """
        Give the lock back (only if it is still ours). Never fails.
        """


class SharedTokens(Protocol):
    """
    The shared side of token refresh. Every method degrades instead of
    failing: while the shared store is unreachable, :meth:`acquire` gives
    None (the caller then relies on its local lock alone) and :meth:`newest`
    gives None.
    """

    def acquire(self, account_id: str) -> Deferred[Lease | None]:
        """
        Wait for the account's refresh lock (another instance may hold it
        while it refreshes), then hold it until released or expired.
        """

    def newest(self, account_id: str) -> Deferred[TokenSet | None]:
        """
        The newest token set any instance stored for the account.
        """

    def publish(self, account_id: str, tokens: TokenSet) -> Deferred[bool]:
        """
        Store a token set unless a newer one is there already.
        """
