"""
A graceful stop of the real Site, in process: what is in flight when the
daemon stops gets to finish within the drain timeout (HTTP streams,
WebSocket responses), new work is refused with 503, ``/_subrouter/health``
and ``/_subrouter/ready`` say so, and what is left at the timeout is cut
visibly (an aborted HTTP response, WebSocket close 1001).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.daemon import Daemon, make_config, reactor, read_all, sleep, start_daemon
from tests.support.slow_backend import SlowBackend
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, Gate, StreamReader, sse, write_oauth_account
from tests.support.websocket import connect, messages

FAR = time.time() + 30 * 86400


@pytest_twisted.async_yield_fixture
async def slow_backend(ca: TestCA) -> AsyncIterator[SlowBackend]:
    fake = SlowBackend(ca)
    await fake.start()
    yield fake
    await fake.stop()


async def _daemon(tmp_path: Path, upstream: FakeUpstream | None, ca: TestCA,
                  **overrides: Any) -> Daemon:
    write_oauth_account(tmp_path / "accounts-store", "a@example.com", exp=FAR, account_id="a")
    running = await start_daemon(make_config(tmp_path, upstream, ca, **overrides))
    deadline = time.monotonic() + 5
    while not (await running.get_json("/_subrouter/accounts"))["accounts"]:
        assert time.monotonic() < deadline
        await sleep(0.02)
    return running


async def _until(condition: Any, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline
        await sleep(0.02)


@pytest_twisted.ensureDeferred
async def test_health_and_ready_report_what_is_in_flight_and_the_drain(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    running = await _daemon(tmp_path, upstream, ca, drain_timeout=10.0)
    # a kept-alive connection, open before the drain, for asking during it
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    keep = HTTPClient(Agent(reactor, pool=pool))
    stopped: Deferred[None] | None = None
    try:
        health = json.loads(await read_all(await keep.get(running.url + "/_subrouter/health")))
        assert health["ok"] is True
        assert health["in_flight"] == {"http": 0, "websocket": 0}
        assert health["draining"] is False
        assert 0 <= health["uptime_s"] < 60
        ready = await running.client.get(running.url + "/_subrouter/ready")
        assert (ready.code, json.loads(await read_all(ready))) == (200, {"ready": True})

        gate = Gate(free=1)
        upstream.script(b"/backend-api/codex/responses", sse(["one", "two"], gate=gate))
        response = await running.request("POST", "/v1/responses", data=b"{}")
        reader = StreamReader()
        response.deliverBody(reader)
        await reader.wait_for(b"one")
        health = await running.get_json("/_subrouter/health")
        assert health["in_flight"] == {"http": 1, "websocket": 0}

        stopped = running.service.stopService()
        ready = await keep.get(running.url + "/_subrouter/ready")
        assert (ready.code, json.loads(await read_all(ready))) == (
            503, {"ready": False, "reason": "draining"})
        health = json.loads(await read_all(await keep.get(running.url + "/_subrouter/health")))
        assert health["draining"] is True
        assert health["in_flight"] == {"http": 1, "websocket": 0}
        refused = await keep.post(running.url + "/v1/responses", data=b"{}")
        assert refused.code == 503
        assert json.loads(await read_all(refused))["error"]["type"] == "shutting_down"
        assert not stopped.called

        gate.release()
        assert await reader.done is None  # the stream in flight ended cleanly
        assert reader.received.count(b"data: ") == 2
        await stopped
    finally:
        await pool.closeCachedConnections()
        if stopped is None:
            await running.service.stopService()
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_stream_longer_than_the_drain_is_aborted_not_finished(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    running = await _daemon(tmp_path, upstream, ca, drain_timeout=0.5)
    try:
        gate = Gate(free=1)
        upstream.script(b"/backend-api/codex/responses", sse(["one", "two"], gate=gate))
        response = await running.request("POST", "/v1/responses", data=b"{}")
        reader = StreamReader()
        response.deliverBody(reader)
        await reader.wait_for(b"one")
        started = time.monotonic()
        await running.service.stopService()
        assert 0.4 < time.monotonic() - started < 5
        assert await reader.done is not None  # cut, never a clean end
        assert b"two" not in reader.received
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_an_idle_websocket_is_closed_with_1001_at_once(
    tmp_path: Path, slow_backend: SlowBackend, ca: TestCA
) -> None:
    running = await _daemon(tmp_path, None, ca, codex_upstream=slow_backend.codex_url,
                            drain_timeout=10.0)
    try:
        _, factory = await connect(running, headers={"session-id": "idle"})
        health = await running.get_json("/_subrouter/health")
        assert health["in_flight"] == {"http": 0, "websocket": 1}
        started = time.monotonic()
        await running.service.stopService()
        code, reason = await factory.closed
        assert time.monotonic() - started < 5
        assert code == 1001
        assert "shutting down" in reason
        await _until(lambda: slow_backend.closed)
        assert slow_backend.closed == [1001]
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_websocket_response_under_way_finishes_then_closes_with_1001(
    tmp_path: Path, slow_backend: SlowBackend, ca: TestCA
) -> None:
    running = await _daemon(tmp_path, None, ca, codex_upstream=slow_backend.codex_url,
                            drain_timeout=10.0)
    try:
        client, factory = await connect(running, headers={"session-id": "busy"})
        client.sendMessage(json.dumps({"type": "response.create", "finish_after": 0.5}).encode())
        await messages(factory, 1)
        stopped = running.service.stopService()
        code, _ = await factory.closed
        assert code == 1001
        assert [json.loads(p)["type"] for p, _ in factory.messages] == [
            "response.output_text.delta", "response.completed"]
        await stopped
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_websocket_response_longer_than_the_drain_gets_1001_at_the_timeout(
    tmp_path: Path, slow_backend: SlowBackend, ca: TestCA
) -> None:
    running = await _daemon(tmp_path, None, ca, codex_upstream=slow_backend.codex_url,
                            drain_timeout=0.5)
    try:
        client, factory = await connect(running, headers={"session-id": "long"})
        client.sendMessage(json.dumps({"type": "response.create", "finish_after": 30}).encode())
        await messages(factory, 1)
        started = time.monotonic()
        await running.service.stopService()
        code, _ = await factory.closed
        assert code == 1001
        assert time.monotonic() - started >= 0.4
        assert [json.loads(p)["type"] for p, _ in factory.messages] == [
            "response.output_text.delta"]
    finally:
        await running.stop()
