"""
The one time formatter: RFC 3339 in UTC, to the second and to the
microsecond, that reads back as the moment it was given.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from subrouter.timefmt import rfc3339, rfc3339_micro


def test_seconds_are_utc_with_a_z() -> None:
    assert rfc3339(1_777_334_400) == "2026-04-28T00:00:00Z"
    assert rfc3339(1_777_334_400.999) == "2026-04-28T00:00:00Z"


def test_microseconds_round_and_carry_into_the_next_second() -> None:
    assert rfc3339_micro(1_777_334_400.25) == "2026-04-28T00:00:00.250000Z"
    assert rfc3339_micro(1_777_334_400.9999997) == "2026-04-28T00:00:01.000000Z"


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_a_formatted_moment_reads_back_within_a_microsecond(seconds: float) -> None:
    text = rfc3339_micro(seconds)
    parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(parsed.timestamp() - seconds) <= 1e-6 + abs(seconds) * 1e-15
    assert rfc3339(int(parsed.timestamp())) == text[:19] + "Z"
