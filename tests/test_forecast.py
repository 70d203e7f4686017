"""
Forecasts: time until a window is empty at the recent burn rate, from
observations of its percent (and tokens, when counted), or why there is none.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from subrouter.sessions.forecast import (
    FULL,
    NOT_ENOUGH_DATA,
    NOT_IN_USE,
    BurnMeter,
    Sample,
    forecast_from,
)
from subrouter.sessions.scheduler import Window
from subrouter.sessions.usage import UsageBook

T0 = 1_800_000_000.0
MIN = 60.0
HOUR = 3600.0


def rising(meter: BurnMeter, per_hour: float, minutes: int, start: float = 10.0,
           every: int = 10, resets_at: float | None = T0 + 5 * HOUR) -> float:
    """Observe a window rising at ``per_hour`` for ``minutes``; return the end time."""
    now = T0
    for minute in range(0, minutes + 1, every):
        now = T0 + minute * MIN
        meter.observe("a", "primary", start + per_hour * minute / 60, resets_at, now)
    return now


def test_a_steady_burn_gives_the_time_until_empty() -> None:
    meter = BurnMeter()
    now = rising(meter, 20.0, 60)  # 10% -> 30% in an hour
    forecast = meter.forecast("a", "primary", 30.0, T0 + 5 * HOUR, now)
    assert forecast.reason is None and forecast.basis == "percent"
    assert forecast.percent_per_hour is not None
    assert abs(forecast.percent_per_hour - 20.0) < 1e-6
    assert forecast.hours_left is not None and abs(forecast.hours_left - 3.5) < 1e-6
    assert forecast.resets_first is False
    shape = forecast.as_json()
    assert set(shape) == {"empties_at", "hours_left", "percent_per_hour", "basis",
                          "observations", "span_minutes", "resets_first", "reason"}
    assert shape["empties_at"].endswith("Z") and shape["hours_left"] == 3.5
    assert forecast.short() == "empties in 3h30m (20.0%/h)"


def test_a_window_that_resets_before_it_empties_says_so() -> None:
    meter = BurnMeter()
    now = rising(meter, 5.0, 60, resets_at=T0 + 2 * HOUR)
    forecast = meter.forecast("a", "primary", 15.0, T0 + 2 * HOUR, now)
    assert forecast.resets_first is True
    assert forecast.short().startswith("resets before it runs out")


def test_too_little_history_is_not_enough_data() -> None:
    meter = BurnMeter()
    assert meter.forecast("a", "primary", 10.0, None, T0).reason == NOT_ENOUGH_DATA
    rising(meter, 20.0, 4, every=2)  # four minutes only
    forecast = meter.forecast("a", "primary", 11.3, None, T0 + 4 * MIN)
    assert forecast.reason == NOT_ENOUGH_DATA and forecast.empties_at is None
    assert forecast.as_json()["hours_left"] is None


def test_a_window_that_does_not_move_is_not_in_use() -> None:
    meter = BurnMeter()
    now = rising(meter, 0.0, 60)
    forecast = meter.forecast("a", "primary", 10.0, None, now)
    assert forecast.reason == NOT_IN_USE and forecast.percent_per_hour == 0.0


def test_a_full_window_is_full() -> None:
    assert forecast_from([], 100.0, T0 + HOUR, T0).reason == FULL


def test_a_reset_starts_a_new_history() -> None:
    meter = BurnMeter()
    now = rising(meter, 30.0, 60)
    meter.observe("a", "primary", 1.0, T0 + 10 * HOUR, now + MIN)
    assert len(list(meter.samples("a", "primary"))) == 1
    assert meter.forecast("a", "primary", 1.0, None, now + MIN).reason == NOT_ENOUGH_DATA


def test_repeated_answers_keep_one_sample_a_minute() -> None:
    meter = BurnMeter()
    for i in range(100):  # an answer every second, the same numbers
        meter.observe("a", "primary", 10.0, None, T0 + i)
    assert len(list(meter.samples("a", "primary"))) == 2


def test_tokens_refine_a_rate_the_whole_percents_hide() -> None:
    # 1,000 tokens per percent (calibrated over the window's history); 3,000
    # tokens in the last 20 minutes = 9%/h, while the percent moved in whole
    # steps (one point in the last 60 minutes)
    samples = [
        Sample(T0, 10.0, None, 0.0),
        Sample(T0 + 60 * MIN, 15.0, None, 5_000.0),
        Sample(T0 + 100 * MIN, 16.0, None, 6_000.0),
    ]
    forecast = forecast_from(samples, 16.0, None, T0 + 120 * MIN, tokens=9_000.0)
    assert forecast.basis == "tokens"
    assert forecast.percent_per_hour is not None
    assert abs(forecast.percent_per_hour - 9.0) < 1e-6


def test_the_book_keeps_history_and_forecasts_each_window() -> None:
    book = UsageBook()
    for minute in range(0, 61, 10):
        now = T0 + minute * MIN
        book.record("a", [Window("primary", 10 + minute / 3, 18000, 4 * HOUR - minute * MIN),
                          Window("secondary", 40, 604800, 86400 - minute * MIN)], now, "poll")
    forecasts = book.forecasts("a", T0 + HOUR)
    assert set(forecasts) == {"primary", "secondary"}
    assert forecasts["primary"].percent_per_hour is not None
    assert abs(forecasts["primary"].percent_per_hour - 20.0) < 1e-6
    assert forecasts["secondary"].reason == NOT_IN_USE


@given(st.lists(st.tuples(st.floats(0, 3 * HOUR), st.floats(0, 99.9)), max_size=30),
       st.floats(0, 99.9))
def test_a_forecast_never_lies_about_the_future(points: list[tuple[float, float]],
                                               used: float) -> None:
    meter = BurnMeter()
    for offset, percent in sorted(points):
        meter.observe("a", "primary", percent, None, T0 + offset)
    now = T0 + 3 * HOUR
    forecast = meter.forecast("a", "primary", used, None, now)
    if forecast.empties_at is not None:
        assert forecast.empties_at >= now
        assert forecast.percent_per_hour is not None and forecast.percent_per_hour > 0
        assert forecast.reason is None
    else:
        assert forecast.reason is not None
