"""
The daemon's life cycle as a supervisor sees it, with real processes
(``twistd -n subrouter`` and ``subrouter serve``): SIGTERM lets a stream in
flight finish and exits 0; a WebSocket still busy at the drain timeout gets
1001; SIGHUP rereads the account store and reopens the log file; a second
daemon on a busy port says so in one line and exits 1.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.error import ConnectionRefusedError
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.daemon import reactor, read_all, sleep
from tests.support.processes import BIN, Collect, free_port
from tests.support.slow_backend import SlowBackend
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, Gate, StreamReader, sse, write_oauth_account
from tests.support.websocket import connect, messages

FAR = time.time() + 30 * 86400
TWISTD = [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "subrouter"]
SERVE = [os.path.join(BIN, "subrouter"), "serve"]


@attrs.define
class Process:
    """
    A daemon process, its output, and a client for it.
    """

    transport: Any
    collect: Collect
    port: int
    client: HTTPClient
    pool: HTTPConnectionPool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return self.collect.output.decode()

    def signal(self, number: int) -> None:
        self.transport.signalProcess(number)

    async def get_json(self, path: str) -> Any:
        return json.loads(await read_all(await self.client.get(self.url + path)))

    async def wait_for_output(self, text: str, limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while text not in self.output:
            assert not self.collect.ended.called, self.output
            assert time.monotonic() < deadline, self.output
            await sleep(0.05)

    async def ended(self) -> tuple[int | None, int | None]:
        return await self.collect.ended


def _spawn(command: list[str], tmp_path: Path, port: int, *extra: str,
           upstream: FakeUpstream | None = None, ca: TestCA | None = None,
           codex_upstream: str | None = None, before: tuple[str, ...] = ()) -> Process:
    """
    Start ``command`` with a daemon's options (no usage polling, no auto
    switch, nothing outside ``tmp_path``).
    """
    options = [
        "--addr", f"127.0.0.1:{port}",
        "--accounts-dir", str(tmp_path / "store"),
        "--codex-home", str(tmp_path / "codex"),
        "--state-dir", str(tmp_path / "state"),
        "--fetch-usage", "false",
        "--cx-switch-interval", "0",
    ]
    if upstream is not None:
        options += ["--codex-upstream", upstream.codex_url, "--token-url", upstream.token_url]
    if codex_upstream is not None:
        options += ["--codex-upstream", codex_upstream]
    if ca is not None:
        options += ["--ca-bundle", ca.ca_pem_path]
    args = [command[0], *before, *command[1:], *options, *extra]
    collect = Collect()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    transport = reactor.spawnProcess(collect, args[0], args, env=env, path=str(tmp_path))
    pool = HTTPConnectionPool(reactor, persistent=False)
    return Process(transport, collect, port, HTTPClient(Agent(reactor, pool=pool)), pool)


async def _healthy(process: Process, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while True:
        try:
            if (await process.get_json("/_subrouter/health"))["ok"]:
                return
        except ConnectionRefusedError:
            pass
        assert not process.collect.ended.called, process.output
        assert time.monotonic() < deadline, process.output
        await sleep(0.1)


@pytest_twisted.async_yield_fixture
async def processes() -> AsyncIterator[list[Process]]:
    """
    Every process a test starts is stopped (SIGKILL if need be) afterwards.
    """
    started: list[Process] = []
    yield started
    for process in started:
        await process.pool.closeCachedConnections()
        if not process.collect.ended.called:
            process.signal(signal.SIGKILL)
            await process.ended()


@pytest.mark.parametrize("command", [TWISTD, SERVE], ids=["twistd", "subrouter-serve"])
@pytest_twisted.ensureDeferred
async def test_sigterm_lets_a_stream_in_flight_finish_and_exits_0(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, processes: list[Process],
    command: list[str],
) -> None:
    write_oauth_account(tmp_path / "store", "alice@example.com", exp=FAR)
    process = _spawn(command, tmp_path, free_port(), upstream=upstream, ca=ca)
    processes.append(process)
    await _healthy(process)
    gate = Gate(free=1)
    upstream.script(b"/backend-api/codex/responses", sse(["one", "two", "three"], gate=gate))
    response = await process.client.request(
        "POST", process.url + "/v1/responses", data=b'{"model":"m"}', unbuffered=True)
    reader = StreamReader()
    response.deliverBody(reader)
    await reader.wait_for(b"one")

    process.signal(signal.SIGTERM)
    await process.wait_for_output("SIGTERM: stopping")
    await process.wait_for_output("waiting up to 30.0s for 1 HTTP requests")
    # no longer accepting...
    with pytest.raises(ConnectionRefusedError):
        await process.client.get(process.url + "/_subrouter/health")
    # ...but the stream in flight goes on to its end
    gate.release(2)
    assert await reader.done is None
    assert reader.received.count(b"data: ") == 3
    assert await process.ended() == (0, None), process.output
    assert "stopped" in process.output
    assert "Traceback" not in process.output
    # state was saved after the drain
    assert (tmp_path / "state" / "state.json").exists()


@pytest_twisted.ensureDeferred
async def test_a_websocket_open_at_sigterm_gets_1001_after_the_drain_timeout(
    tmp_path: Path, ca: TestCA, processes: list[Process]
) -> None:
    backend = SlowBackend(ca)
    await backend.start()
    try:
        write_oauth_account(tmp_path / "store", "alice@example.com", exp=FAR)
        process = _spawn(SERVE, tmp_path, free_port(), "--drain-timeout", "1s", ca=ca,
                         codex_upstream=backend.codex_url)
        processes.append(process)
        await _healthy(process)
        client, factory = await connect(process, headers={"session-id": "long-turn"})
        client.sendMessage(json.dumps({"type": "response.create", "finish_after": 60}).encode())
        await messages(factory, 1)
        process.signal(signal.SIGTERM)
        sent = time.monotonic()
        code, reason = await factory.closed
        waited = time.monotonic() - sent
        assert code == 1001
        assert "shutting down" in reason
        assert 0.9 <= waited < 10
        assert await process.ended() == (0, None), process.output
        assert "closed 1 WebSockets (1001)" in process.output
    finally:
        await backend.stop()


@pytest_twisted.ensureDeferred
async def test_sighup_rereads_the_account_store_and_reopens_the_log_file(
    tmp_path: Path, processes: list[Process]
) -> None:
    store = tmp_path / "store"
    write_oauth_account(store, "alice@example.com", exp=FAR)
    log = tmp_path / "subrouter.log"
    process = _spawn(SERVE, tmp_path, free_port(), "--account-rescan-interval", "0",
                     before=("--log-file", str(log)))
    processes.append(process)
    await _healthy(process)
    assert len((await process.get_json("/_subrouter/accounts"))["accounts"]) == 1
    assert stat_mode(log) == 0o600

    write_oauth_account(store, "bob@example.com", exp=FAR)
    os.rename(log, tmp_path / "subrouter.log.1")  # what logrotate does
    await sleep(0.5)
    # with rescans off, only SIGHUP brings the new account in
    assert len((await process.get_json("/_subrouter/accounts"))["accounts"]) == 1
    process.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while len((await process.get_json("/_subrouter/accounts"))["accounts"]) < 2:
        assert time.monotonic() < deadline, process.output
        await sleep(0.05)
    while not log.exists() or "SIGHUP" not in log.read_text():
        assert time.monotonic() < deadline
        await sleep(0.05)
    assert "SIGHUP: reread the account store (2 accounts); reopened 1 log files" in (
        log.read_text())
    assert "listening on" in (tmp_path / "subrouter.log.1").read_text()
    assert "listening on" not in log.read_text()
    process.signal(signal.SIGTERM)
    assert await process.ended() == (0, None)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest_twisted.ensureDeferred
async def test_a_second_daemon_on_a_busy_port_says_so_in_one_line_and_exits_1(
    tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    first = _spawn(SERVE, tmp_path, port)
    processes.append(first)
    await _healthy(first)
    version = (await first.get_json("/_subrouter/health"))["version"]
    for command in (SERVE, TWISTD):
        second = _spawn(command, tmp_path, port)
        processes.append(second)
        assert await second.ended() == (1, None), second.output
        lines = [line for line in second.output.splitlines() if "cannot listen" in line]
        assert len(lines) == 1, second.output
        assert lines[0].endswith(
            f"cannot listen on 127.0.0.1:{port}: a Subrouter ({version}) already answers "
            "there; stop it first, or pick another --addr")
        assert "Traceback" not in second.output
        assert "listening on" not in second.output
    # the first one never noticed
    assert (await first.get_json("/_subrouter/health"))["ok"] is True
    first.signal(signal.SIGTERM)
    assert await first.ended() == (0, None)
