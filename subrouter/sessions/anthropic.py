# -*- test-case-name: tests.test_anthropic_signals -*-
"""
What Anthropic's answers say about a Claude subscription's limits. Pure
functions, no I/O; :class:`~subrouter.sessions.usage.UsageBook` keeps the
result like the Codex signals.

Two sources give the same two windows (``five_hour``, 5 h, and
``seven_day``, 7 days):

- the ``anthropic-ratelimit-unified-*`` headers of every subscription answer
  (``claude-code.md``): ``-5h-utilization``/``-7d-utilization`` are fractions
  (0 to 1), ``-5h-reset``/``-7d-reset`` epoch seconds, ``-status`` is
  ``allowed``, ``allowed_warning`` or ``rejected``, and on a rejection
  ``-representative-claim`` names the window that ran out and ``-reset``
  when it comes back;
- the OAuth usage endpoint (``GET /api/oauth/usage``, ``cx-accounts.md``
  §5.3), whose ``utilization`` is a percentage (0 to 100) and ``resets_at``
  RFC 3339: note the different scale.

A usage limit is a 429 ``rate_limit_error`` with the unified status
``rejected``; an overload is a 529 ``overloaded_error`` and is never the
account's fault.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

from twisted.web.http_headers import Headers

from subrouter.sessions.scheduler import Window

FIVE_HOUR = ("five_hour", 5 * 3600, b"5h")
SEVEN_DAY = ("seven_day", 7 * 86400, b"7d")
_PREFIX = b"anthropic-ratelimit-unified-"
#: the claims ``-representative-claim`` names, by window
_CLAIMS = {"five_hour": FIVE_HOUR, "seven_day": SEVEN_DAY}


def _header(headers: Headers, suffix: bytes) -> str | None:
    raw = headers.getRawHeaders(_PREFIX + suffix)
    if not raw:
        return None
    return raw[0].decode("latin-1").strip()


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def windows_from_headers(headers: Headers, now: float) -> list[Window]:
    """
    The ``five_hour`` and ``seven_day`` windows in an answer's unified
    rate-limit headers (none when it has none: API keys, errors).
    """
    windows = []
    for name, seconds, tag in (FIVE_HOUR, SEVEN_DAY):
        used = _float(_header(headers, tag + b"-utilization"))
        if used is None:
            continue
        reset = _float(_header(headers, tag + b"-reset"))
        reset_after = max(reset - now, 0.0) if reset is not None and reset > 0 else 0.0
        windows.append(Window(name, min(max(used, 0.0), 1.0) * 100.0, seconds, reset_after))
    return windows


def rejected(headers: Headers) -> bool:
    """
    Whether the unified status says the subscription's limit is reached.
    """
    return (_header(headers, b"status") or "").lower() == "rejected"


def rejection_reset(headers: Headers, now: float) -> float | None:
    """
    Seconds until a rejected subscription may be used again: the unified
    ``-reset``, else the reset of the window the representative claim names.
    """
    reset = _float(_header(headers, b"reset"))
    if reset is None:
        claim = _CLAIMS.get((_header(headers, b"representative-claim") or "").lower())
        if claim is not None:
            reset = _float(_header(headers, claim[2] + b"-reset"))
    if reset is None or reset <= now:
        return None
    return reset - now


def _rfc3339(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def windows_from_oauth_usage(document: object, now: float) -> list[Window]:
    """
    The ``five_hour`` and ``seven_day`` windows of an OAuth usage answer. A
    window whose ``utilization`` is null is unknown, not 0%, and left out.
    """
    if not isinstance(document, Mapping):
        return []
    windows = []
    for name, seconds, _ in (FIVE_HOUR, SEVEN_DAY):
        raw = document.get(name)
        if not isinstance(raw, Mapping):
            continue
        used = raw.get("utilization")
        if isinstance(used, bool) or not isinstance(used, (int, float)):
            continue
        resets_at = _rfc3339(raw.get("resets_at"))
        reset_after = max(resets_at - now, 0.0) if resets_at is not None else 0.0
        windows.append(Window(name, min(max(float(used), 0.0), 100.0), seconds, reset_after))
    return windows
