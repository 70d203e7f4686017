"""
The Redis state backend against a real ``redis-server``: assignments and
live counts, the rate-limit book, encrypted token sets, the refresh lock, and
what happens while Redis is down.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from cryptography.fernet import Fernet

from subrouter.accounts.shared import TokenSet
from subrouter.sessions.scheduler import Window
from subrouter.sessions.usage import UsageBook
from subrouter.state.link import RedisLink, Unavailable
from subrouter.state.redis import SharedSessions, SharedTokenSets, UsageSync
from subrouter.state.settings import RedisURL, parse_state, read_key_file
from tests.support.daemon import reactor, sleep
from tests.support.redis import RedisServer


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def _up(link: RedisLink) -> None:
    deadline = time.monotonic() + 5
    while not link.up:
        assert time.monotonic() < deadline, "Redis link never came up"
        await sleep(0.02)


@pytest_twisted.async_yield_fixture
async def links(redis: RedisServer) -> AsyncIterator[list[RedisLink]]:
    url = parse_state(redis.url)
    assert url is not None
    made = [RedisLink(url, reactor) for _ in range(3)]
    for link in made:
        link.start()
    for link in made:
        await _up(link)
    yield made
    for link in made:
        d = link.stop()
        if d is not None:
            await d
    await sleep(0.05)


def test_state_urls_parse_and_never_show_the_password() -> None:
    assert parse_state("embedded") is None
    url = parse_state("redis://:s3cret@10.0.0.5:6380/2")
    assert url == RedisURL("10.0.0.5", 6380, 2, "s3cret")
    assert "s3cret" not in repr(url) and "s3cret" not in url.display()
    assert parse_state("redis://localhost", {}) == RedisURL("localhost", 6379, 0)
    # a password kept off the command line
    assert parse_state("redis://h:1/0", {"SUBROUTER_REDIS_PASSWORD": "pw"}) == RedisURL(
        "h", 1, 0, "pw")
    for bad in ("http://x:1/0", "redis://:pw@/0", "redis://h:1/zero", "rediss://h:1/0"):
        with pytest.raises(ValueError):
            parse_state(bad)


def test_the_key_file_must_hold_a_key_and_be_private(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(Fernet.generate_key() + b"\n")
    path.chmod(0o644)
    with pytest.raises(ValueError, match="readable by others"):
        read_key_file(str(path))
    path.chmod(0o600)
    assert len(read_key_file(str(path))) == 44
    path.write_text("not a key")
    with pytest.raises(ValueError, match="does not hold a key"):
        read_key_file(str(path))


@pytest_twisted.ensureDeferred
async def test_a_conversation_placed_by_one_instance_is_found_by_another(
    links: list[RedisLink],
) -> None:
    a, b = SharedSessions(links[0], 1800.0), SharedSessions(links[1], 1800.0)
    now = time.time()
    first = await a.lookup("codex", "conv-1", now, None, ["x@e", "y@e"])
    assert first.assignment is None and first.counts == {}
    placed = await a.assign("codex", "conv-1", "y@e", now, fallback=False, email="u@e",
                            only_if_new=True)
    assert placed is not None and placed.account_id == "y@e"
    # another instance placing the same new conversation keeps the first placement
    raced = await b.assign("codex", "conv-1", "x@e", now, fallback=False, email=None,
                           only_if_new=True)
    assert raced is not None and raced.account_id == "y@e"
    found = await b.lookup("codex", "conv-1", now + 1, None, ["x@e", "y@e"])
    assert found.assignment is not None
    assert found.assignment.account_id == "y@e" and found.assignment.user_email == "u@e"
    counts = await b.lookup("codex", "conv-2", now + 1, None, ["x@e", "y@e"])
    assert counts.counts == {"y@e": 1}
    # a move (not only_if_new) takes the conversation off its old account
    await b.assign("codex", "conv-1", "x@e", now + 2, fallback=False, email=None,
                   only_if_new=False)
    counts = await a.lookup("codex", "conv-3", now + 2, None, ["x@e", "y@e"])
    assert counts.counts == {"x@e": 1}
    # idle conversations stop counting
    later = await a.lookup("codex", "conv-3", now + 4000, None, ["x@e", "y@e"])
    assert later.counts == {}


def _no_expiry(redis: RedisServer, key: str) -> bool:
    # PERSIST answers 0 for a key that exists and has no expiry
    # (and 1 after taking one off, which would fail the check anyway)
    return redis.command("EXISTS", key) == "1" and redis.command("PERSIST", key) == "0"


@pytest_twisted.ensureDeferred
async def test_assignments_are_kept_as_long_as_the_session_retention(
    links: list[RedisLink], redis: RedisServer,
) -> None:
    now = time.time()
    week = SharedSessions(links[0], 1800.0, keep=7 * 86400)
    await week.assign("codex", "c-week", "x@e", now, fallback=False, email=None,
                      only_if_new=True)
    assert 7 * 86400 - 5 <= int(redis.command("TTL", "subrouter:a:codex:c-week")) <= 7 * 86400
    # every request the conversation makes starts its retention again
    redis.command("EXPIRE", "subrouter:a:codex:c-week", "100")
    await week.lookup("codex", "c-week", now + 1, None, ["x@e"])
    assert int(redis.command("TTL", "subrouter:a:codex:c-week")) > 100
    # --session-retention 0 keeps every one: no expiry at all
    forever = SharedSessions(links[1], 1800.0, keep=0)
    await forever.assign("codex", "c-all", "x@e", now, fallback=False, email=None,
                         only_if_new=True)
    assert _no_expiry(redis, "subrouter:a:codex:c-all")
    await forever.lookup("codex", "c-week", now + 2, None, ["x@e"])
    assert _no_expiry(redis, "subrouter:a:codex:c-week")
    restored = await forever.restore(
        [{"agent": "codex", "key": "c-back", "account_id": "x@e", "first_seen": now,
          "last_seen": now}], now)
    assert restored == 1
    assert _no_expiry(redis, "subrouter:a:codex:c-back")
    restored = await week.restore(
        [{"agent": "codex", "key": "c-back2", "account_id": "x@e", "first_seen": now,
          "last_seen": now}], now)
    assert restored == 1
    assert int(redis.command("TTL", "subrouter:a:codex:c-back2")) > 86400


@pytest_twisted.ensureDeferred
async def test_exhaustion_marks_and_windows_reach_the_other_books(
    links: list[RedisLink],
) -> None:
    books = [UsageBook() for _ in range(3)]
    syncs = [UsageSync(link, book) for link, book in zip(links, books, strict=True)]
    now = time.time()
    books[0].mark_exhausted("x@e", now, 300, "usage limit reached (HTTP 429)")
    books[1].record("y@e", [Window("primary", 40.0, 18000, 600.0)], now, "headers")
    for _ in range(2):
        for sync in syncs:
            d = sync.tick()
            if d is not None:
                await d
    for book in books:
        assert book.exhausted_until("x@e", now + 1) == pytest.approx(now + 300)
        assert [w.used_percent for w in book.current_windows("y@e", now)] == [40.0]
    # an older observation never replaces a newer one
    books[2].record("y@e", [Window("primary", 90.0, 18000, 600.0)], now - 50, "poll")
    books[1].record("y@e", [Window("primary", 45.0, 18000, 600.0)], now + 5, "headers")
    for sync in (syncs[2], syncs[1], syncs[0], syncs[2]):
        d = sync.tick()
        if d is not None:
            await d
    assert [w.used_percent for w in books[0].current_windows("y@e", now + 5)] == [45.0]
    assert [w.used_percent for w in books[2].current_windows("y@e", now + 5)] == [45.0]


def _tokens(n: int, exp: float) -> TokenSet:
    return TokenSet(f"access-{n}", f"refresh-{n}", f"id-{n}", exp, exp - 3600)


@pytest_twisted.ensureDeferred
async def test_token_sets_are_encrypted_and_the_newest_wins(
    links: list[RedisLink], redis: RedisServer
) -> None:
    key = Fernet.generate_key()
    a, b = SharedTokenSets(links[0], key, reactor), SharedTokenSets(links[1], key, reactor)
    now = time.time()
    assert await a.publish("x@e", _tokens(2, now + 7200)) is True
    assert await b.publish("x@e", _tokens(1, now + 3600)) is False  # older: kept out
    newest = await b.newest("x@e")
    assert newest is not None and newest.refresh_token == "refresh-2"
    stored = redis.command("HGET", "subrouter:tokens", "x@e")
    assert "refresh-2" not in stored and "access-2" not in stored
    other = SharedTokenSets(links[2], Fernet.generate_key(), reactor)
    assert await other.newest("x@e") is None  # a wrong key reads nothing


@pytest_twisted.ensureDeferred
async def test_one_refresh_lock_holder_at_a_time(links: list[RedisLink]) -> None:
    sets = [SharedTokenSets(link, Fernet.generate_key(), reactor) for link in links]
    first = await sets[0].acquire("x@e")
    assert first is not None
    waiting = sets[1].acquire("x@e")
    await sleep(0.2)
    assert not waiting.called
    await first.release()
    second = await waiting
    assert second is not None
    await second.release()


@pytest_twisted.ensureDeferred
async def test_while_redis_is_down_calls_fail_fast_and_it_resyncs_after(
    links: list[RedisLink], redis: RedisServer
) -> None:
    link = links[0]
    resyncs: list[None] = []
    link.on_reconnect(lambda: resyncs.append(None))
    redis.stop()
    deadline = time.monotonic() + 5
    while link.up:
        assert time.monotonic() < deadline
        await sleep(0.05)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await SharedSessions(link, 60.0).lookup("codex", "c", time.time(), None, ["x"])
    assert time.monotonic() - started < 0.1
    assert await SharedTokenSets(link, Fernet.generate_key(), reactor).acquire("x") is None
    redis.start()
    await _up(link)
    assert resyncs == [None]
