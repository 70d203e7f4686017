# -*- test-case-name: tests.test_timefmt -*-
"""
The one way Subrouter writes a moment: RFC 3339 in UTC, as the ``cx`` store
and the admin endpoints show it (``2026-04-28T00:00:00Z``), and with
microseconds for transcript events.
"""

from __future__ import annotations

import time


def rfc3339(seconds: float | None = None) -> str:
    """
    UTC time to the second, e.g. ``2026-04-28T00:00:00Z``.

    :param seconds: a POSIX time; now when None.
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def rfc3339_micro(seconds: float) -> str:
    """
    UTC time to the microsecond, e.g. ``2026-04-28T00:00:00.123456Z``.
    """
    whole = int(seconds)
    micros = round((seconds - whole) * 1_000_000)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{micros:06d}Z"
