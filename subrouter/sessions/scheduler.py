# -*- test-case-name: tests.test_scheduler -*-
"""
Where a new conversation goes: the placement policy, as pure functions.

Each account is scored from its rate-limit windows: its *headroom* is what is
left of its tightest window, its *short headroom* what is left of its tightest
short (at most 6 h) window, and its *expiry pressure* the headroom divided by
the seconds until the short window resets (a full window's length when the
reset is unknown: a window whose reset nobody reported is treated as one that
just started). An account is usable for a new conversation while both
headrooms are at least 0.40, and exhausted when either is gone.

Candidates are ordered by tier (usable logins, then logins below the band but
not exhausted, then API keys, which cost money per token, then exhausted
logins), then usable first, then (among usable ones) the higher expiry
pressure, which spends healthy quota that resets soonest, then the higher
headroom, then the fewer live and recent conversations, then the id. Headroom
and resets are compared in small bands (1%, one minute) so near-identical
accounts share new conversations instead of one of them taking all of them.
A weekly window in the last fifth of its week is spared the band: what is
left of it is lost at its reset unless it is spent.

Usage is only learnt after the fact (polls every few minutes, the headers of
answers), so a burst of new conversations would all see the same numbers and
all go to the same account. Each conversation placed on an account in the
last :data:`RECENT` seconds therefore counts as :data:`RECENT_DEBIT` of its
headroom already spent, and divides its expiry pressure by
``1 + LOAD_DAMPING x recent``: the leader's lead shrinks with every
conversation it takes, and a burst spreads over the accounts instead of
piling onto one of them. A guess never makes an account look exhausted.

:func:`explain` says why the chosen candidate beat the next best one (the
first part of their order that differs), when the reason is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

MIN_NEW_SESSION_HEADROOM = 0.40
SHORT_WINDOW_MAX_SECONDS = 6 * 3600
#: the band of a long (weekly) window (the simulation tried 10%: more API-key
#: spend and fewer turns served, as big plans took conversations meant for
#: small ones' soon-renewed windows)
LONG_WINDOW_BAND = 0.40
#: a long window in the last fifth of its length is not protected at all:
#: what is left of it is lost at its reset unless it is spent
EXPIRING_SOON = 0.2
#: the same for a short (5-hour) window, as a fraction of its length: 0, a
#: short window is always protected (0.2 served slightly more turns in the
#: simulation but moved twice as many conversations)
SHORT_TAIL = 0.0
#: expiry pressure is divided by 1 + this x the conversations placed in the
#: last :data:`RECENT` seconds: a sooner reset still draws new conversations,
#: but one that just took several has to reset much sooner to draw more
#: (chosen with bench/routing_sim.py: fewer moves and less API-key spend than
#: pressure alone, or damping by live conversations too)
LOAD_DAMPING = 4.0
#: a conversation placed this recently is not in the usage numbers yet
RECENT = 600.0
#: ... and is counted as this much of its account's headroom already spent
RECENT_DEBIT = 0.02


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
    #: how far the tightest window is above its band (None: the plain rule,
    #: both headrooms at least :data:`MIN_NEW_SESSION_HEADROOM`)
    margin: float | None = None

    @property
    def usable(self) -> bool:
        if self.margin is not None:
            return self.margin >= 0
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
    margin = 1.0
    short: float | None = None
    short_reset = 0.0
    short_length = 0
    for window in windows:
        remaining = 1.0 - min(max(window.used_percent, 0.0), 100.0) / 100.0
        headroom = min(headroom, remaining)
        if window.window_seconds <= SHORT_WINDOW_MAX_SECONDS:
            if not 0 < window.reset_after <= SHORT_TAIL * window.window_seconds:
                margin = min(margin, remaining - MIN_NEW_SESSION_HEADROOM)
        elif not 0 < window.reset_after <= EXPIRING_SOON * window.window_seconds:
            margin = min(margin, remaining - LONG_WINDOW_BAND)
        if 0 < window.window_seconds <= SHORT_WINDOW_MAX_SECONDS and (
            short is None or remaining <= short
        ):
            short = remaining
            short_reset = max(window.reset_after, 0.0)
            short_length = window.window_seconds
    if short is None:
        short, short_reset = headroom, 0.0
    # an unknown reset is taken as a whole window away, never as "no pressure",
    # which would rank the account below every one whose reset is known
    horizon = short_reset if short_reset >= 1.0 else float(short_length)
    pressure = headroom / horizon if horizon >= 1.0 else 0.0
    return Score(headroom, short, short_reset, pressure, margin)


@attrs.frozen
class Candidate:
    """
    An account as the scheduler sees it.

    :ivar oauth: a ChatGPT login (True) or an API key (False).
    :ivar sessions: its live conversations.
    :ivar recent: conversations placed on it in the last :data:`RECENT`
        seconds (they count against its headroom, see the module doc).
    """

    id: str
    oauth: bool
    score: Score
    sessions: int = 0
    recent: int = 0

    def counted(self, sessions: int, recent: int) -> Candidate:
        """
        This candidate with other counts (``attrs.evolve`` without its
        introspection: the ranking recounts on every placement).
        """
        return Candidate(self.id, self.oauth, self.score, sessions, recent)

    @property
    def effective(self) -> Score:
        """
        The score with recent placements counted as spent.
        """
        score = self.score
        if not self.recent or not self.oauth:
            return score
        debit = RECENT_DEBIT * self.recent
        # a guess never makes an account look exhausted: that takes the upstream
        floor = 0.0 if score.exhausted else 1e-3
        headroom = max(score.headroom - debit, min(score.headroom, floor))
        short = max(score.short_headroom - debit, min(score.short_headroom, floor))
        pressure = score.pressure * (headroom / score.headroom) if score.headroom > 0 else 0.0
        margin = None if score.margin is None else score.margin - debit
        return Score(headroom, short, score.short_reset_after, pressure, margin)


#: a login below this headroom is nearly out: a new conversation would meet
#: its limit within a few turns, so an API key goes first
LOW_FLOOR = 0.0


def tier(candidate: Candidate) -> int:
    """
    0: usable login; 1: login below the threshold (but above
    :data:`LOW_FLOOR`); 2: API key; 3: login nearly out; 4: exhausted login.
    """
    return _tier(candidate.oauth, candidate.effective)


def _tier(oauth: bool, score: Score) -> int:
    if not oauth:
        return 2
    if score.usable:
        return 0
    if score.exhausted:
        return 4
    low = min(score.headroom, score.short_headroom)
    return 1 if low >= LOW_FLOOR else 3


#: headroom is compared in steps of 1%, resets in steps of a minute: accounts
#: that differ by less (two fresh logins polled a millisecond apart) tie, and
#: their live conversation counts spread new conversations between them
HEADROOM_STEP = 0.01
RESET_STEP = 60.0


def _banded(score: Score) -> tuple[float, float]:
    headroom = round(score.headroom / HEADROOM_STEP) * HEADROOM_STEP
    if score.pressure <= 0:
        return headroom, 0.0
    # the pressure's own horizon (the reset, or a window when unknown), banded
    horizon = score.headroom / score.pressure
    reset = math.ceil(horizon / RESET_STEP) * RESET_STEP
    return headroom, headroom / reset


def standing(candidate: Candidate) -> tuple[int, int, float, float]:
    """
    How good a candidate is before live conversations and ids break ties:
    candidates with equal standing share new conversations.
    """
    score = candidate.effective
    usable = score.usable
    headroom, pressure = _banded(score)
    if usable and pressure and candidate.recent:
        pressure /= 1.0 + LOAD_DAMPING * candidate.recent
    return (
        _tier(candidate.oauth, score), 0 if usable else 1, -pressure if usable else 0.0,
        -headroom,
    )


def bound(candidate: Candidate) -> tuple[int, int, float, float]:
    """
    The best standing a candidate can have whatever its load: its standing
    with no recent conversations. Recent placements only make a standing
    worse.
    """
    if candidate.recent:
        candidate = candidate.counted(candidate.sessions, 0)
    return standing(candidate)


def order(candidate: Candidate) -> tuple[int, int, float, float, int, str]:
    """
    The whole order: standing, then fewer live and recent conversations, then
    the id.
    """
    return (*standing(candidate), candidate.sessions + candidate.recent, candidate.id)


_order = order


def rank(candidates: Iterable[Candidate]) -> list[Candidate]:
    """
    The candidates, best first.
    """
    return sorted(candidates, key=_order)


def pick_explained(candidates: Sequence[Candidate]) -> Choice | None:
    """
    The best candidate with the reason it won, or None when there is none.
    """
    if not candidates:
        return None
    ordered = sorted(candidates, key=_order)
    return explain(ordered[0], ordered[1] if len(ordered) > 1 else None)


#: what decided between the chosen candidate and the runner-up, by the first
#: part of their order that differs
ONLY = "only candidate"
TIER = "tier"
PRESSURE = "pressure"
HEADROOM = "headroom"
LOAD = "load"
NAME = "name"
_BASES = (TIER, TIER, PRESSURE, HEADROOM, LOAD, NAME)


@attrs.frozen
class Choice:
    """
    Why the scheduler chose ``chosen``: the part of the order that put it
    ahead of ``runner_up`` (the next best candidate). Built on every new
    placement, so it only holds references; the words come later, from
    :meth:`short` and :meth:`describe`.

    :ivar concentrating: the chosen account already carries more live and
        recent conversations than the runner-up: the policy piles onto it on
        purpose (it resets sooner, or has more headroom).
    """

    chosen: Candidate
    runner_up: Candidate | None

    @property
    def basis(self) -> str:
        """
        What decided: the first part of the two candidates' order that
        differs (worked out when asked, not when placing).
        """
        return _basis(self.chosen, self.runner_up)

    @property
    def concentrating(self) -> bool:
        other = self.runner_up
        return other is not None and (
            self.chosen.sessions + self.chosen.recent > other.sessions + other.recent
        ) and self.basis in (PRESSURE, HEADROOM)

    def short(self) -> str:
        """
        A few words for the request log: ``pressure>b@x.com``.
        """
        if self.runner_up is None:
            return "only"
        word = self.basis.replace(" ", "-")
        return f"{word}{'+conc' if self.concentrating else ''}>{self.runner_up.id}"

    def describe(self) -> str:
        """
        A sentence for people.
        """
        chosen, other = self.chosen, self.runner_up
        if other is None:
            return f"{chosen.id} was the only account that could take it ({_numbers(chosen)})"
        mine, theirs = _numbers(chosen), _numbers(other)
        basis = self.basis
        if basis == TIER:
            why = _tier_words(chosen, other)
        elif basis == PRESSURE:
            why = (
                "its window resets sooner for the headroom it has left (expiry pressure: "
                "spend the quota that would otherwise be lost at the reset)"
            )
        elif basis == HEADROOM:
            why = "it has more headroom left"
        elif basis == LOAD:
            why = (
                "it carries fewer live and recent conversations (each one weighs against "
                "an account's expiry pressure, so new conversations spread)"
            )
        else:
            why = "the two are equal in every respect; the name breaks the tie"
        text = f"{chosen.id} ({mine}) over {other.id} ({theirs}): {why}"
        if self.concentrating:
            text += (
                f"; it already carries more conversations than {other.id}, on purpose"
            )
        return text

    def as_json(self) -> dict[str, Any]:
        return {
            "basis": self.basis,
            "concentrating": self.concentrating,
            "chosen": candidate_json(self.chosen),
            "runner_up": candidate_json(self.runner_up) if self.runner_up else None,
            "text": self.describe(),
        }


def candidate_json(candidate: Candidate) -> dict[str, Any]:
    """
    A candidate's numbers, as JSON.
    """
    score = candidate.score
    effective = candidate.effective
    return {
        "account": candidate.id,
        "kind": "oauth" if candidate.oauth else "apikey",
        "tier": tier(candidate),
        "headroom": round(score.headroom, 4),
        "short_headroom": round(score.short_headroom, 4),
        "effective_headroom": round(effective.headroom, 4),
        "short_resets_in": int(score.short_reset_after) if score.short_reset_after else None,
        "pressure_per_hour": round(effective.pressure * 3600, 4),
        "usable": effective.usable,
        "live": candidate.sessions,
        "recent": candidate.recent,
    }


def _numbers(candidate: Candidate) -> str:
    if not candidate.oauth:
        return "API key"
    score = candidate.score
    parts = [f"headroom {score.headroom * 100:.0f}%"]
    if score.short_headroom != score.headroom:
        parts.append(f"5h {score.short_headroom * 100:.0f}%")
    if score.short_reset_after >= 1:
        parts.append(f"resets in {_minutes(score.short_reset_after)}")
    elif score.pressure > 0:
        parts.append("reset unknown")
    parts.append(f"{candidate.sessions} live")
    if candidate.recent:
        parts.append(f"{candidate.recent} placed in the last {int(RECENT // 60)}m")
    return ", ".join(parts)


def _minutes(seconds: float) -> str:
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def _tier_words(chosen: Candidate, other: Candidate) -> str:
    theirs = tier(other)
    if not other.oauth:
        return f"a login with quota left goes before an API key ({other.id} is pay-per-token)"
    if theirs == 1:
        return (
            f"{other.id} is below the {MIN_NEW_SESSION_HEADROOM:.0%} headroom kept for the "
            "conversations it already has"
        )
    if theirs == 3:
        return f"{other.id} is nearly out (under {LOW_FLOOR:.0%} headroom)"
    if theirs == 4:
        return f"{other.id} has reached its usage limit"
    return "it ranks in a better tier"


def explain(chosen: Candidate, runner_up: Candidate | None) -> Choice:
    """
    Why ``chosen`` went before ``runner_up`` (the next in :func:`rank`'s order).
    Cheap: the comparison is made when the reason is read.
    """
    return Choice(chosen, runner_up)


def _basis(chosen: Candidate, runner_up: Candidate | None) -> str:
    if runner_up is None:
        return ONLY
    mine, theirs = _order(chosen), _order(runner_up)
    for index, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        if a != b:
            basis = _BASES[index]
            if basis == PRESSURE and bound(chosen) >= bound(runner_up):
                return LOAD  # equal or worse without conversations: the load decided
            if basis == PRESSURE and _horizon(chosen) == _horizon(runner_up):
                return HEADROOM  # the same reset: the headroom made the difference
            return basis
    return NAME


def _horizon(candidate: Candidate) -> float:
    score = candidate.score
    if score.pressure <= 0:
        return 0.0
    return math.ceil(score.headroom / score.pressure / RESET_STEP)
