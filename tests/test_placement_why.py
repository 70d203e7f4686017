"""
Placement over the real store, book and table: bursts spread instead of
herding when resets or usage are unknown or equal, a login that resets sooner
draws more on purpose (and the reason says so), and every placement records
why.
"""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import Account, AccountKind, AccountStore
from subrouter.sessions.identity import Identity
from subrouter.sessions.keys import SessionKey
from subrouter.sessions.placement import Placement
from subrouter.sessions.reasons import FORCED, MOVED, NEW
from subrouter.sessions.scheduler import RECENT, Window
from subrouter.sessions.table import SessionTable
from subrouter.sessions.usage import UsageBook, windows_from_headers

IDS = ["a@x.com", "b@x.com", "c@x.com"]


def build(ids: list[str] = IDS) -> tuple[Placement, Clock, UsageBook]:
    clock = Clock()
    clock.advance(1_000_000)
    store = AccountStore("/nonexistent", lambda f: succeed(f()))
    for account_id in ids:
        kind = AccountKind.APIKEY if account_id.startswith("apikey:") else AccountKind.OAUTH
        store.replace(Account(id=account_id, kind=kind, source="/x", secret="t"))
    refresher = TokenRefresher(store=store, http=None, token_url="https://t", clock=clock,
                               run_blocking=lambda f: succeed(f()), codex_auth="/nonexistent")
    usage = UsageBook()
    return Placement(AccountPool(store, refresher), SessionTable(1800), usage, clock), clock, usage


def ident(key: str, forced: str | None = None) -> Identity:
    return Identity(SessionKey("codex", key, "header:session-id"), None, forced)


def burst(placement: Placement, count: int, prefix: str = "n") -> list[str]:
    return [placement.choose(ident(f"{prefix}{i}")).id for i in range(count)]


def longest_run(chosen: list[str]) -> int:
    best = run = 0
    for i, account in enumerate(chosen):
        run = run + 1 if i and chosen[i - 1] == account else 1
        best = max(best, run)
    return best


def test_a_burst_on_logins_nothing_is_known_about_spreads() -> None:
    placement, _, _ = build()
    chosen = burst(placement, 12)
    assert sorted(chosen.count(i) for i in IDS) == [4, 4, 4]
    assert longest_run(chosen) == 1


def test_a_burst_spreads_when_the_headers_stop_carrying_reset_times() -> None:
    # the field report: answers carried the percent but no reset time, and one
    # login took 11 new conversations in a row
    placement, clock, usage = build()
    now = clock.seconds()
    for account_id in IDS:
        usage.record(account_id, [Window("primary", 20, 18000, 3 * 3600),
                                  Window("secondary", 30, 604800, 3 * 86400)], now, "poll")
    clock.advance(60)
    headers = Headers({b"x-codex-primary-used-percent": [b"21"],
                       b"x-codex-primary-window-minutes": [b"300"],
                       b"x-codex-secondary-used-percent": [b"30"],
                       b"x-codex-secondary-window-minutes": [b"10080"]})
    usage.record("a@x.com", windows_from_headers(headers, clock.seconds()), clock.seconds(),
                 "headers")
    # the known reset was kept, not replaced by "no reset"
    primary = usage.current_windows("a@x.com", clock.seconds())[0]
    assert abs(primary.reset_after - (3 * 3600 - 60)) < 1e-6
    chosen = burst(placement, 11)
    assert max(chosen.count(i) for i in IDS) <= 4
    assert longest_run(chosen) <= 2


def test_a_burst_with_equal_usage_and_no_resets_anywhere_spreads() -> None:
    placement, clock, usage = build()
    now = clock.seconds()
    for account_id in IDS:
        usage.record(account_id, [Window("primary", 20, 18000, 0.0)], now, "headers")
    chosen = burst(placement, 9)
    assert sorted(chosen.count(i) for i in IDS) == [3, 3, 3]


def test_a_login_that_resets_sooner_draws_more_on_purpose_but_not_all() -> None:
    placement, clock, usage = build()
    now = clock.seconds()
    usage.record("a@x.com", [Window("primary", 20, 18000, 20 * 60)], now, "poll")
    for account_id in IDS[1:]:
        usage.record(account_id, [Window("primary", 20, 18000, 4 * 3600)], now, "poll")
    chosen = burst(placement, 12)
    soon = chosen.count("a@x.com")
    assert 4 < soon < 12, chosen
    concentrated = [
        a.reason for a in placement.table
        if a.account_id == "a@x.com" and a.reason is not None and a.reason.choice is not None
        and a.reason.choice.concentrating
    ]
    assert concentrated, "piling onto the soon-resetting login must say it does so on purpose"
    assert "on purpose" in concentrated[0].describe()


def test_recent_placements_fade_after_a_while() -> None:
    placement, clock, _ = build()
    burst(placement, 3)
    assert sum(placement.table.recent_counts(clock.seconds()).values()) == 3
    clock.advance(RECENT + 1)
    assert placement.table.recent_counts(clock.seconds()) == {}


def test_every_placement_records_why() -> None:
    placement, clock, _usage = build()
    account, reason = placement.decide(ident("s"))
    assert reason is not None and reason.kind == NEW and reason.account == account.id
    assert reason.choice is not None and reason.choice.runner_up is not None
    assert reason.short().startswith("new:")
    again, sticky = placement.decide(ident("s"))
    assert again.id == account.id and sticky is None  # sticky: nothing new to say
    assignment = placement.table.get("codex", "s")
    assert assignment is not None and assignment.reason is reason
    clock.advance(30)
    placement.mark_exhausted(account.id, 600, "HTTP 429")
    moved_to, moved = placement.decide(ident("s"))
    assert moved is not None and moved.kind == MOVED
    assert moved.moved_from == account.id and moved_to.id != account.id
    assert moved.cause is not None and "usage limit" in moved.cause
    assert moved.short().startswith(f"moved<{account.id}:")
    assignment = placement.table.get("codex", "s")
    assert assignment is not None and assignment.moves == 1
    assert assignment.placed_at == clock.seconds()
    _, forced = placement.decide(ident("s", forced="C@X.COM"))
    assert forced is not None and forced.kind == FORCED and forced.account == "c@x.com"
    _, still = placement.decide(ident("s", forced="c@x.com"))
    assert still is None


def test_a_preview_ranks_without_placing() -> None:
    placement, clock, _ = build([*IDS, "apikey:k"])
    choice = placement.pick(clock.seconds())
    assert len(placement.table) == 0
    standings = placement.standings(clock.seconds())
    assert [c.id for c, _ in standings][-1] == "apikey:k"
    assert choice.chosen.id == standings[0][0].id


def test_reasons_survive_the_state_file() -> None:
    placement, _clock, _ = build()
    placement.choose(ident("s"))
    rows = placement.table.dump()
    table = SessionTable(1800)
    table.load(rows)
    restored = table.get("codex", "s")
    original = placement.table.get("codex", "s")
    assert restored is not None and original is not None and original.reason is not None
    assert restored.reason is not None
    assert restored.reason.describe() == original.reason.describe()
    assert restored.placed_at == original.placed_at
