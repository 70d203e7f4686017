# -*- test-case-name: tests.test_session_table -*-
"""
Sticky assignments: which account each conversation is pinned to, and how
many conversations are live on each account.

Lookups and updates are O(1). A conversation counts as live while it has been
seen within the idle TTL (requests with only a fallback key, such as model
polls, are not conversations and never count); the live counts are kept up to date incrementally
(an ordered walk drops the ones that went idle), so placement never scans
every conversation ever seen.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import attrs

SessionId = tuple[str, str]  # (agent, key)


@attrs.define
class Assignment:
    agent: str
    key: str
    account_id: str
    fallback: bool
    first_seen: float
    last_seen: float
    requests: int = 0
    user_email: str | None = None

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class SessionTable:
    """
    :param idle_ttl: seconds after which a conversation no longer counts as
        live on its account (it keeps its assignment).
    """

    def __init__(self, idle_ttl: float) -> None:
        self.idle_ttl = idle_ttl
        self._all: dict[SessionId, Assignment] = {}
        # live conversations, least recently seen first
        self._live: OrderedDict[SessionId, None] = OrderedDict()
        self._counts: dict[str, int] = {}
        self.version = 0  # bumped on every change worth saving

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Assignment]:
        return iter(self._all.values())

    def get(self, agent: str, key: str) -> Assignment | None:
        return self._all.get((agent, key))

    def _expire(self, now: float) -> None:
        horizon = now - self.idle_ttl
        live = self._live
        while live:
            sid = next(iter(live))
            assignment = self._all.get(sid)
            if assignment is not None and assignment.last_seen > horizon:
                break
            live.popitem(last=False)
            if assignment is not None:
                self._count(assignment.account_id, -1)

    def _count(self, account_id: str, delta: int) -> None:
        value = self._counts.get(account_id, 0) + delta
        if value > 0:
            self._counts[account_id] = value
        else:
            self._counts.pop(account_id, None)

    def live_counts(self, now: float) -> dict[str, int]:
        """
        Live conversations per account id.
        """
        self._expire(now)
        return self._counts

    def touch(
        self, agent: str, key: str, now: float, *, user_email: str | None = None
    ) -> Assignment | None:
        """
        Record a request of a known conversation; None when it is unknown.
        A new email replaces the stored one; no email keeps it.
        """
        sid = (agent, key)
        assignment = self._all.get(sid)
        if assignment is None:
            return None
        self._expire(now)
        if assignment.fallback:
            pass  # catch-all traffic (model polls, ...) is not a conversation
        elif sid in self._live:
            self._live.move_to_end(sid)
        else:
            self._live[sid] = None
            self._count(assignment.account_id, 1)
        assignment.last_seen = now
        assignment.requests += 1
        if user_email and user_email != assignment.user_email:
            assignment.user_email = user_email
            self.version += 1
        return assignment

    def assign(
        self,
        agent: str,
        key: str,
        account_id: str,
        now: float,
        *,
        fallback: bool = False,
        user_email: str | None = None,
    ) -> Assignment:
        """
        Pin a conversation to an account (new, or moved) and count the request.
        """
        sid = (agent, key)
        self._expire(now)
        assignment = self._all.get(sid)
        if assignment is None:
            assignment = Assignment(agent, key, account_id, fallback, now, now, 0, user_email)
            self._all[sid] = assignment
        else:
            if sid in self._live:
                self._live.pop(sid)
                self._count(assignment.account_id, -1)
            assignment.account_id = account_id
            if user_email:
                assignment.user_email = user_email
        assignment.last_seen = now
        assignment.requests += 1
        if not assignment.fallback:
            self._live[sid] = None
            self._count(account_id, 1)
        self.version += 1
        return assignment

    def load(self, rows: list[dict[str, Any]]) -> None:
        """
        Restore saved assignments (none counts as live until seen again).
        """
        for row in rows:
            try:
                assignment = Assignment(
                    agent=str(row["agent"]),
                    key=str(row["key"]),
                    account_id=str(row["account_id"]),
                    fallback=bool(row.get("fallback", False)),
                    first_seen=float(row["first_seen"]),
                    last_seen=float(row["last_seen"]),
                    requests=int(row.get("requests", 0)),
                    user_email=row.get("user_email"),
                )
            except (KeyError, TypeError, ValueError):
                continue
            self._all[(assignment.agent, assignment.key)] = assignment

    def dump(self) -> list[dict[str, Any]]:
        return [a.as_json() for a in self._all.values()]
