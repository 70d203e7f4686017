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

import operator
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from subrouter.sessions.reasons import Reason
from subrouter.sessions.scheduler import RECENT

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
    #: when it came to its current account
    placed_at: float = 0.0
    #: why it is there (None for assignments saved before reasons existed)
    reason: Reason | None = None
    #: how many times it moved to another account
    moves: int = 0

    def as_json(self) -> dict[str, Any]:
        return row(_FIELD_VALUES(self))


_FIELD_NAMES = tuple(field.name for field in attrs.fields(Assignment))
_FIELD_VALUES = operator.attrgetter(*_FIELD_NAMES)


def row(values: tuple[Any, ...]) -> dict[str, Any]:
    """
    One assignment's :meth:`~SessionTable.dump` row from its fields as
    :meth:`~SessionTable.snapshot` takes them (any thread).
    """
    fields = dict(zip(_FIELD_NAMES, values, strict=True))
    reason = fields["reason"]
    fields["reason"] = reason.dump() if reason is not None else None
    return fields


def rows(snapshot: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """
    :meth:`SessionTable.dump`'s rows from a :meth:`SessionTable.snapshot`
    (any thread: what it reads no longer changes).
    """
    return [row(values) for values in snapshot]


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
        # placements of the last RECENT seconds, oldest first, and their counts
        self._recent: deque[tuple[float, str]] = deque()
        self._recent_counts: dict[str, int] = {}
        self.version = 0  # bumped on every change worth saving
        #: the conversations whose rows changed since take_changed (a dict for
        #: its order: new ones come in the order they were added to _all)
        self._changed: dict[SessionId, None] = {}
        #: the conversations forgotten since take_changed
        self._forgotten: list[SessionId] = []
        #: called with an account id whenever its live or recent count changed
        self.on_count: Callable[[str], None] | None = None
        #: the live counts of every instance sharing the state, while one
        #: placement is made with them (see subrouter.routing.shared)
        self.shared_counts: dict[str, int] | None = None

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
        if self.on_count is not None:
            self.on_count(account_id)

    def counts_of(self, account_id: str) -> tuple[int, int]:
        """
        An account's live and recent counts as they stand (nothing expired).
        """
        return self._counts.get(account_id, 0), self._recent_counts.get(account_id, 0)

    def live_counts(self, now: float) -> dict[str, int]:
        """
        Live conversations per account id (of every instance, while
        :attr:`shared_counts` is set).
        """
        if self.shared_counts is not None:
            return self.shared_counts
        self._expire(now)
        return self._counts

    def recent_counts(self, now: float) -> dict[str, int]:
        """
        Conversations placed (new or moved) on each account in the last
        :data:`~subrouter.sessions.scheduler.RECENT` seconds.
        """
        recent = self._recent
        horizon = now - RECENT
        counts = self._recent_counts
        while recent and recent[0][0] <= horizon:
            _, account_id = recent.popleft()
            left = counts[account_id] - 1
            if left:
                counts[account_id] = left
            else:
                del counts[account_id]
            if self.on_count is not None:
                self.on_count(account_id)
        return counts

    def own_live_counts(self, now: float) -> dict[str, int]:
        """
        This instance's own live conversations per account id.
        """
        self._expire(now)
        return self._counts

    def adopt(
        self, agent: str, key: str, account_id: str, now: float, *, first_seen: float,
        last_seen: float, requests: int, fallback: bool, user_email: str | None,
    ) -> Assignment:
        """
        Follow an assignment another instance made or moved (the shared
        state's answer wins over this table's).
        """
        sid = (agent, key)
        self._expire(now)
        self._changed[sid] = None
        assignment = self._all.get(sid)
        if assignment is None:
            assignment = Assignment(agent, key, account_id, fallback, first_seen,
                                    min(last_seen, now), requests, user_email)
            self._all[sid] = assignment
            self.version += 1
            return assignment
        if assignment.account_id != account_id:
            if sid in self._live:
                self._live.pop(sid)
                self._count(assignment.account_id, -1)
            assignment.account_id = account_id
            self.version += 1
        assignment.first_seen = min(assignment.first_seen, first_seen)
        assignment.requests = max(assignment.requests, requests)
        if user_email and user_email != assignment.user_email:
            assignment.user_email = user_email
            self.version += 1
        return assignment

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
        self._changed[sid] = None
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
        reason: Reason | None = None,
    ) -> Assignment:
        """
        Pin a conversation to an account (new, or moved) and count the request.
        """
        sid = (agent, key)
        self._expire(now)
        assignment = self._all.get(sid)
        if assignment is None:
            assignment = Assignment(agent, key, account_id, fallback, now, now, 0, user_email,
                                    placed_at=now)
            self._all[sid] = assignment
            placed = True
        else:
            if sid in self._live:
                self._live.pop(sid)
                self._count(assignment.account_id, -1)
            placed = assignment.account_id != account_id
            if placed:
                assignment.moves += 1
                assignment.placed_at = now
            assignment.account_id = account_id
            if user_email:
                assignment.user_email = user_email
        if reason is not None:
            assignment.reason = reason
        assignment.last_seen = now
        assignment.requests += 1
        self._changed[sid] = None
        if not assignment.fallback:
            self._live[sid] = None
            self._count(account_id, 1)
            if placed:
                self.recent_counts(now)
                self._recent.append((now, account_id))
                self._recent_counts[account_id] = self._recent_counts.get(account_id, 0) + 1
                if self.on_count is not None:
                    self.on_count(account_id)
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
                    placed_at=float(row.get("placed_at") or row["first_seen"]),
                    reason=Reason.load(row.get("reason")),
                    moves=int(row.get("moves", 0)),
                )
            except (KeyError, TypeError, ValueError):
                continue
            sid = (assignment.agent, assignment.key)
            self._all[sid] = assignment
            self._changed[sid] = None

    def dump(self) -> list[dict[str, Any]]:
        return rows(self.snapshot())

    def snapshot(self) -> list[tuple[Any, ...]]:
        """
        Every assignment's fields as they are now, taken cheaply (one C call
        each) so that :func:`rows` can turn them into :meth:`dump`'s rows on
        another thread, while the table goes on changing.
        """
        get = _FIELD_VALUES
        return [get(a) for a in self._all.values()]

    def forget(self, before: float) -> int:
        """
        Drop the assignments last seen before ``before`` (a conversation back
        after that is placed anew); how many. Their prompt cache is long gone.
        """
        old = [sid for sid, a in self._all.items() if a.last_seen < before]
        for sid in old:
            assignment = self._all.pop(sid)
            if sid in self._live:
                self._live.pop(sid)
                self._count(assignment.account_id, -1)
            self._changed.pop(sid, None)
            self._forgotten.append(sid)
        if old:
            self.version += 1
        return len(old)

    def take_changed(
        self,
    ) -> tuple[list[tuple[SessionId, tuple[Any, ...]]], list[SessionId]]:
        """
        The conversations whose rows changed since the last call (new ones in
        the order they were added), each with its fields as :meth:`snapshot`
        takes them, and those forgotten since: what a saver that keeps every
        row's encoding needs to encode again or drop, instead of every row.
        """
        changed, self._changed = self._changed, {}
        forgotten, self._forgotten = self._forgotten, []
        get = _FIELD_VALUES
        everything = self._all
        return ([(sid, get(everything[sid])) for sid in changed if sid in everything],
                forgotten)

    def mark_changed(self, sids: Iterable[SessionId], forgotten: Iterable[SessionId] = ()
                     ) -> None:
        """
        Have :meth:`take_changed` give these conversations again, changed or
        forgotten (their save failed).
        """
        for sid in sids:
            self._changed[sid] = None
        self._forgotten[:0] = forgotten
