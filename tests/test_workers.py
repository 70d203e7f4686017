"""
``subrouter serve --workers 2`` as users run it: one port, two worker
processes sharing Redis, supervised by the parent; and the usage error
without Redis.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography.fernet import Fernet
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from tests.support.daemon import reactor, read_all, sleep
from tests.support.processes import BIN, Collect, free_port
from tests.support.redis import RedisServer
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, StreamReader, sse, write_oauth_account


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_workers_without_redis_are_a_usage_error(tmp_path: Path) -> None:
    import subprocess

    done = subprocess.run(
        [os.path.join(BIN, "subrouter"), "serve", "--workers", "2", "--accounts-dir",
         str(tmp_path)], capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "--workers 2" in done.stderr and "--state redis://" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("drain", [
    False,
    # each worker drains as one daemon does
    True,
], ids=["serve", "drain"])
@pytest_twisted.ensureDeferred
async def test_two_workers_serve_one_port_share_state_and_drain_on_sigterm(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, redis: RedisServer, drain: bool
) -> None:
    fake = upstream
    accounts = tmp_path / "store"
    for email, ws in (("a@example.com", "ws-a"), ("b@example.com", "ws-b")):
        write_oauth_account(accounts, email, exp=time.time() + 86400, account_id=ws)
    key = tmp_path / "state.key"
    key.write_bytes(Fernet.generate_key())
    key.chmod(0o600)
    port = free_port()
    args = [
        os.path.join(BIN, "subrouter"), "serve",
        "--addr", f"127.0.0.1:{port}",
        "--workers", "2",
        "--state", redis.url,
        "--state-key-file", str(key),
        "--accounts-dir", str(accounts),
        "--codex-upstream", fake.codex_url,
        "--openai-upstream", fake.openai_url,
        "--token-url", fake.token_url,
        "--ca-bundle", ca.ca_pem_path,
        "--codex-home", str(tmp_path / "codex"),
        "--usage-url", fake.base_url + "/backend-api/wham/usage",
        "--fetch-usage", "false",
        "--state-dir", str(tmp_path / "state"),
        "--cx-switch-interval", "0",
    ]
    proc = Collect()
    transport = reactor.spawnProcess(proc, args[0], args, env=dict(os.environ),
                                     path=str(tmp_path))
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool))
    base = f"http://127.0.0.1:{port}"

    async def health() -> dict[str, Any] | None:
        try:
            answer = await client.get(base + "/_subrouter/health")
            return dict(json.loads(await read_all(answer)))
        except Exception as e:
            if "refused" not in repr(e).lower() and not isinstance(e, ConnectionError):
                raise
            return None

    try:
        # both workers answer, each its own pid, and each lists both
        pids: set[int] = set()
        listed: list[Any] = []
        deadline = time.monotonic() + 60
        while len(pids) < 2 or len(listed) < 2:
            assert not proc.ended.called, proc.output.decode()
            assert time.monotonic() < deadline, (pids, listed, proc.output.decode())
            answer = await health()
            if answer is None:
                await sleep(0.1)
                continue
            pids.add(answer["pid"])
            listed = answer.get("workers", [])
            await sleep(0.02)
        assert sorted(w["index"] for w in listed) == [0, 1]
        assert {w["pid"] for w in listed} == pids

        # one conversation over new connections lands on both workers and stays
        # on one account: the workers share their sticky sessions
        fake.script(b"/backend-api/codex/responses", _which_workspace)
        workspaces = set()
        served: dict[int, Any] = {}
        # the workers share one accept queue: which takes a connection is the
        # kernel's choice, so send until each has served (a loaded machine can
        # leave one idle for a while)
        for sent in range(1, 121):
            response = await client.request(
                "POST", base + "/v1/responses", data=b'{"model":"m"}',
                headers=Headers({b"session-id": [b"one-conversation"]}),
            )
            workspaces.add(await read_all(response))
            if sent >= 12 and sent % 6 == 0:
                # each worker keeps its upstream connection pooled after serving
                served = {pid: _connections_to(pid, fake.port) for pid in pids}
                if all(served.values()):
                    break
        assert len(workspaces) == 1, workspaces
        assert all(served.values()), served

        if drain:
            # a slow stream on each worker, then SIGTERM to the parent: both
            # streams finish whole, then everything exits
            fake.script(b"/backend-api/codex/responses",
                        sse([f"event-{i}" for i in range(10)], gaps=0.2))
            readers = []
            for n in range(8):
                response = await client.request(
                    "POST", base + "/v1/responses", data=b'{"model":"m"}', unbuffered=True,
                    headers=Headers({b"session-id": [f"conv-{n}".encode()]}),
                )
                reader = StreamReader()
                response.deliverBody(reader)
                readers.append(reader)
            # each worker holds its own upstream connections: both are streaming
            streaming = {pid: _connections_to(pid, fake.port) for pid in pids}
            assert all(streaming.values()), streaming
            assert sum(streaming.values()) >= 8, streaming
            await sleep(0.3)
            transport.signalProcess(signal.SIGTERM)
            for reader in readers:
                assert await reader.done is None
                assert reader.received.count(b"data: ") == 10
    finally:
        await pool.closeCachedConnections()
        if not proc.ended.called:
            transport.signalProcess(signal.SIGTERM)
    code, _ = await proc.ended
    output = proc.output.decode()
    assert code == 0, output
    assert "worker 0 (pid" in output and "worker 1 (pid" in output
    assert "stopped" in output


async def _which_workspace(exchange: Any) -> None:
    exchange.respond(200, exchange.seen.header(b"chatgpt-account-id") or b"")


def _connections_to(pid: int, port: int) -> int:
    """
    How many established TCP connections process ``pid`` has to 127.0.0.1:``port``
    (from /proc: its socket inodes, matched in /proc/net/tcp).
    """
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


@pytest_twisted.ensureDeferred
async def test_the_supervisor_restarts_a_dead_worker_and_stops_all_on_stop(
    tmp_path: Path,
) -> None:
    from subrouter.jobs.workers import Supervisor, open_listener

    # a stand-in worker: reports its listening fd's port, then waits for SIGTERM
    script = (
        "import os, signal, socket, sys, time\n"
        "s = socket.socket(fileno=int(os.environ['SUBROUTER_LISTEN_FD']))\n"
        "print('worker', os.environ['SUBROUTER_WORKER'], os.getpid(), s.getsockname()[1],"
        " flush=True)\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        "while True: time.sleep(0.1)\n"
    )
    supervisor = Supervisor(
        argv=[sys.executable, "-c", script], count=2,
        listener=lambda: open_listener("127.0.0.1", 0), reactor=reactor,
    )
    supervisor.startService()
    try:
        deadline = time.monotonic() + 20
        while len(supervisor.workers) < 2 or not all(w.pid for w in supervisor.workers.values()):
            assert time.monotonic() < deadline
            await sleep(0.05)
        first = dict((i, w.pid) for i, w in supervisor.workers.items())
        os.kill(first[0], signal.SIGKILL)
        while supervisor.restarts < 1 or 0 not in supervisor.workers:
            assert time.monotonic() < deadline, supervisor.workers
            await sleep(0.05)
        assert supervisor.workers[0].pid != first[0]
        assert supervisor.workers[1].pid == first[1]  # the other one was left alone
    finally:
        await supervisor.stopService()
    assert supervisor.workers == {}
    for pid in first.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
