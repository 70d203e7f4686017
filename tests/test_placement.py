"""
Placement over the real store, book and table, in memory: stickiness as a
property, forced accounts, removal.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import Account, AccountKind, AccountStore
from subrouter.sessions.identity import Identity
from subrouter.sessions.keys import SessionKey
from subrouter.sessions.placement import NoAccount, Placement
from subrouter.sessions.scheduler import Window
from subrouter.sessions.table import SessionTable
from subrouter.sessions.usage import UsageBook

IDS = ["a@x.com", "b@x.com", "c@x.com"]


def build() -> tuple[Placement, Clock, UsageBook]:
    clock = Clock()
    clock.advance(1_000_000)
    store = AccountStore("/nonexistent", lambda f: succeed(f()))
    for account_id in IDS:
        store.replace(Account(id=account_id, kind=AccountKind.OAUTH, source="/x", secret="t"))
    refresher = TokenRefresher(store=store, http=None, token_url="https://t", clock=clock,
                               run_blocking=lambda f: succeed(f()), codex_auth="/nonexistent")
    usage = UsageBook()
    return Placement(AccountPool(store, refresher), SessionTable(1800), usage, clock), clock, usage


def ident(key: str, forced: str | None = None) -> Identity:
    return Identity(SessionKey("codex", key, "header:session-id"), None, forced)


_op = st.one_of(
    st.tuples(st.just("turn"), st.integers(0, 5)),
    st.tuples(st.just("usage"), st.sampled_from(IDS), st.floats(0, 99.0)),
    st.tuples(st.just("exhaust"), st.sampled_from(IDS)),
    st.tuples(st.just("wait"), st.floats(0, 900)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_op, max_size=60))
def test_a_sticky_session_never_moves_without_cause(ops: list[tuple[Any, ...]]) -> None:
    placement, clock, usage = build()
    pinned: dict[str, str] = {}
    for op in ops:
        if op[0] == "turn":
            key = f"s{op[1]}"
            before = pinned.get(key)
            try:
                account = placement.choose(ident(key))
            except NoAccount:
                # every account exhausted: nothing may be placed, nothing moves
                assert all(usage.score(i, True, clock.seconds()).exhausted for i in IDS)
                continue
            if before is not None and account.id != before:
                # the only causes: its account is exhausted (marked, or no headroom left)
                assert usage.exhausted_until(before, clock.seconds()) is not None or \
                    usage.score(before, True, clock.seconds()).exhausted
            pinned[key] = account.id
        elif op[0] == "usage":
            # any amount of use short of exhaustion, even below the 40% threshold
            usage.record(op[1], [Window("primary", op[2], 18000, 3600)], clock.seconds(), "poll")
        elif op[0] == "exhaust":
            usage.mark_exhausted(op[1], clock.seconds(), 60, "test")
        else:
            clock.advance(op[1])


def test_forced_account_repins_the_session() -> None:
    placement, _, _ = build()
    first = placement.choose(ident("s"))
    other = next(i for i in IDS if i != first.id)
    assert placement.choose(ident("s", forced=other.upper())).id == other
    assert placement.choose(ident("s")).id == other


def test_a_removed_account_places_its_sessions_anew() -> None:
    placement, _, _ = build()
    first = placement.choose(ident("s"))
    store = placement.pool.store
    store._by_id.pop(first.id)  # as a rescan would after `cx rm`
    store._ordered = [a for a in store._ordered if a.id != first.id]
    store.version += 1
    assert placement.choose(ident("s")).id != first.id


def test_new_conversations_avoid_low_headroom_and_spread_over_equals() -> None:
    placement, clock, usage = build()
    now = clock.seconds()
    usage.record("a@x.com", [Window("primary", 80, 18000, 3600)], now, "poll")
    usage.record("b@x.com", [Window("primary", 10, 18000, 3600)], now, "poll")
    usage.record("c@x.com", [Window("primary", 10, 18000, 3600)], now + 0.001, "poll")
    chosen = [placement.choose(ident(f"n{i}")).id for i in range(6)]
    assert chosen.count("a@x.com") == 0
    assert chosen.count("b@x.com") == chosen.count("c@x.com") == 3
