"""
Token usage rows shared through a real ``redis-server``: every instance's
queries see every instance's rows; rows made while Redis is away are sent
when it is back; old days are rolled up once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from subrouter.state.link import RedisLink
from subrouter.state.settings import parse_state
from subrouter.state.usage_rows import RedisUsageStore
from tests.support.daemon import reactor, sleep
from tests.support.redis import RedisServer


class LocalStore:
    """
    A stand-in for the ledger's file store: rows are dicts with ``t``.
    """

    def __init__(self) -> None:
        self.kept: list[dict[str, Any]] = []
        self.closed = False

    def open(self, now: float) -> None:
        pass

    def append(self, rows: list[dict[str, Any]]) -> None:
        self.kept += rows

    def rows(self, since: float, until: float) -> tuple[list[dict[str, Any]], str]:
        return [r for r in self.kept if since <= r["t"] < until], "raw"

    def maintain(self, now: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def roll_up(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    hours: dict[tuple[float, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["t"] // 3600 * 3600, row["who"])
        found = hours.setdefault(key, {"t": key[0], "who": row["who"], "tokens": 0})
        found["tokens"] += row["tokens"]
    return sorted(hours.values(), key=lambda r: (r["t"], r["who"]))


def make(link: RedisLink) -> RedisUsageStore:
    return RedisUsageStore(
        LocalStore(), link, reactor,
        encode=lambda r: {k: v for k, v in r.items() if k != "i"},
        decode=lambda d: {k: v for k, v in d.items() if k != "i"},
        start=lambda r: float(r["t"]), roll_up=roll_up, raw_days=2,
    )


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest_twisted.async_yield_fixture
async def links(redis: RedisServer) -> AsyncIterator[list[RedisLink]]:
    url = parse_state(redis.url)
    assert url is not None
    made = [RedisLink(url, reactor) for _ in range(2)]
    for link in made:
        link.start()
    deadline = time.monotonic() + 5
    while not all(link.up for link in made):
        assert time.monotonic() < deadline
        await sleep(0.02)
    yield made
    for link in made:
        d = link.stop()
        if d is not None:
            await d
    await sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_every_instance_reads_every_instances_rows(links: list[RedisLink]) -> None:
    a, b = make(links[0]), make(links[1])
    now = time.time()
    await deferToThread(a.append, [{"t": now - 10, "who": "alice", "tokens": 5}])
    await deferToThread(b.append, [{"t": now - 5, "who": "bob", "tokens": 7},
                                   {"t": now - 5, "who": "bob", "tokens": 7}])
    for store in (a, b):
        rows, resolution = await deferToThread(store.rows, now - 60, now + 1)
        assert resolution == "raw"
        assert sorted((r["who"], r["tokens"]) for r in rows) == [
            ("alice", 5), ("bob", 7), ("bob", 7)]
    # the local store has only its own
    assert [r["who"] for r in a.local.kept] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_rows_made_while_redis_is_down_reach_it_when_it_is_back(
    links: list[RedisLink], redis: RedisServer
) -> None:
    a, b = make(links[0]), make(links[1])
    redis.stop()
    deadline = time.monotonic() + 5
    while links[0].up or links[1].up:
        assert time.monotonic() < deadline
        await sleep(0.05)
    now = time.time()
    await deferToThread(a.append, [{"t": now - 3, "who": "alice", "tokens": 1}])
    rows, _ = await deferToThread(a.rows, now - 60, now + 1)
    assert [r["who"] for r in rows] == ["alice"]  # from the local store
    redis.start()
    while not (links[0].up and links[1].up):
        assert time.monotonic() < deadline + 10
        await sleep(0.05)
    rows, _ = await deferToThread(b.rows, now - 60, now + 1)
    assert rows == []  # not sent yet: a sends with its next append or read
    await deferToThread(a.rows, now - 60, now + 1)
    rows, _ = await deferToThread(b.rows, now - 60, now + 1)
    assert [r["who"] for r in rows] == ["alice"]


@pytest_twisted.ensureDeferred
async def test_old_days_are_rolled_up_once(links: list[RedisLink]) -> None:
    a, b = make(links[0]), make(links[1])
    old = time.time() - 5 * 86400
    hour = old // 3600 * 3600
    await deferToThread(a.append, [{"t": hour + 10, "who": "alice", "tokens": 2},
                                   {"t": hour + 20, "who": "alice", "tokens": 3}])
    await deferToThread(b.append, [{"t": hour + 30, "who": "bob", "tokens": 4}])
    await deferToThread(a.maintain, time.time())
    await deferToThread(b.maintain, time.time())
    rows, resolution = await deferToThread(b.rows, hour, hour + 3600)
    assert resolution == "hourly"
    assert [(r["who"], r["tokens"]) for r in rows] == [("alice", 5), ("bob", 4)]
