"""
What Anthropic's answers say: the unified rate-limit headers, the OAuth usage
document, rejections and overloads.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from subrouter.sessions import anthropic
from subrouter.sessions.scheduler import score_windows
from subrouter.sessions.usage import worth_waiting_out

NOW = 1_900_000_000.0


def unified(**values: str) -> Headers:
    return Headers({f"anthropic-ratelimit-unified-{k.replace('_', '-')}".encode(): [v.encode()]
                    for k, v in values.items()})


def test_unified_headers_give_the_five_hour_and_weekly_windows() -> None:
    headers = unified(status="allowed", **{
        "5h_utilization": "0.42", "5h_reset": str(int(NOW) + 600),
        "7d_utilization": "0.9", "7d_reset": str(int(NOW) + 86400),
    })
    five, seven = anthropic.windows_from_headers(headers, NOW)
    assert (five.name, five.used_percent, five.window_seconds, five.reset_after) == (
        "five_hour", 42.0, 18000, 600.0)
    assert (seven.name, round(seven.used_percent, 6), seven.window_seconds) == (
        "seven_day", 90.0, 604800)
    score = score_windows([five, seven])
    assert round(score.headroom, 6) == 0.1 and round(score.short_headroom, 6) == 0.58
    assert not anthropic.rejected(headers)
    assert anthropic.windows_from_headers(Headers(), NOW) == []


def test_a_rejection_resets_when_the_headers_say() -> None:
    headers = unified(status="rejected", representative_claim="five_hour",
                      **{"5h_reset": str(int(NOW) + 1200)})
    assert anthropic.rejected(headers)
    assert anthropic.rejection_reset(headers, NOW) == 1200.0
    headers = unified(status="rejected", reset=str(int(NOW) + 99))
    assert anthropic.rejection_reset(headers, NOW) == 99.0
    assert anthropic.rejection_reset(unified(status="rejected"), NOW) is None


@given(st.text(max_size=20), st.text(max_size=20))
def test_garbage_headers_never_raise(used: str, reset: str) -> None:
    try:
        headers = unified(**{"5h_utilization": used, "5h_reset": reset})
    except (UnicodeEncodeError, ValueError):
        return
    for window in anthropic.windows_from_headers(headers, NOW):
        assert 0.0 <= window.used_percent <= 100.0


def test_the_oauth_usage_document_is_in_percent() -> None:
    document: dict[str, Any] = {
        "five_hour": {"utilization": 25, "resets_at": "2030-03-17T17:56:40Z"},
        "seven_day": {"utilization": None, "resets_at": None},
        "seven_day_opus": {"utilization": 99, "resets_at": None},
    }
    (five,) = anthropic.windows_from_oauth_usage(document, NOW)
    assert (five.name, five.used_percent, five.window_seconds) == ("five_hour", 25.0, 18000)
    assert five.reset_after == 600.0
    assert anthropic.windows_from_oauth_usage([], NOW) == []


def test_overloads_are_waited_out_and_nothing_else_is() -> None:
    assert worth_waiting_out(529, b'{"type":"error","error":{"type":"overloaded_error"}}')
    assert worth_waiting_out(503, b'{"error":{"message":"Selected model is at capacity."}}')
    assert worth_waiting_out(500, b'{"error":{"type":"server_is_overloaded"}}')
    assert not worth_waiting_out(503, b"upstream connect error")
    assert not worth_waiting_out(429, b'{"error":{"type":"overloaded_error"}}')
    assert not worth_waiting_out(500, b"internal error")
