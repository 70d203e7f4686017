# -*- test-case-name: tests.test_accounting -*-
"""
What ``/_subrouter/token-usage`` and ``/_subrouter/conversations`` answer:
totals, time buckets, breakdowns and per-conversation sums over usage rows.
Pure: no I/O, time passed in.

Buckets are laid in a time zone (``tz=``, an IANA name or ``+HH:MM``; UTC by
default): a day bucket runs from local midnight to local midnight, however
long DST makes it; fixed buckets (minutes, hours) are aligned to the zone's
offset at the start of the range.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs

from subrouter.accounting.extract import TOKEN_FIELDS
from subrouter.accounting.rows import HOUR, Row
from subrouter.config import parse_duration

DAY = 86400.0
#: the dimensions a breakdown can be by
DIMENSIONS = ("user", "account", "model", "agent", "provider", "conversation")
DEFAULT_BY = ("user", "account", "model", "agent")
#: the most buckets one answer may hold
MAX_BUCKETS = 5000
DEFAULT_RANGE = DAY
_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$")


class QueryError(ValueError):
    """
    A query parameter that cannot be used; the message says which and why.
    """


@attrs.frozen
class Query:
    """
    :ivar bucket: seconds per bucket, or ``"day"`` for local calendar days.
    """

    since: float
    until: float
    bucket: float | str
    tz: tzinfo
    tz_name: str
    by: tuple[str, ...] = DEFAULT_BY
    limit: int = 100


def parse_zone(value: str | None) -> tuple[tzinfo, str]:
    """
    A time zone from an IANA name (``Europe/Paris``), ``UTC`` or an offset
    (``+05:30``, ``-8``).
    """
    if value is None or not value.strip() or value.strip().upper() in ("UTC", "Z", "GMT"):
        return UTC, "UTC"
    text = value.strip()
    match = _OFFSET.match(text)
    if match:
        sign, hours, minutes = match.groups()
        delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
        if delta > timedelta(hours=14):
            raise QueryError(f"tz: {text!r} is not a UTC offset")
        name = f"{sign}{int(hours):02d}:{int(minutes or 0):02d}"
        return timezone(-delta if sign == "-" else delta, name), name
    try:
        return ZoneInfo(text), text
    except (ZoneInfoNotFoundError, ValueError):
        raise QueryError(f"tz: unknown time zone {text!r}") from None


def parse_time(value: str, now: float, zone: tzinfo, name: str) -> float:
    """
    A point in time: ``now``, seconds since the epoch, an ISO 8601 date or
    time (a time without offset is in ``zone``), or a duration ago (``24h``,
    ``7d``).
    """
    text = value.strip()
    if text.lower() == "now":
        return now
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
        raise QueryError(f"{name}: {text!r} is not a time")
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise QueryError(
            f"{name}: {text!r} is not a time (seconds since the epoch, ISO 8601, or a "
            "duration ago such as 24h or 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.timestamp()


def auto_bucket(span: float) -> float | str:
    """
    The bucket the original dashboard used: minutes up to 2 h, hours up to
    48 h, days beyond.
    """
    if span <= 2 * HOUR:
        return 60.0
    if span <= 48 * HOUR:
        return HOUR
    return "day"


def parse_query(args: Mapping[str, str], now: float) -> Query:
    """
    The query of ``?since=&until=&bucket=&by=&tz=&limit=``.

    :raises QueryError: naming the first unusable parameter.
    """
    zone, zone_name = parse_zone(args.get("tz"))
    until = parse_time(args["until"], now, zone, "until") if args.get("until") else now
    since = (
        parse_time(args["since"], now, zone, "since")
        if args.get("since") else until - DEFAULT_RANGE
    )
    if since >= until:
        raise QueryError("since: must be before until")
    bucket_text = (args.get("bucket") or "auto").strip().lower()
    bucket: float | str
    if bucket_text == "auto":
        bucket = auto_bucket(until - since)
    elif bucket_text in ("day", "1d", "d"):
        bucket = "day"
    elif bucket_text in ("minute", "min"):
        bucket = 60.0
    elif bucket_text == "hour":
        bucket = HOUR
    else:
        try:
            bucket = parse_duration(bucket_text)
        except ValueError:
            raise QueryError(
                f"bucket: {bucket_text!r} is not auto, minute, hour, day or a duration "
                "such as 5m"
            ) from None
        if bucket < 60:
            raise QueryError("bucket: must be a minute or more")
    count = (until - since) / (DAY if bucket == "day" else float(bucket))
    if count > MAX_BUCKETS:
        raise QueryError(f"bucket: the range would need {int(count)} buckets (at most "
                         f"{MAX_BUCKETS}); choose a larger bucket")
    by_text = args.get("by")
    by: tuple[str, ...] = DEFAULT_BY
    if by_text is not None:
        by = tuple(p.strip().lower() for p in by_text.split(",") if p.strip())
        for name in by:
            if name not in DIMENSIONS:
                raise QueryError(f"by: {name!r} is not one of {', '.join(DIMENSIONS)}")
    try:
        limit = int(args.get("limit") or 100)
    except ValueError:
        raise QueryError("limit: must be a whole number") from None
    return Query(since, until, bucket, zone, zone_name, by, max(1, min(limit, 10000)))


def edges(query: Query) -> list[float]:
    """
    The starts of the buckets covering ``[since, until)``, in order.
    """
    zone = query.tz
    if query.bucket == "day":
        day = datetime.fromtimestamp(query.since, zone).date()
        out = []
        while True:
            start = _midnight(day, zone)
            if start >= query.until:
                break
            out.append(start)
            day += timedelta(days=1)
        return out
    size = float(query.bucket)
    offset = zone.utcoffset(datetime.fromtimestamp(query.since, zone))
    shift = offset.total_seconds() if offset is not None else 0.0
    first = math.floor((query.since + shift) / size) * size - shift
    out = []
    start = first
    while start < query.until:
        out.append(start)
        start += size
    return out


def _midnight(day: date, zone: tzinfo) -> float:
    return datetime.combine(day, time(0), tzinfo=zone).timestamp()


def usage_of(rows: Iterable[Row]) -> dict[str, Any]:
    """
    The summed counters of some rows, with their cache-hit ratio.
    """
    sums = dict.fromkeys(("requests", *TOKEN_FIELDS), 0)
    for row in rows:
        sums["requests"] += row.requests
        for name in TOKEN_FIELDS:
            sums[name] += getattr(row, name)
    return _with_ratio(sums)


def _with_ratio(sums: dict[str, Any]) -> dict[str, Any]:
    prompt = sums["input_tokens"]
    sums["cache_hit_ratio"] = round(sums["cached_input_tokens"] / prompt, 4) if prompt else None
    return sums


class _Sum:
    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values = [0] * (1 + len(TOKEN_FIELDS))

    def add(self, row: Row) -> None:
        values = self.values
        values[0] += row.requests
        for i, name in enumerate(TOKEN_FIELDS, 1):
            values[i] += getattr(row, name)

    def total(self) -> int:
        return self.values[-1]

    def as_json(self) -> dict[str, Any]:
        sums = {"requests": self.values[0]}
        for i, name in enumerate(TOKEN_FIELDS, 1):
            sums[name] = self.values[i]
        return _with_ratio(sums)


def _dimension(row: Row, name: str) -> str | None:
    if name == "conversation":
        return f"{row.agent}/{row.session}"
    value: str | None = getattr(row, name)
    return value


def _iso(seconds: float, zone: tzinfo) -> str:
    return datetime.fromtimestamp(seconds, zone).isoformat(timespec="seconds")


def report(rows: Iterable[Row], query: Query, *, resolution: str) -> dict[str, Any]:
    """
    Totals, buckets and breakdowns of the rows that start in the query's
    range.

    :param resolution: ``raw`` (per-response rows, exact edges) or
        ``hourly`` (rollups: a row counts in the bucket its hour starts in).
    """
    starts = edges(query)
    buckets = [_Sum() for _ in starts]
    total = _Sum()
    breakdowns: dict[str, dict[str | None, _Sum]] = {name: {} for name in query.by}
    since = query.since if resolution == "raw" else math.floor(query.since / HOUR) * HOUR
    for row in rows:
        at = row.start
        if at < since or at >= query.until:
            continue
        total.add(row)
        index = bisect.bisect_right(starts, at) - 1
        buckets[max(index, 0)].add(row)
        for name, groups in breakdowns.items():
            key = _dimension(row, name)
            found = groups.get(key)
            if found is None:
                found = groups[key] = _Sum()
            found.add(row)
    zone = query.tz
    return {
        "since": _iso(query.since, zone),
        "until": _iso(query.until, zone),
        "since_ts": query.since,
        "until_ts": query.until,
        "tz": query.tz_name,
        "bucket": "day" if query.bucket == "day" else int(float(query.bucket)),
        "resolution": resolution,
        "totals": total.as_json(),
        "buckets": [
            {"start": start, "label": _iso(start, zone), "usage": b.as_json()}
            for start, b in zip(starts, buckets, strict=True)
        ],
        "by": {name: _ranked(groups, query.limit) for name, groups in breakdowns.items()},
    }


def _ranked(groups: dict[str | None, _Sum], limit: int) -> dict[str, Any]:
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1].total(), kv[0] is None, kv[0] or ""))
    return {
        "rows": [{"key": key, "usage": s.as_json()} for key, s in ordered[:limit]],
        "more": max(0, len(ordered) - limit),
    }


def conversations(rows: Iterable[Row], since: float, until: float,
                  limit: int = 200) -> list[dict[str, Any]]:
    """
    One entry per conversation seen in ``[since, until)``: agent, id, the
    accounts and user it had (latest first), first and last seen, requests,
    tokens and cache-hit ratio; the most recently seen first.
    """
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if row.last < since or row.first >= until:
            continue
        key = (row.agent, row.session)
        entry = found.get(key)
        if entry is None:
            entry = found[key] = {
                "agent": row.agent, "session": row.session, "first": row.first,
                "last": row.last, "sum": _Sum(), "accounts": {}, "users": {}, "models": {},
            }
        entry["first"] = min(entry["first"], row.first)
        entry["last"] = max(entry["last"], row.last)
        entry["sum"].add(row)
        for field, value in (("accounts", row.account), ("users", row.user),
                             ("models", row.model)):
            if value is not None:
                entry[field][value] = max(entry[field].get(value, 0.0), row.last)
    ordered = sorted(found.values(), key=lambda e: e["last"], reverse=True)[:limit]
    out = []
    for entry in ordered:
        accounts = _latest_first(entry["accounts"])
        users = _latest_first(entry["users"])
        out.append({
            "agent": entry["agent"],
            "session": entry["session"],
            "account": accounts[0] if accounts else None,
            "accounts": accounts,
            "user": users[0] if users else None,
            "models": _latest_first(entry["models"]),
            "first_seen": entry["first"],
            "last_seen": entry["last"],
            "usage": entry["sum"].as_json(),
        })
    return out


def _latest_first(seen: dict[str, float]) -> list[str]:
    return [k for k, _ in sorted(seen.items(), key=lambda kv: kv[1], reverse=True)]


def within(rows: Sequence[Row], since: float, until: float) -> list[Row]:
    """
    The rows of a time-sorted sequence that start in ``[since, until)``.
    """
    lo = bisect.bisect_left(rows, since, key=lambda r: r.start)
    hi = bisect.bisect_left(rows, until, key=lambda r: r.start)
    return list(rows[lo:hi])
