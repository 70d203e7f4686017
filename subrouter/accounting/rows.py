# -*- test-case-name: tests.test_accounting -*-
"""
Usage rows: one record per response, or an hour's records of one
conversation summed. Pure: no I/O.

Both kinds share one shape, so every query and rollup treats them alike: a
record is a row with ``requests == 1`` and ``first == last == start``.
"""

from __future__ import annotations

from typing import Any

import attrs

from subrouter.accounting.extract import TOKEN_FIELDS, Origin, Usage

HOUR = 3600.0
#: the fields that say whose a row is (an hourly rollup sums rows equal on these)
KEY_FIELDS = ("agent", "session", "user", "account", "model", "provider")


@attrs.define(slots=True)
class Row:
    """
    :ivar start: the record's time, or the start of the rollup's hour (UTC
        seconds).
    :ivar first: the earliest record summed in.
    :ivar last: the latest record summed in.
    """

    start: float
    agent: str
    session: str
    user: str | None
    account: str | None
    model: str | None
    provider: str
    requests: int = 1
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    first: float = 0.0
    last: float = 0.0

    @classmethod
    def record(cls, at: float, origin: Origin, usage: Usage) -> Row:
        """
        The row of one response.
        """
        return cls(
            start=at, agent=origin.agent, session=origin.session, user=origin.user,
            account=origin.account, model=usage.model, provider=origin.provider,
            requests=1, input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens, output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens, total_tokens=usage.total_tokens,
            first=at, last=at,
        )

    def key(self) -> tuple[Any, ...]:
        return (self.agent, self.session, self.user, self.account, self.model, self.provider)

    def add(self, other: Row) -> None:
        """
        Sum ``other`` into this row.
        """
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.cached_input_tokens += other.cached_input_tokens
        self.cache_write_tokens += other.cache_write_tokens
        self.output_tokens += other.output_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.total_tokens += other.total_tokens
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)

    def hour_of(self) -> Row:
        """
        A new rollup row holding this row, at the start of its UTC hour.
        """
        return attrs.evolve(self, start=hour_start(self.start))

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "t": round(self.start, 3),
            "agent": self.agent,
            "session": self.session,
            "user": self.user,
            "account": self.account,
            "model": self.model,
            "provider": self.provider,
        }
        if self.requests != 1 or self.first != self.start or self.last != self.start:
            out["requests"] = self.requests
            out["first"] = round(self.first, 3)
            out["last"] = round(self.last, 3)
        for name in TOKEN_FIELDS:
            value = getattr(self, name)
            if value:
                out[name] = value
        return out

    @classmethod
    def from_json(cls, document: Any) -> Row:
        """
        :raises ValueError: when ``document`` is not a row.
        """
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        start = document.get("t")
        agent = document.get("agent")
        session = document.get("session")
        if not isinstance(start, (int, float)) or isinstance(start, bool):
            raise ValueError('"t" is not a time')
        if not isinstance(agent, str) or not isinstance(session, str):
            raise ValueError('"agent" or "session" is missing')
        counts = {}
        for name in (*TOKEN_FIELDS, "requests"):
            value = document.get(name, 1 if name == "requests" else 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f'"{name}" is not a count')
            counts[name] = value
        first = document.get("first", start)
        last = document.get("last", start)
        if not isinstance(first, (int, float)) or not isinstance(last, (int, float)):
            raise ValueError('"first" or "last" is not a time')

        def text(name: str) -> str | None:
            value = document.get(name)
            return value if isinstance(value, str) else None

        return cls(
            start=float(start), agent=agent, session=session, user=text("user"),
            account=text("account"), model=text("model"),
            provider=text("provider") or "openai", first=float(first), last=float(last),
            **counts,
        )


def hour_start(at: float) -> float:
    return float(int(at // HOUR) * HOUR)


def roll_up(rows: list[Row]) -> list[Row]:
    """
    Rows summed per UTC hour and key, in time order.
    """
    hours: dict[tuple[Any, ...], Row] = {}
    for row in rows:
        start = hour_start(row.start)
        key = (start, *row.key())
        found = hours.get(key)
        if found is None:
            hours[key] = attrs.evolve(row, start=start)
        else:
            found.add(row)
    return sorted(hours.values(), key=lambda r: r.start)
