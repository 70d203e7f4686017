"""
Rate-limit knowledge: parsing the three sources, usage-limit detection, and
the book's scores and exhaustion marks.
"""

from __future__ import annotations

import json

from twisted.web.http_headers import Headers

from subrouter.sessions.scheduler import API_KEY, EXHAUSTED, UNKNOWN, UNKNOWN_RISKY
from subrouter.sessions.usage import (
    DEFAULT_EXHAUSTED_FOR,
    UsageBook,
    is_overload,
    is_usage_limit,
    usage_limit_in_body,
    windows_from_event,
    windows_from_headers,
    windows_from_usage,
)

NOW = 1_800_000_000.0


def test_usage_endpoint_answer() -> None:
    windows, plan = windows_from_usage(
        {
            "plan_type": "pro",
            "rate_limit": {
                "allowed": True,
                "limit_reached": False,
                "primary_window": {"used_percent": 12.5, "limit_window_seconds": 18000,
                                   "reset_after_seconds": 100, "reset_at": NOW + 60},
                "secondary_window": {"used_percent": None, "limit_window_seconds": 604800},
            },
        },
        NOW,
    )
    assert plan == "pro"
    assert [(w.name, w.used_percent, w.window_seconds, w.reset_after) for w in windows] == [
        ("primary", 12.5, 18000, 60.0)  # reset_at wins; unknown used_percent is skipped
    ]


def test_limit_reached_forces_exhaustion() -> None:
    windows, _ = windows_from_usage({"rate_limit": {"limit_reached": True}}, NOW)
    assert windows[-1].used_percent == 100


def test_headers_and_events() -> None:
    headers = Headers(
        {
            b"x-codex-primary-used-percent": [b"40"],
            b"x-codex-primary-window-minutes": [b"300"],
            b"x-codex-primary-reset-after-seconds": [b"120"],
            b"x-codex-secondary-used-percent": [b"5.5"],
            b"x-codex-secondary-window-minutes": [b"10080"],
            b"x-codex-secondary-reset-at": [str(int(NOW + 3600)).encode()],
        }
    )
    windows = windows_from_headers(headers, NOW)
    assert [(w.used_percent, w.window_seconds, w.reset_after) for w in windows] == [
        (40.0, 18000, 120.0), (5.5, 604800, 3600.0)
    ]
    event = {"type": "codex.rate_limits", "plan_type": "plus",
             "rate_limits": {"primary": {"used_percent": 99, "window_minutes": 300,
                                         "reset_at": NOW + 10}}}
    windows, plan = windows_from_event(event, NOW)
    assert plan == "plus" and windows[0].used_percent == 99 and windows[0].reset_after == 10


def test_usage_limit_detection() -> None:
    assert is_usage_limit({"error": {"type": "usage_limit_reached"}})
    assert is_usage_limit({"error": {"code": "USAGE_LIMIT_REACHED"}})
    assert is_usage_limit({"error": "You have hit your usage limit."})
    assert is_usage_limit({"message": "The usage limit has been exceeded"})
    assert is_usage_limit({"type": "response.failed", "response": {"error": {
        "code": "usage_limit_reached"}}})
    assert not is_usage_limit({"error": {"type": "server_is_overloaded",
                                         "message": "Selected model is at capacity"}})
    assert not is_usage_limit({"error": {"message": "rate limit reached"}})
    sse = b'event: error\ndata: {"type":"error","error":{"type":"usage_limit_reached"}}\n\n'
    assert usage_limit_in_body(sse)
    assert not usage_limit_in_body(b'data: {"type":"response.created"}\n\n')
    assert is_overload(503, b"") and is_overload(400, b"model is at capacity")
    assert not is_overload(429, json.dumps({"error": {"type": "usage_limit_reached"}}).encode())


def test_book_scores() -> None:
    book = UsageBook()
    assert book.score("a", True, NOW) == UNKNOWN
    assert book.score("k", False, NOW) == API_KEY
    book.record_failure("b", "HTTP 500", NOW)
    assert book.score("b", True, NOW) == UNKNOWN_RISKY
    windows = windows_from_headers(
        Headers({b"x-codex-primary-used-percent": [b"30"],
                 b"x-codex-primary-window-minutes": [b"300"],
                 b"x-codex-primary-reset-after-seconds": [b"100"]}), NOW)
    book.record("a", windows, NOW, "headers")
    assert round(book.score("a", True, NOW).headroom, 6) == 0.70
    # once the window resets, the account is fresh again
    assert book.score("a", True, NOW + 101).headroom == 1.0


def test_exhaustion_marks_expire_and_are_cleared_by_headroom() -> None:
    book = UsageBook()
    until = book.mark_exhausted("a", NOW, None, "429")
    assert until == NOW + DEFAULT_EXHAUSTED_FOR
    assert book.score("a", True, NOW + 1) == EXHAUSTED
    assert book.score("a", True, NOW + DEFAULT_EXHAUSTED_FOR + 1) == UNKNOWN
    book.mark_exhausted("a", NOW, 3600, "429")
    windows, _ = windows_from_usage(
        {"rate_limit": {"primary_window": {"used_percent": 10, "limit_window_seconds": 18000}}},
        NOW,
    )
    book.record("a", windows, NOW + 5, "poll")
    assert book.exhausted_until("a", NOW + 6) is None
    full, _ = windows_from_usage(
        {"rate_limit": {"primary_window": {"used_percent": 100, "limit_window_seconds": 18000,
                                           "reset_after_seconds": 7200}}},
        NOW,
    )
    book.record("a", full, NOW, "poll")
    assert book.exhausted_until("a", NOW) == NOW + 7200
