"""
The placement policy: the reference's golden cases, its simulations, and
properties that must hold for any input.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from subrouter.sessions.scheduler import (
    API_KEY,
    EXHAUSTED,
    UNKNOWN,
    Candidate,
    Score,
    Window,
    rank,
    score_windows,
)

H5, D7 = 5 * 3600, 7 * 86400


def pick(candidates: list[Candidate]) -> Candidate | None:
    """
    The best candidate, as placement takes it: the head of the ranking.
    """
    ranked = rank(candidates)
    return ranked[0] if ranked else None


def account(name: str, h5: float, d7: float, reset_5h: float = 0.0, sessions: int = 0,
            seconds: bool = True) -> Candidate:
    windows = [
        Window("primary", h5, H5 if seconds else 0, reset_5h),
        Window("secondary", d7, D7 if seconds else 0, 0.0),
    ]
    return Candidate(name, True, score_windows(windows), sessions)


def flat(name: str, headroom: float, sessions: int = 0) -> Candidate:
    return Candidate(name, True, Score(headroom, headroom), sessions)


def test_score_uses_the_most_constrained_window() -> None:
    score = score_windows([Window("p", 20, H5), Window("s", 80, D7)])
    assert round(score.headroom, 9) == 0.20


def test_score_computes_expiry_pressure() -> None:
    score = score_windows([Window("p", 10, H5, 3 * 3600), Window("s", 20, D7, 6 * 86400)])
    assert round(score.headroom, 9) == 0.80
    assert round(score.short_headroom, 9) == 0.90
    assert score.short_reset_after == 10800
    assert score.pressure == score.headroom / 10800


def test_no_short_window_means_short_headroom_is_headroom() -> None:
    score = score_windows([Window("s", 30, D7, 100)])
    assert round(score.short_headroom, 9) == round(score.headroom, 9) == 0.70
    assert score.pressure == 0


def test_pick_prefers_headroom() -> None:
    assert pick([flat("a", 0.20, 0), flat("b", 0.90, 5)]).id == "b"  # type: ignore[union-attr]


def test_pick_prefers_soon_expiring_healthy_headroom() -> None:
    later = account("later-full", 0, 0, reset_5h=5 * 3600)
    soon = account("soon-healthy", 7, 7, reset_5h=3 * 3600)
    assert pick([later, soon]).id == "soon-healthy"  # type: ignore[union-attr]


def test_pick_protects_low_short_window_headroom() -> None:
    low = account("soon-low", 73, 10, reset_5h=157 * 60)
    full = account("soon-full", 0, 0, reset_5h=164 * 60)
    assert pick([low, full]).id == "soon-full"  # type: ignore[union-attr]


def test_pick_breaks_ties_by_fewest_sessions() -> None:
    assert pick([flat("a", 0.75, 4), flat("b", 0.75, 1)]).id == "b"  # type: ignore[union-attr]


def test_pick_prefers_oauth_before_api_key() -> None:
    chosen = pick([Candidate("apikey:first", False, API_KEY), Candidate("z@x", True, UNKNOWN)])
    assert chosen is not None and chosen.id == "z@x"


def test_usable_oauth_beats_a_healthier_api_key() -> None:
    chosen = pick([flat("oauth", 0.50, 9), Candidate("apikey:k", False, Score(0.99, 0.99))])
    assert chosen is not None and chosen.id == "oauth"


def test_healthy_oauth_before_exhausted_oauth_and_api_key() -> None:
    chosen = pick(
        [flat("healthy", 0.90), Candidate("done", True, EXHAUSTED),
         Candidate("apikey:k", False, API_KEY)]
    )
    assert chosen is not None and chosen.id == "healthy"


def test_api_key_before_exhausted_oauth() -> None:
    chosen = pick([Candidate("done", True, EXHAUSTED), Candidate("apikey:k", False, API_KEY)])
    assert chosen is not None and chosen.id == "apikey:k"


def test_constrained_oauth_before_exhausted_oauth() -> None:
    short_exhausted = Candidate("short-out", True, Score(0.79, 0.0))
    low = Candidate("low", True, Score(0.39, 0.39))
    assert pick([short_exhausted, low]).id == "low"  # type: ignore[union-attr]


def test_expiry_aware_routing_matches_the_snapshot_order() -> None:
    accounts = [
        account("alpha", 73, 16, reset_5h=157 * 60),
        account("founders", 0, 0, reset_5h=164 * 60),
        account("dave", 7, 1, reset_5h=175 * 60),
        account("erin", 0, 0, reset_5h=300 * 60),
    ]
    assert [c.id for c in rank(accounts)][:3] == ["founders", "dave", "erin"]


def _simulate(start: dict[str, tuple[float, float]], cost: tuple[float, float],
              sessions: int, policy: str) -> int:
    used = {name: list(pair) for name, pair in start.items()}
    names = sorted(used)
    cycle = itertools.cycle(names)
    accepted = 0
    for _ in range(sessions):
        if policy == "round-robin":
            name = next(cycle)
        else:
            chosen = pick([
                account(n, used[n][0], used[n][1], seconds=False) for n in names
            ])
            assert chosen is not None
            name = chosen.id
        h5, d7 = used[name][0] + cost[0], used[name][1] + cost[1]
        if h5 <= 100 and d7 <= 100:
            used[name] = [h5, d7]
            accepted += 1
    return accepted


def test_bottleneck_headroom_beats_round_robin_when_weekly_limits_differ() -> None:
    start = {"near-weekly-cap": (5.0, 90.0), "healthy": (5.0, 10.0)}
    assert _simulate(start, (3, 3), 20, "round-robin") == 13
    assert _simulate(start, (3, 3), 20, "scheduler") >= 20


def test_bottleneck_headroom_avoids_short_window_exhaustion() -> None:
    start = {"near-5h-cap": (92.0, 5.0), "healthy": (10.0, 5.0)}
    assert _simulate(start, (4, 1), 20, "round-robin") == 12
    assert _simulate(start, (4, 1), 20, "scheduler") >= 20


_percent = st.floats(min_value=0, max_value=100, allow_nan=False)
_candidate = st.builds(
    lambda i, oauth, h5, d7, reset, n: Candidate(
        f"acct-{i}",
        oauth,
        score_windows([Window("p", h5, H5, reset), Window("s", d7, D7)]) if oauth else API_KEY,
        n,
    ),
    st.integers(0, 10_000),
    st.booleans(),
    _percent,
    _percent,
    st.floats(min_value=0, max_value=H5, allow_nan=False),
    st.integers(0, 50),
)


@given(st.lists(_candidate, min_size=1, max_size=12, unique_by=lambda c: c.id))
def test_never_an_exhausted_account_while_a_usable_one_exists(
    candidates: list[Candidate],
) -> None:
    chosen = pick(candidates)
    assert chosen is not None
    if any(c.oauth and c.score.usable for c in candidates):
        assert chosen.oauth and chosen.score.usable
    if any(not (c.oauth and c.score.exhausted) for c in candidates):
        assert not (chosen.oauth and chosen.score.exhausted)


@given(st.lists(_candidate, min_size=1, max_size=12, unique_by=lambda c: c.id),
       st.randoms(use_true_random=False))
def test_the_pick_does_not_depend_on_input_order(candidates: list[Candidate], rnd: object) -> None:
    shuffled = list(candidates)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert pick(candidates) == pick(shuffled)
