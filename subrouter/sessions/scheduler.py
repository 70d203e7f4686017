# -*- test-case-name: tests.test_scheduler -*-
"""
Where a new conversation goes: the placement policy, as pure functions.

Each account is scored from its rate-limit windows: its *headroom* is what is
left of its tightest window, its *short headroom* what is left of its tightest
short (at most 6 h) window, and its *expiry pressure* the headroom divided by
the seconds until the short window resets. An account is usable for a new
conversation while both headrooms are at least 0.40, and exhausted when either
is gone.

Candidates are ordered by tier (usable logins, then API keys, then logins
that are low but not exhausted, then exhausted ones), then usable first, then
(among usable ones) the higher expiry pressure, which spends healthy quota that
resets soonest, then the higher headroom, then the fewer live conversations,
then the id. Headroom and resets are compared in small bands (1%, one minute)
so near-identical accounts share new conversations instead of one of them
taking all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

MIN_NEW_SESSION_HEADROOM = 0.40
SHORT_WINDOW_MAX_SECONDS = 6 * 3600


@attrs.frozen
class Window:
    """
    One rate-limit window of an account.

    :ivar used_percent: 0 to 100.
    :ivar window_seconds: the window's length (0 when unknown).
    :ivar reset_after: seconds until it resets (0 when unknown).
    """

    name: str
    used_percent: float
    window_seconds: int = 0
    reset_after: float = 0.0


@attrs.frozen
class Score:
    headroom: float = 1.0
    short_headroom: float = 1.0
    short_reset_after: float = 0.0
    pressure: float = 0.0

    @property
    def usable(self) -> bool:
        return (
            self.headroom >= MIN_NEW_SESSION_HEADROOM
            and self.short_headroom >= MIN_NEW_SESSION_HEADROOM
        )

    @property
    def exhausted(self) -> bool:
        return self.headroom <= 0 or self.short_headroom <= 0


#: a login nothing is known about yet competes as fully healthy
UNKNOWN = Score()
#: a login whose usage could not be fetched: usable, behind any known-healthy one
UNKNOWN_RISKY = Score(MIN_NEW_SESSION_HEADROOM, MIN_NEW_SESSION_HEADROOM)
#: API keys have no windows; they rank by tier
API_KEY = Score(0.01, 0.01)
EXHAUSTED = Score(0.0, 0.0)


def score_windows(windows: Iterable[Window]) -> Score:
    """
    Score an account from its windows.
    """
    headroom = 1.0
    short: float | None = None
    short_reset = 0.0
    for window in windows:
        remaining = 1.0 - min(max(window.used_percent, 0.0), 100.0) / 100.0
        headroom = min(headroom, remaining)
        if 0 < window.window_seconds <= SHORT_WINDOW_MAX_SECONDS and (
            short is None or remaining <= short
        ):
            short = remaining
            short_reset = max(window.reset_after, 0.0)
    if short is None:
        short, short_reset = headroom, 0.0
    pressure = headroom / short_reset if short_reset >= 1.0 else 0.0
    return Score(headroom, short, short_reset, pressure)


@attrs.frozen
class Candidate:
    """
    An account as the scheduler sees it.

    :ivar oauth: a ChatGPT login (True) or an API key (False).
    :ivar sessions: its live conversations.
    """

    id: str
    oauth: bool
    score: Score
    sessions: int = 0


def tier(candidate: Candidate) -> int:
    """
    0: usable login; 1: API key; 2: login below the threshold but not
    exhausted; 3: exhausted login.
    """
    if not candidate.oauth:
        return 1
    score = candidate.score
    if score.usable:
        return 0
    return 3 if score.exhausted else 2


#: headroom is compared in steps of 1%, resets in steps of a minute: accounts
#: that differ by less (two fresh logins polled a millisecond apart) tie, and
#: their live conversation counts spread new conversations between them
HEADROOM_STEP = 0.01
RESET_STEP = 60.0


def _banded(score: Score) -> tuple[float, float]:
    headroom = round(score.headroom / HEADROOM_STEP) * HEADROOM_STEP
    if score.short_reset_after < 1.0:
        return headroom, 0.0
    reset = math.ceil(score.short_reset_after / RESET_STEP) * RESET_STEP
    return headroom, headroom / reset


def standing(candidate: Candidate) -> tuple[int, int, float, float]:
    """
    How good a candidate is before live conversations and ids break ties:
    candidates with equal standing share new conversations.
    """
    score = candidate.score
    usable = score.usable
    headroom, pressure = _banded(score)
    return (tier(candidate), 0 if usable else 1, -pressure if usable else 0.0, -headroom)


def _order(candidate: Candidate) -> tuple[int, int, float, float, int, str]:
    return (*standing(candidate), candidate.sessions, candidate.id)


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    """
    The candidates, best first.
    """
    return sorted(candidates, key=_order)
