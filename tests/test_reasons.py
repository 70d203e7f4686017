"""
The reasons behind placements, and the policy details they explain: what
decided between the chosen account and the runner-up, recent placements
counted against headroom, unknown resets, low logins before API keys, weekly
quota about to reset, and the reason record of each placement.
"""

from __future__ import annotations

from subrouter.sessions.reasons import FORCED, MOVED, NEW, Reason
from subrouter.sessions.scheduler import (
    API_KEY,
    HEADROOM,
    LOAD,
    NAME,
    ONLY,
    PRESSURE,
    RECENT_DEBIT,
    TIER,
    Candidate,
    Score,
    Window,
    explain,
    pick_explained,
    rank,
    score_windows,
)

H5, D7 = 5 * 3600, 7 * 86400


def login(name: str, h5: float, d7: float = 0.0, reset: float = 0.0, sessions: int = 0,
          recent: int = 0, d7_reset: float = 0.0) -> Candidate:
    windows = [Window("primary", h5, H5, reset), Window("secondary", d7, D7, d7_reset)]
    return Candidate(name, True, score_windows(windows), sessions, recent)


def test_the_basis_is_the_first_part_of_the_order_that_differs() -> None:
    soon = login("soon", 10, reset=3600)
    later = login("later", 10, reset=4 * 3600)
    assert explain(soon, later).basis == PRESSURE
    assert explain(login("a", 10), login("b", 30)).basis == HEADROOM
    assert explain(login("a", 10), Candidate("apikey:k", False, API_KEY)).basis == TIER
    assert explain(login("a", 10, sessions=1), login("b", 10, sessions=2)).basis == LOAD
    assert explain(login("a", 10), login("b", 10)).basis == NAME
    assert explain(login("a", 10), None).basis == ONLY


def test_the_reason_names_the_runner_up_and_why_it_lost() -> None:
    choice = pick_explained([login("later", 10, reset=4 * 3600), login("soon", 10, reset=3600)])
    assert choice is not None and choice.chosen.id == "soon"
    assert choice.runner_up is not None and choice.runner_up.id == "later"
    assert choice.short() == "pressure>later"
    text = choice.describe()
    assert "soon" in text and "later" in text and "resets sooner" in text
    assert "resets in 1h00m" in text and "resets in 4h00m" in text
    data = choice.as_json()
    assert data["basis"] == "pressure" and data["runner_up"]["account"] == "later"
    tier_text = explain(login("a", 10), Candidate("apikey:k", False, API_KEY)).describe()
    assert "API key" in tier_text and "pay-per-token" in tier_text


def test_concentrating_on_purpose_is_said() -> None:
    # the soon-resetting login already carries more conversations, and still wins
    busy_soon = login("soon", 10, reset=600, sessions=2)
    idle_later = login("later", 10, reset=5 * 3600)
    choice = pick_explained([busy_soon, idle_later])
    assert choice is not None and choice.chosen.id == "soon"
    assert choice.concentrating
    assert choice.short() == "pressure+conc>later"
    assert "on purpose" in choice.describe()
    spread = pick_explained([login("a", 10, sessions=1), login("b", 10, sessions=2)])
    assert spread is not None and not spread.concentrating


def test_recent_placements_count_against_headroom() -> None:
    fresh = login("a", 0)
    assert fresh.effective.headroom == 1.0
    busy = login("a", 0, recent=3)
    assert abs(busy.effective.headroom - (1.0 - 3 * RECENT_DEBIT)) < 1e-9
    # a login just above the band stops taking new conversations once recent ones eat it
    edge = login("edge", 58, recent=0)
    assert edge.effective.usable
    assert not login("edge", 58, recent=2).effective.usable


def test_a_burst_on_equal_logins_alternates() -> None:
    names = ["a", "b", "c"]
    recent = dict.fromkeys(names, 0)
    chosen = []
    for _ in range(9):
        choice = pick_explained([login(n, 20, reset=3600, sessions=recent[n], recent=recent[n])
                                 for n in names])
        assert choice is not None
        chosen.append(choice.chosen.id)
        recent[choice.chosen.id] += 1
    assert sorted(chosen.count(n) for n in names) == [3, 3, 3]


def test_an_unknown_reset_counts_as_a_whole_window_not_as_none() -> None:
    unknown = score_windows([Window("primary", 10, H5, 0.0)])
    started = score_windows([Window("primary", 10, H5, 4 * 3600)])
    assert unknown.pressure == 0.9 / H5
    assert started.pressure > unknown.pressure > 0
    # so a login whose answers stopped carrying resets still competes
    ranked = rank([Candidate("no-reset", True, unknown),
                   Candidate("full-window", True, score_windows([Window("primary", 10, H5, H5)]))])
    assert {c.id for c in ranked} == {"no-reset", "full-window"}


def test_a_low_login_goes_before_an_api_key_and_an_exhausted_one_after() -> None:
    low = Candidate("low", True, Score(0.2, 0.2))
    key = Candidate("apikey:k", False, API_KEY)
    out = Candidate("out", True, Score(0.0, 0.5))
    assert [c.id for c in rank([out, key, low])] == ["low", "apikey:k", "out"]


def test_weekly_quota_about_to_reset_is_not_protected() -> None:
    # 15% of the week left, but the week resets in 10 hours: spend it
    expiring = login("ben", 0, d7=85, d7_reset=10 * 3600)
    assert expiring.score.headroom < 0.4 and expiring.score.usable
    lasting = login("ann", 0, d7=85, d7_reset=5 * 86400)
    assert not lasting.score.usable


def test_placement_reasons_read_well_in_the_log_and_survive_the_state_file() -> None:
    choice = explain(login("a", 10, reset=600), login("b", 10, reset=7200))
    new = Reason(NEW, 1000.0, "a", choice)
    assert new.short() == "new:pressure>b"
    moved = Reason(MOVED, 1000.0, "a", choice, moved_from="c", cause="usage limit reached")
    assert moved.short() == "moved<c:pressure>b"
    assert moved.describe().startswith("moved from c (usage limit reached); chose a")
    forced = Reason(FORCED, 1000.0, "a", selector="A")
    assert forced.short() == "forced" and "X-Subrouter-Account-ID" in forced.describe()
    restored = Reason.load(moved.dump())
    assert restored is not None and restored.describe() == moved.describe()
    assert restored.moved_from == "c" and restored.kind == MOVED
    assert Reason.load({"kind": "new"}) is None and Reason.load("junk") is None
