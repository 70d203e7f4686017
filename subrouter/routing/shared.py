# -*- test-case-name: tests.test_shared_live -*-
"""
Placement across instances: before a request is placed, the shared state
(Redis) says where its conversation is, or, for a new one, how many live
conversations every account has over all instances; after, it is told where
a conversation was placed or moved.

A known conversation costs one round trip (a script that reads and touches
its assignment); a new one two (the counts, then the assignment, which keeps
the first instance's choice when two place it at once). While Redis is
unreachable none is made: this instance places on its own view.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime

from subrouter.accounts.store import Account
from subrouter.sessions.identity import Identity
from subrouter.sessions.placement import Placement
from subrouter.state.link import Unavailable
from subrouter.state.redis import SharedAssignment, SharedSessions


@attrs.define
class View:
    """
    What the shared state said of one request's conversation.

    :ivar account_id: the account it has there (None: none yet).
    :ivar counts: the live counts of all instances, for placing it anew.
    """

    account_id: str | None
    counts: dict[str, int] | None


class SharedPlacement:
    """
    :param placement: this instance's placement, whose table follows Redis.
    :param sessions: assignments and live counts in Redis.
    """

    def __init__(self, placement: Placement, sessions: SharedSessions,
                 clock: IReactorTime) -> None:
        self.placement = placement
        self.sessions = sessions
        self.clock = clock

    async def look_up(self, identity: Identity) -> View | None:
        """
        Ask where the conversation is; this table takes the answer. None
        while Redis is unreachable.
        """
        if not self.sessions.up:
            return None
        session = identity.session
        now = self.clock.seconds()
        try:
            found = await self.sessions.lookup(
                session.agent, session.key, now, identity.email,
                self.placement.pool.store.ids(),
            )
        except Unavailable:
            return None
        if found.assignment is not None:
            self._adopt(identity, found.assignment)
            return View(found.assignment.account_id, None)
        return View(None, found.counts)

    def _adopt(self, identity: Identity, a: SharedAssignment) -> None:
        session = identity.session
        self.placement.table.adopt(
            session.agent, session.key, a.account_id, self.clock.seconds(),
            first_seen=a.first_seen, last_seen=a.last_seen, requests=a.requests,
            fallback=a.fallback, user_email=a.user_email,
        )

    def choose(self, identity: Identity, view: View | None, *, oauth_only: bool,
               exclude: list[str]) -> Account:
        """
        :meth:`Placement.choose`, counting every instance's live
        conversations when the conversation is new.

        :raises NoAccount: when no account can take it.
        """
        table = self.placement.table
        table.shared_counts = view.counts if view is not None else None
        try:
            return self.placement.choose(identity, oauth_only=oauth_only, exclude=exclude)
        finally:
            table.shared_counts = None

    async def placed(self, identity: Identity, view: View | None, account: Account, *,
                     oauth_only: bool, exclude: list[str]) -> Account:
        """
        Tell the shared state where the conversation now is, when that
        changed. If another instance placed the same new conversation first,
        follow it.
        """
        if view is None or view.account_id == account.id:
            return account
        session = identity.session
        new = view.account_id is None
        try:
            stored = await self.sessions.assign(
                session.agent, session.key, account.id, self.clock.seconds(),
                fallback=session.fallback, email=identity.email, only_if_new=new,
            )
        except Unavailable:
            return account
        if view.counts is not None and not session.fallback:
            view.counts[account.id] = view.counts.get(account.id, 0) + 1
        view.account_id = account.id
        if stored is None or stored.account_id == account.id or not new:
            return account
        # two instances placed this new conversation at once: the first wins
        self._adopt(identity, stored)
        view.account_id = stored.account_id
        followed = self.placement.choose(identity, oauth_only=oauth_only, exclude=exclude)
        return followed
