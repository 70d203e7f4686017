# -*- test-case-name: tests.test_state_usage_rows -*-
"""
Token usage records shared through Redis, so ``/_subrouter/token-usage`` and
the dashboard of any instance show the whole team's traffic.

:class:`RedisUsageStore` is a usage store (the interface of the token
ledger's store) that wraps this instance's own file store: every row is
written there first (nothing is ever lost to an outage), then to Redis,
where queries read every instance's rows. Rows this instance could not send
while Redis was unreachable are kept (up to :data:`MAX_PENDING`) and sent
when it is back. Per-response rows live in one sorted set per UTC day for
the raw horizon; older days are rolled up into hourly rows by whichever
instance takes the day's lock first.

Its methods block: the ledger calls them from its own thread, and queries
from a thread pool. They run the Redis calls on the reactor and wait; on the
reactor thread itself (a row written during shutdown) nothing is sent and
the rows stay pending.

Rows are opaque here (the ledger owns their shape): ``encode``/``decode``
turn them into JSON documents and back, ``start`` gives a row's time and
``roll_up`` sums rows per hour.
"""

from __future__ import annotations

import calendar
import json
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.threadable import isInIOThread

from subrouter.state.link import RedisLink, Unavailable
from subrouter.state.redis import PREFIX

_log = Logger()

DAY = 86400.0
#: rows kept for Redis while it is unreachable
MAX_PENDING = 100_000
#: how long one blocking call waits for Redis
WAIT = 5.0

_APPEND = """
for i = 1, #ARGV, 3 do
  local key = KEYS[1] .. ARGV[i]
  redis.call('ZADD', key, tonumber(ARGV[i + 1]), ARGV[i + 2])
  redis.call('EXPIRE', key, tonumber(KEYS[2]))
end
return #ARGV / 3
"""


def _day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _days(since: float, until: float) -> list[str]:
    names = []
    at = since // DAY * DAY
    while at < until:
        names.append(_day(at))
        at += DAY
    return names


class RedisUsageStore:
    """
    :param local: this instance's own usage store (written first, read when
        Redis is unreachable).
    :param link: the Redis connection.
    :param reactor: where the Redis calls run.
    """

    def __init__(
        self, local: Any, link: RedisLink, reactor: Any, *,
        encode: Callable[[Any], dict[str, Any]], decode: Callable[[Any], Any],
        start: Callable[[Any], float], roll_up: Callable[[list[Any]], list[Any]],
        raw_days: int = 7, retention: float = 90 * DAY,
    ) -> None:
        self.local = local
        self._link = link
        self._reactor = reactor
        self._encode = encode
        self._decode = decode
        self._start = start
        self._roll_up = roll_up
        self.raw_days = raw_days
        self.retention = retention
        self._pending: list[tuple[str, float, str]] = []
        self._tag = secrets.token_hex(4)
        self._serial = 0
        #: rows dropped because Redis stayed away too long (they are in the local store)
        self.dropped = 0

    # -- the store interface -----------------------------------------------------------

    def open(self, now: float) -> None:
        self.local.open(now)

    def append(self, rows: Sequence[Any]) -> None:
        self.local.append(rows)
        for row in rows:
            self._serial += 1
            doc = dict(self._encode(row))
            # unique, so two equal rows from two instances are both kept
            doc["i"] = f"{self._tag}-{self._serial}"
            at = self._start(row)
            self._pending.append((_day(at), at, json.dumps(doc, separators=(",", ":"))))
        if len(self._pending) > MAX_PENDING:
            extra = len(self._pending) - MAX_PENDING
            self.dropped += extra
            del self._pending[:extra]
        self._send()

    def _send(self) -> None:
        if not self._pending or isInIOThread() or not self._link.up:
            return
        batch, self._pending = self._pending, []
        args: list[str] = []
        for day, at, doc in batch:
            args += [day, repr(at), doc]
        keep = int(self.raw_days * DAY + 2 * DAY)
        try:
            self._call(lambda: self._link.eval(_APPEND, [PREFIX + "usage:raw:", str(keep)], args,
                                               timeout=WAIT))
        except Unavailable:
            self._pending[:0] = batch

    def rows(self, since: float, until: float) -> tuple[list[Any], str]:
        """
        Every instance's rows in the range (this instance's own while Redis
        is unreachable).
        """
        if isInIOThread() or not self._link.up:
            rows: tuple[list[Any], str] = self.local.rows(since, until)
            return rows
        self._send()
        try:
            return self._read(since, until)
        except Unavailable:
            rows = self.local.rows(since, until)
            return rows

    def _read(self, since: float, until: float) -> tuple[list[Any], str]:
        now = time.time()
        raw_horizon = now // DAY * DAY - self.raw_days * DAY
        out: list[Any] = []

        def fetch(method: str, key: str, *args: Any) -> list[Any]:
            return self._parse(self._call(lambda: self._link.call(method, key, *args,
                                                                   timeout=WAIT)))

        if since >= raw_horizon:
            for day in _days(since, until):
                out += fetch("zrangebyscore", PREFIX + "usage:raw:" + day, since, f"({until}")
            return out, "raw"
        for day in _days(since, until):
            if day >= _day(raw_horizon):
                rows = self._roll_up(fetch("zrangebyscore", PREFIX + "usage:raw:" + day,
                                           "-inf", "+inf"))
            else:
                rows = fetch("lrange", PREFIX + "usage:hourly:" + day, 0, -1)
            out += [r for r in rows if self._start(r) + 3600 > since and self._start(r) < until]
        return out, "hourly"

    def _parse(self, found: Any) -> list[Any]:
        rows = []
        for raw in found or []:
            try:
                rows.append(self._decode(json.loads(raw)))
            except ValueError:
                continue
        return rows

    def maintain(self, now: float) -> None:
        """
        Roll up raw days older than the raw horizon (one instance per day,
        under a lock) and let rollups expire at the retention.
        """
        self.local.maintain(now)
        if isInIOThread() or not self._link.up:
            return
        today = now // DAY * DAY
        horizon = today - self.raw_days * DAY
        try:
            keys = self._call(lambda: self._link.call("keys", PREFIX + "usage:raw:*",
                                                      timeout=WAIT))
            for key in keys or []:
                day = str(key).rsplit(":", 1)[1]
                if day >= _day(horizon):
                    continue
                self._roll_up_day(day)
        except Unavailable:
            return

    def _roll_up_day(self, day: str) -> None:
        lock = PREFIX + "usage:rollup-lock:" + day
        got = self._call(lambda: self._link.call("set", lock, self._tag, 600, None, True,
                                                 timeout=WAIT))
        if not got:
            return
        raw_key = PREFIX + "usage:raw:" + day
        found = self._call(lambda: self._link.call("zrangebyscore", raw_key, "-inf", "+inf",
                                                   timeout=WAIT))
        rows = self._roll_up(self._parse(found))
        docs = [json.dumps(self._encode(r), separators=(",", ":")) for r in rows]
        hourly = PREFIX + "usage:hourly:" + day
        expire = max(int(calendar.timegm(time.strptime(day, "%Y-%m-%d")) + self.retention
                         - time.time()), 1)

        async def write() -> None:
            await self._link.call("delete", hourly, timeout=WAIT)
            if docs:
                await self._link.call("rpush", hourly, docs, timeout=WAIT)
                await self._link.call("expire", hourly, expire, timeout=WAIT)
            await self._link.call("delete", raw_key, timeout=WAIT)

        self._call(lambda: Deferred.fromCoroutine(write()))

    def close(self) -> None:
        self._send()
        self.local.close()

    def _call(self, make: Callable[[], Deferred[Any]]) -> Any:
        return blockingCallFromThread(self._reactor, make)
