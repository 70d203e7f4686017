# -*- test-case-name: tests.test_forecast -*-
"""
When will an account's window run out? A forecast per account and window at
the recent burn rate.

Every observation of a window (a usage poll, the ``x-codex-*`` headers of an
answer, a ``codex.rate_limits`` event) adds a sample: when, the percent used,
when the window resets, and how many tokens the account had spent by then (the
token accounting's running total, when it is known). The burn rate is the rise
in percent over the recent samples of the current window; when tokens are
known over a rise of a few percent, the rate is measured in tokens (finer
grained than the whole percents the upstream reports) and turned back into
percent with the account's own tokens-per-percent. Too little history, or no
rise at all, gives no forecast and says why.

Pure: no clock, no I/O. Sampling is cheap (a comparison and sometimes a deque
append), so it can sit on the path of every answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import attrs

#: the rate is measured over about this much recent history (the simulation's
#: forecasts an hour ahead erred by a median 37 min at 20 minutes, 102 at an
#: hour: work comes in bursts)
HORIZON = 1200.0
#: ... and over up to this much when the recent part shows no rise yet
LONG_HORIZON = 3 * 3600.0
#: less history than this gives no rate
MIN_SPAN = 5 * 60.0
#: a window that has not moved for this long is "not in use"
IDLE_SPAN = 30 * 60.0
#: repeated identical observations closer than this are not kept
SAMPLE_EVERY = 60.0
#: the token basis needs the percent to have risen at least this much
MIN_TOKEN_CALIBRATION = 3.0
#: samples kept per window
KEEP = 96

NOT_ENOUGH_DATA = "not enough data"
NOT_IN_USE = "not in use"
FULL = "full"


@attrs.frozen
class Sample:
    at: float
    used: float
    resets_at: float | None
    tokens: float | None


@attrs.frozen
class Forecast:
    """
    One window's forecast.

    :ivar empties_at: when it runs out at the current rate (None when unknown).
    :ivar percent_per_hour: the burn rate, or None.
    :ivar basis: how the rate was measured: ``percent`` (the rise in percent
        used) or ``tokens`` (tokens spent, calibrated against the percent).
    :ivar resets_first: the window resets before it would run out.
    :ivar reason: why there is no forecast (``not enough data``, ``not in
        use``, ``full``), else None.
    """

    now: float
    used: float
    empties_at: float | None = None
    percent_per_hour: float | None = None
    basis: str | None = None
    observations: int = 0
    span: float = 0.0
    resets_at: float | None = None
    reason: str | None = None

    @property
    def hours_left(self) -> float | None:
        if self.empties_at is None:
            return None
        return max(self.empties_at - self.now, 0.0) / 3600.0

    @property
    def resets_first(self) -> bool | None:
        if self.empties_at is None or self.resets_at is None:
            return None
        return self.resets_at <= self.empties_at

    def as_json(self) -> dict[str, Any]:
        """
        The stable JSON shape ``/_subrouter/accounts`` shows per window.
        """
        hours = self.hours_left
        return {
            "empties_at": _iso(self.empties_at) if self.empties_at is not None else None,
            "hours_left": round(hours, 2) if hours is not None else None,
            "percent_per_hour": (
                round(self.percent_per_hour, 2) if self.percent_per_hour is not None else None
            ),
            "basis": self.basis,
            "observations": self.observations,
            "span_minutes": round(self.span / 60.0, 1),
            "resets_first": self.resets_first,
            "reason": self.reason,
        }

    def short(self) -> str:
        """
        A few words for a terminal: ``empties in 2h10m (18.0%/h)``.
        """
        if self.reason is not None:
            return self.reason
        assert self.empties_at is not None and self.percent_per_hour is not None
        rate = f"{self.percent_per_hour:.1f}%/h"
        if self.resets_first:
            return f"resets before it runs out ({rate})"
        return f"empties in {_duration(self.empties_at - self.now)} ({rate})"


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    minutes = max(int(seconds // 60), 0)
    hours, minutes = divmod(minutes, 60)
    if hours >= 48:
        return f"{hours // 24}d{hours % 24}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m"


class _History:
    __slots__ = ("samples",)

    def __init__(self) -> None:
        self.samples: deque[Sample] = deque(maxlen=KEEP)


class BurnMeter:
    """
    Recent samples per (account, window), and forecasts from them.
    """

    def __init__(self) -> None:
        self._histories: dict[tuple[str, str], _History] = {}

    def observe(
        self,
        account_id: str,
        window: str,
        used: float,
        resets_at: float | None,
        now: float,
        tokens: float | None = None,
    ) -> None:
        """
        Add an observation of a window. A drop in the percent used, or a reset
        time that moved on by more than a few minutes, starts a new window's
        history.
        """
        history = self._histories.get((account_id, window))
        if history is None:
            history = self._histories[(account_id, window)] = _History()
        samples = history.samples
        if samples:
            last = samples[-1]
            if used < last.used - 0.5 or (
                resets_at is not None and last.resets_at is not None
                and resets_at > last.resets_at + 300.0
            ):
                samples.clear()  # the window reset: its history says nothing now
            elif used == last.used and now - last.at < SAMPLE_EVERY:
                return  # every answer repeats the same numbers: keep one a minute
            elif now < last.at:
                return
        samples.append(Sample(now, used, resets_at, tokens))

    def samples(self, account_id: str, window: str) -> Iterator[Sample]:
        history = self._histories.get((account_id, window))
        return iter(history.samples) if history is not None else iter(())

    def forget(self, account_id: str) -> None:
        for key in [k for k in self._histories if k[0] == account_id]:
            del self._histories[key]

    def forecast(
        self, account_id: str, window: str, used: float, resets_at: float | None, now: float,
        tokens: float | None = None,
    ) -> Forecast:
        """
        The forecast for a window whose current state is ``used`` percent,
        resetting at ``resets_at``; ``tokens`` is the account's running token
        total now, when known.
        """
        history = self._histories.get((account_id, window))
        samples = list(history.samples) if history is not None else []
        return forecast_from(samples, used, resets_at, now, tokens)


def forecast_from(
    samples: list[Sample], used: float, resets_at: float | None, now: float,
    tokens: float | None = None,
) -> Forecast:
    """
    The forecast from a window's samples (oldest first). See :class:`BurnMeter`.
    """
    if used >= 100.0:
        return Forecast(now, used, empties_at=now, resets_at=resets_at, reason=FULL,
                        observations=len(samples))
    if resets_at is not None and resets_at <= now:
        return Forecast(now, used, reason=NOT_ENOUGH_DATA)
    if len(samples) < 2:
        return Forecast(now, used, observations=len(samples), resets_at=resets_at,
                        reason=NOT_ENOUGH_DATA)
    last = samples[-1]
    rate, span, count, basis = _rate(samples, last, now, tokens)
    if rate is None:
        reason = NOT_IN_USE if span >= IDLE_SPAN else NOT_ENOUGH_DATA
        return Forecast(now, used, observations=count, span=span, resets_at=resets_at,
                        percent_per_hour=0.0 if reason == NOT_IN_USE else None, reason=reason)
    hours = (100.0 - used) / rate
    return Forecast(
        now, used, empties_at=now + hours * 3600.0, percent_per_hour=rate, basis=basis,
        observations=count, span=span, resets_at=resets_at,
    )


def _rate(
    samples: list[Sample], last: Sample, now: float, tokens: float | None
) -> tuple[float | None, float, int, str]:
    """
    (percent per hour or None, span looked at, samples used, basis).
    """
    recent = [s for s in samples if s.at >= last.at - HORIZON]
    first = recent[0]
    if last.used - first.used < 1.0 or last.at - first.at < MIN_SPAN:
        # nothing visible in the last hour: look further back
        recent = [s for s in samples if s.at >= last.at - LONG_HORIZON]
        first = recent[0]
    span = max(now, last.at) - first.at
    rise = last.used - first.used
    if last.at - first.at < MIN_SPAN or rise <= 0:
        return None, span, len(recent), "percent"
    per_hour = rise / (last.at - first.at) * 3600.0
    # the token basis: calibrate tokens per percent over the window's whole
    # history, then measure the recent spend in tokens (which moves smoothly
    # where the percent moves in whole steps)
    with_tokens = [s for s in samples if s.tokens is not None]
    if tokens is not None and len(with_tokens) >= 2:
        base = with_tokens[0]
        top = with_tokens[-1]
        calibration = top.used - base.used
        spent = (top.tokens or 0.0) - (base.tokens or 0.0)
        if calibration >= MIN_TOKEN_CALIBRATION and spent > 0:
            per_percent = spent / calibration
            start = next((s for s in with_tokens if s.at >= now - HORIZON), base)
            elapsed = now - start.at
            if elapsed >= MIN_SPAN and start.tokens is not None:
                rate = (tokens - start.tokens) / per_percent / elapsed * 3600.0
                if rate > 0:
                    return rate, span, len(recent), "tokens"
    return per_hour, span, len(recent), "percent"
