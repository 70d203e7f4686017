#!/usr/bin/env python3
"""
Many concurrent SSE streams at once: a direct connection, nginx, and Subrouter,
in one run on loopback.

What is measured
----------------
A fake upstream (this file again, with ``--upstream-server``: asyncio, HTTP/1.1
keep-alive) answers ``POST .../responses?n=N&gap=MS`` with N SSE delta events
``gap`` ms apart, chunked, each stamped with the upstream's
``time.monotonic()``, then ``data: [DONE]``. The benchmark process is the
client: it opens ``--streams`` connections (1,000 by default) and starts one
stream on each, the starts spread evenly over ``--ramp`` seconds (agents do not
start in lockstep; 0 starts them all at once), through each path in turn:

- ``direct``: straight to the fake upstream;
- ``nginx``: Debian's nginx (``worker_processes 1``, ``proxy_buffering off``,
  upstream keep-alive), from a config generated in a temporary folder;
- ``subrouter``: ``twistd -n subrouter`` with one ChatGPT login, transcripts
  and usage polling off, each stream its own conversation (``session-id``);
- with ``--floor``, the reference relay (``floor_relay.py``: request heads
  rewritten, bytes passed on, nothing else) on plain Twisted (``floor``) and
  on Subrouter's loop and writes (``floor+loop``).

For each path it reports the per-event latency (client receipt minus the
upstream's stamp; CLOCK_MONOTONIC is system-wide on Linux) at p50/p99/max, the
time to response headers, errors (connections refused or cut, statuses other
than 200, streams with events missing or out of order), the proxy's CPU
seconds (user+system, from /proc, every process of it) per relayed event, with
the system part on its own (the kernel's share), and its peak RSS (VmHWM).
With ``--rounds 2`` or more the three paths run again in alternating order
and the figures are pooled, so machine noise falls on all.
The client and the fake upstream run without cyclic garbage collection while
a path is measured: its pauses (tens of ms with a thousand connections' worth
of objects) landed on whichever path was running and set its p99.

Running it
----------
From the repository root, in the project's virtualenv::

    python bench/stream_scale_bench.py                    # 1,000 streams x 100 events, ~1 min
    python bench/stream_scale_bench.py --streams 200 --events 40   # a quick run
    python bench/stream_scale_bench.py --json out.json --only subrouter
    python bench/stream_scale_bench.py --floor     # also the reference relay (floor_relay.py)

Needs nginx on PATH for the nginx path (skipped with a note otherwise). The
aims from issue 13 are printed PASS/MISS for information; the script exits 0
unless it could not run. Nothing leaves 127.0.0.1. Figures are noisy on a
shared machine: compare paths within one run, never across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (
    CODEX_PREFIX,
    HOST,
    die_with_parent,
    free_port,
    percentile,
    private_environment,
    process_cpu_seconds,
    process_cpu_split,
    twistd_command,
    write_account,
)

DIRECT, NGINX, SUBROUTER = "direct", "nginx", "subrouter"
#: the floor relay on plain Twisted, and on Subrouter's loop and writes
FLOOR, FLOOR_LOOP = "floor", "floor+loop"
FLOOR_RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor_relay.py")
DEFAULT_PATHS = (DIRECT, NGINX, SUBROUTER)
PATHS = (*DEFAULT_PATHS, FLOOR, FLOOR_LOOP)
STARTUP_TIMEOUT = 30.0
#: a stream that has not ended this long after its last expected event is an error
STREAM_GRACE = 30.0
DELTA_PAD = "x" * 80
#: the aims from issue 13, for information
AIM_CPU_VS_NGINX = 1.5
AIM_P99_VS_DIRECT = 3.0
AIM_RSS_MB = 300.0


# -- the fake upstream (its own process) -------------------------------------------------


class _UpstreamConnection(asyncio.Protocol):
    def __init__(self, ticker: _Ticker) -> None:
        self.ticker = ticker
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.streaming:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            lines = head.split("\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            target = lines[0].split(" ")[1]
            self._answer(target)

    def _answer(self, target: str) -> None:
        assert self.transport is not None
        path, _, query = target.partition("?")
        if not path.endswith("/responses"):
            body = b'{"ok":true}'
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        params = dict(p.partition("=")[::2] for p in query.split("&") if p)
        count = int(params.get("n", "100"))
        gap = float(params.get("gap", "50")) / 1000
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.streaming = True
        self.ticker.add(_Stream(self, count, gap), time.monotonic())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _Stream:
    __slots__ = ("connection", "count", "gap", "sent")

    def __init__(self, connection: _UpstreamConnection, count: int, gap: float) -> None:
        self.connection = connection
        self.count = count
        self.gap = gap
        self.sent = 0

    def step(self) -> bool:
        """
        Send the next event; False once the stream is over.
        """
        transport = self.connection.transport
        if transport is None:
            return False
        if self.sent < self.count:
            event = (b'data: {"type":"response.output_text.delta","i":%d,"t":%.6f,'
                     b'"delta":"%s"}\n\n' % (self.sent, time.monotonic(), DELTA_PAD.encode()))
            transport.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.sent += 1
            return True
        done = b"data: [DONE]\n\n"
        transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        self.connection.streaming = False
        if self.connection.buffer:
            self.connection.data_received(b"")
        return False


class _Ticker:
    """
    One timer for every stream: a wheel of 1 ms slots, so 20,000 events a
    second cost 1,000 wake-ups, not 20,000.
    """

    def __init__(self) -> None:
        self.slots: dict[int, list[_Stream]] = {}
        self.next_slot = int(time.monotonic() * 1000)

    def add(self, stream: _Stream, now: float) -> None:
        if stream.step():
            self.slots.setdefault(int((now + stream.gap) * 1000), []).append(stream)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.001)
            now = time.monotonic()
            current = int(now * 1000)
            while self.next_slot <= current:
                due = self.slots.pop(self.next_slot, None)
                self.next_slot += 1
                if not due:
                    continue
                for stream in due:
                    if stream.step():
                        slot = max(int((now + stream.gap) * 1000), current + 1)
                        self.slots.setdefault(slot, []).append(stream)


async def _serve_upstream() -> None:
    # no cyclic garbage collection pauses in the fake upstream either: they
    # delayed whichever path's events were being sent (it lives one run)
    gc.freeze()
    gc.disable()
    ticker = _Ticker()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _UpstreamConnection(ticker), HOST, 0,
                                      backlog=4096)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    ticking = asyncio.ensure_future(ticker.run())
    # stop when the benchmark closes our stdin
    await loop.run_in_executor(None, sys.stdin.read)
    ticking.cancel()
    server.close()


def upstream_main() -> int:
    _raise_fd_limit()
    asyncio.run(_serve_upstream())
    return 0


# -- the client ------------------------------------------------------------------------------


@dataclass
class PathResult:
    path: str
    streams: int = 0
    events: int = 0
    expected_events: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: array[float] = field(default_factory=lambda: array("d"))
    ttfb: array[float] = field(default_factory=lambda: array("d"))
    cpu_seconds: float | None = None
    #: of cpu_seconds, the time in the kernel (system calls, loopback TCP)
    kernel_seconds: float | None = None
    upstream_cpu_seconds: float | None = None
    peak_rss_mb: float | None = None
    wall: float = 0.0


class _ClientStream(asyncio.Protocol):
    """
    One connection, one streamed answer: parses the chunked framing and the
    SSE events incrementally, recording each event's latency.
    """

    def __init__(self, result: PathResult, count: int, done: asyncio.Future[None]) -> None:
        self.result = result
        self.count = count
        self.done = done
        self.raw = b""
        self.sse = b""
        self.head_done = False
        self.chunk_left = -1  # -1: expecting a chunk-size line
        self.next_index = 0
        self.sent_at = 0.0
        self.finished = False
        self.saw_done = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.sent_at = time.monotonic()
        self.transport.write(request)

    def _fail(self, why: str) -> None:
        if not self.finished:
            self.finished = True
            self.result.errors.append(why)
            if not self.done.done():
                self.done.set_result(None)
            if self.transport is not None:
                self.transport.abort()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        raw = self.raw + data
        if not self.head_done:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                self.raw = raw
                return
            status = raw[9:12]
            if status != b"200":
                self._fail(f"status {status.decode('latin-1')}")
                return
            self.head_done = True
            self.result.ttfb.append(now - self.sent_at)
            raw = raw[end + 4:]
        position = 0
        payload: list[bytes] = []
        while True:
            if self.chunk_left < 0:
                line_end = raw.find(b"\r\n", position)
                if line_end < 0:
                    break
                size = int(raw[position:line_end].split(b";")[0], 16)
                position = line_end + 2
                if size == 0:
                    self._ended(b"".join(payload))
                    return
                self.chunk_left = size
            take = min(self.chunk_left, len(raw) - position)
            payload.append(raw[position:position + take])
            position += take
            self.chunk_left -= take
            if self.chunk_left:
                break
            if len(raw) - position < 2:
                self.chunk_left = 0  # the chunk's CRLF has not arrived yet
                break
            position += 2
            self.chunk_left = -1
        if self.chunk_left == 0 and len(raw) - position >= 2:
            position += 2
            self.chunk_left = -1
        self.raw = raw[position:]
        self._events(b"".join(payload), now)

    def _events(self, data: bytes, now: float) -> None:
        if not data:
            return
        sse = self.sse + data
        latencies = self.result.latencies
        start = 0
        while True:
            end = sse.find(b"\n\n", start)
            if end < 0:
                break
            at = sse.find(b'"t":', start, end)
            if at >= 0:
                stamp = float(sse[at + 4:sse.find(b",", at, end)])
                latencies.append(now - stamp)
                index_at = sse.find(b'"i":', start, end)
                index = int(sse[index_at + 4:sse.find(b",", index_at, end)])
                if index != self.next_index:
                    self._fail(f"event {index} arrived when {self.next_index} was due")
                    return
                self.next_index += 1
                self.result.events += 1
            elif sse.find(b"[DONE]", start, end) >= 0:
                self.saw_done = True
            start = end + 2
        self.sse = sse[start:]

    def _ended(self, tail: bytes) -> None:
        self._events(tail, time.monotonic())
        if self.finished:
            return
        self.finished = True
        if self.next_index != self.count or not self.saw_done:
            self.result.errors.append(f"stream ended after {self.next_index} of {self.count}"
                                      " events" + ("" if self.saw_done else ", no [DONE]"))
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.finished:
            self._fail(f"connection lost after {self.next_index} events"
                       + (f" ({type(exc).__name__})" if exc else ""))


def _request(path: str, port: int, stream: int, count: int, gap_ms: int) -> bytes:
    body = json.dumps({"model": "gpt-5-codex", "stream": True, "input": [
        {"role": "user", "content": f"stream {stream}"}]}).encode()
    return (
        f"POST {path}?n={count}&gap={gap_ms} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: text/event-stream\r\n"
        "Authorization: Bearer bench-client\r\n"
        "originator: codex_cli_rs\r\n"
        f"session-id: bench-{stream}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def run_path(name: str, port: int, url_path: str, args: argparse.Namespace,
                   pids: Sequence[int], upstream_pid: int) -> PathResult:
    loop = asyncio.get_running_loop()
    result = PathResult(name, streams=args.streams, expected_events=args.streams * args.events)
    connections: list[tuple[_ClientStream, asyncio.Future[None]]] = []
    for _ in range(args.streams):
        done: asyncio.Future[None] = loop.create_future()
        try:
            _, protocol = await loop.create_connection(
                functools.partial(_ClientStream, result, args.events, done), HOST, port)
        except OSError as e:
            result.errors.append(f"connect: {e.strerror or e}")
            continue
        connections.append((protocol, done))
    await asyncio.sleep(0.2)  # let the accepts settle before the clock starts
    # the client's own garbage collection must not pause its reading in the
    # middle of a path's round (it delayed whichever path was running)
    gc.collect()
    gc.disable()
    cpu_before = [process_cpu_split(pid) for pid in pids]
    upstream_before = process_cpu_seconds(upstream_pid)
    started = time.monotonic()
    step = args.ramp / max(1, len(connections))
    for number, (protocol, _) in enumerate(connections):
        due = started + number * step
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        protocol.send(_request(url_path, port, number, args.events, args.gap))
    limit = args.ramp + args.events * args.gap / 1000 + STREAM_GRACE
    try:
        await asyncio.wait_for(asyncio.gather(*(d for _, d in connections)), limit)
    except TimeoutError:
        stuck = sum(1 for _, d in connections if not d.done())
        result.errors.append(f"{stuck} streams did not end within {limit:.0f} s")
    result.wall = time.monotonic() - started
    gc.enable()
    cpu_after = [process_cpu_split(pid) for pid in pids]
    upstream_after = process_cpu_seconds(upstream_pid)
    if pids and None not in cpu_before and None not in cpu_after:
        spent = [(a[0] - b[0], a[1] - b[1])
                 for a, b in zip(cpu_after, cpu_before, strict=True) if a and b]
        result.cpu_seconds = sum(user + kernel for user, kernel in spent)
        result.kernel_seconds = sum(kernel for _, kernel in spent)
    if upstream_before is not None and upstream_after is not None:
        result.upstream_cpu_seconds = upstream_after - upstream_before
    rss = [peak_rss_mb(pid) for pid in pids]
    if pids and None not in rss:
        result.peak_rss_mb = max(rss)  # type: ignore[type-var]
    for protocol, _ in connections:
        if protocol.transport is not None:
            protocol.transport.close()
    await asyncio.sleep(0.3)
    return result


def peak_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- the processes -----------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Processes:
    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.running: list[subprocess.Popen[bytes]] = []
        self.files: list[IO[bytes]] = []
        self.upstream: subprocess.Popen[bytes] | None = None

    def _spawn(self, command: list[str], log: str, **kw: Any) -> subprocess.Popen[bytes]:
        out = open(os.path.join(self.folder, log), "wb")
        self.files.append(out)
        kw.setdefault("stdout", out)
        process = subprocess.Popen(command, stderr=out, cwd=self.folder, start_new_session=True,
                                   preexec_fn=die_with_parent, **kw)
        self.running.append(process)
        return process

    def start_upstream(self) -> int:
        self.upstream = self._spawn([sys.executable, os.path.abspath(__file__),
                                     "--upstream-server"], "upstream.log",
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.upstream.stdout is not None
        line = self.upstream.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit(f"the fake upstream did not start: {self.tail('upstream.log')}")
        return int(line)

    def start_floor(self, upstream_port: int, our_loop: bool) -> tuple[int, int]:
        loop = ["--subrouter-loop"] if our_loop else []
        process = self._spawn([sys.executable, FLOOR_RELAY, *loop, str(upstream_port),
                               "bench-client", "-"], "floor.log", stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.strip().isdigit():
            raise SystemExit(f"the floor relay did not start: {self.tail('floor.log')}")
        return int(line), process.pid

    def start_nginx(self, upstream_port: int) -> tuple[int, list[int]] | None:
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                          else None)
        if nginx is None:
            return None
        port = free_port()
        root = os.path.join(self.folder, "nginx")
        os.makedirs(os.path.join(root, "tmp"), exist_ok=True)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        config = f"""{user}worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    upstream fake {{ server {HOST}:{upstream_port}; keepalive 2048; }}
    server {{
        listen {HOST}:{port} backlog=4096;
        location / {{
            proxy_pass http://fake;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""
        path = os.path.join(root, "nginx.conf")
        with open(path, "w") as f:
            f.write(config)
        master = self._spawn([nginx, "-p", root, "-c", path, "-e", f"{root}/error.log"],
                             "nginx.log")
        _wait_port(port, master, self.tail, "nginx.log")
        children = _children(master.pid)
        return port, [master.pid, *children]

    def start_subrouter(self, upstream_port: int, extra: Sequence[str]) -> tuple[int, int]:
        port = free_port()
        store = os.path.join(self.folder, "store")
        write_account(store)
        upstream = f"http://{HOST}:{upstream_port}"
        command = [
            *twistd_command(), "--logfile", os.path.join(self.folder, "subrouter.log"),
            "subrouter", "--addr", f"{HOST}:{port}", "--accounts-dir", store,
            "--codex-upstream", upstream + CODEX_PREFIX, "--openai-upstream", upstream,
            "--codex-home", os.path.join(self.folder, "codex-home"),
            "--token-url", upstream + "/oauth/token",
            "--usage-url", upstream + "/backend-api/wham/usage", "--fetch-usage", "false",
            "--state-dir", os.path.join(self.folder, "state"), "--cx-switch-interval", "0",
            *extra,
        ]
        process = self._spawn(command, "subrouter.out", stdin=subprocess.DEVNULL,
                              env=private_environment(self.folder))
        _wait_port(port, process, self.tail, "subrouter.log")
        return port, process.pid

    def tail(self, name: str, lines: int = 15) -> str:
        try:
            with open(os.path.join(self.folder, name), errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.upstream is not None and self.upstream.stdin is not None:
            self.upstream.stdin.close()
        for process in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        for f in self.files:
            f.close()


def _children(pid: int) -> list[int]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                found = [int(p) for p in f.read().split()]
        except OSError:
            found = []
        if found:
            return found
        time.sleep(0.05)
    return []


def _wait_port(port: int, process: subprocess.Popen[bytes], tail: Any, log: str) -> None:
    import socket

    args = process.args
    name = os.fsdecode(args[0] if isinstance(args, list | tuple) else args)  # type: ignore[arg-type]
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited while starting:\n{tail(log)}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"{name} did not listen within {STARTUP_TIMEOUT:g} s")


# -- the report --------------------------------------------------------------------------------


def _pooled(results: list[PathResult]) -> dict[str, Any]:
    latencies = array("d")
    ttfb = array("d")
    for r in results:
        latencies.extend(r.latencies)
        ttfb.extend(r.ttfb)
    events = sum(r.events for r in results)
    cpu = [r.cpu_seconds for r in results if r.cpu_seconds is not None]
    cpu_events = sum(r.events for r in results if r.cpu_seconds is not None)
    rss = [r.peak_rss_mb for r in results if r.peak_rss_mb is not None]
    errors = [e for r in results for e in r.errors]
    return {
        "streams": sum(r.streams for r in results),
        "events": events,
        "expected_events": sum(r.expected_events for r in results),
        "event_ms": {q: percentile(latencies, p) * 1000
                     for q, p in (("p50", 50), ("p99", 99), ("max", 100))},
        "ttfb_ms": {q: percentile(ttfb, p) * 1000 for q, p in (("p50", 50), ("p99", 99))},
        "cpu_us_per_event": (sum(cpu) / cpu_events * 1e6) if cpu and cpu_events else None,
        "kernel_us_per_event": (
            sum(r.kernel_seconds or 0.0 for r in results) / cpu_events * 1e6
            if cpu and cpu_events else None),
        "upstream_cpu_us_per_event": (
            sum(r.upstream_cpu_seconds or 0 for r in results) / events * 1e6 if events else None),
        "peak_rss_mb": max(rss) if rss else None,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
    }


def render(report: dict[str, Any]) -> str:
    def number(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"{report['streams']} concurrent SSE streams x {report['events']} events "
        f"{report['gap_ms']} ms apart (starts spread over {report['ramp']} s), "
        f"{report['rounds']} round(s)",
        "",
        "| path | events | event p50 ms | event p99 ms | event max ms | TTFB p50 ms | "
        "TTFB p99 ms | proxy CPU us/event | of which kernel | proxy peak RSS MB | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["paths"].items():
        lines.append(
            f"| {name} | {row['events']}/{row['expected_events']} | "
            f"{number(row['event_ms']['p50'], 2)} | {number(row['event_ms']['p99'], 2)} | "
            f"{number(row['event_ms']['max'], 1)} | {number(row['ttfb_ms']['p50'], 2)} | "
            f"{number(row['ttfb_ms']['p99'], 2)} | {number(row['cpu_us_per_event'])} | "
            f"{number(row.get('kernel_us_per_event'))} | "
            f"{number(row['peak_rss_mb'])} | {row['errors']} |")
    lines.append("")
    for name, row in report["paths"].items():
        for example in row["error_examples"]:
            lines.append(f"- {name} error: {example}")
    for verdict in report["aims"]:
        lines.append(f"- {verdict}")
    return "\n".join(lines) + "\n"


def aims(paths: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    sub = paths.get(SUBROUTER)
    if sub is None:
        return out
    ngx, direct = paths.get(NGINX), paths.get(DIRECT)
    if ngx and ngx["cpu_us_per_event"] and sub["cpu_us_per_event"]:
        ratio = sub["cpu_us_per_event"] / ngx["cpu_us_per_event"]
        out.append(f"{'PASS' if ratio <= AIM_CPU_VS_NGINX else 'MISS'}: Subrouter CPU per "
                   f"event is {ratio:.2f}x nginx's (aim <= {AIM_CPU_VS_NGINX}x)")
    if direct:
        ratio = sub["event_ms"]["p99"] / max(direct["event_ms"]["p99"], 1e-9)
        out.append(f"{'PASS' if ratio <= AIM_P99_VS_DIRECT else 'MISS'}: Subrouter event p99 "
                   f"is {ratio:.2f}x direct's (aim <= {AIM_P99_VS_DIRECT}x)")
    if sub["peak_rss_mb"] is not None:
        out.append(f"{'PASS' if sub['peak_rss_mb'] < AIM_RSS_MB else 'MISS'}: Subrouter peak "
                   f"RSS {sub['peak_rss_mb']:.0f} MB (aim < {AIM_RSS_MB:.0f} MB)")
    out.append(f"{'PASS' if sub['errors'] == 0 else 'MISS'}: {sub['errors']} errors through "
               "Subrouter (aim 0)")
    for name, row in paths.items():
        kernel, total = row.get("kernel_us_per_event"), row["cpu_us_per_event"]
        if kernel is not None and total:
            out.append(f"for reference: {name}'s CPU per event: {total - kernel:.1f} us in user "
                       f"space, {kernel:.1f} us in the kernel")
    for name in (FLOOR, FLOOR_LOOP):
        floor = paths.get(name)
        if floor and ngx and floor["cpu_us_per_event"] and ngx["cpu_us_per_event"]:
            out.append(f"for reference: {name}'s CPU per event is "
                       f"{floor['cpu_us_per_event'] / ngx['cpu_us_per_event']:.2f}x nginx's")
    return out


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--gap", type=int, default=50, help="ms between events")
    parser.add_argument("--ramp", type=float, default=1.0,
                        help="seconds over which the stream starts are spread")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", action="append", choices=PATHS,
                        help="run only this path (repeatable)")
    parser.add_argument("--floor", action="store_true",
                        help="also run the floor: floor_relay.py, the least a relay on Twisted "
                        "does (rewrites request heads, passes bytes on), on plain Twisted and "
                        "on Subrouter's loop, for reference")
    parser.add_argument("--subrouter-arg", action="append", default=[],
                        help="one more option for twistd subrouter (repeatable)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


async def _measure(args: argparse.Namespace, procs: Processes) -> dict[str, list[PathResult]]:
    upstream_port = procs.start_upstream()
    assert procs.upstream is not None
    upstream_pid = procs.upstream.pid
    wanted = args.only or [*DEFAULT_PATHS, *((FLOOR, FLOOR_LOOP) if args.floor else ())]
    targets: dict[str, tuple[int, str, list[int]]] = {}
    if DIRECT in wanted:
        targets[DIRECT] = (upstream_port, CODEX_PREFIX + "/responses", [])
    if NGINX in wanted:
        started = procs.start_nginx(upstream_port)
        if started is None:
            print("nginx is not installed: its path is skipped", file=sys.stderr)
        else:
            targets[NGINX] = (started[0], CODEX_PREFIX + "/responses", started[1])
    if SUBROUTER in wanted:
        port, pid = procs.start_subrouter(upstream_port, args.subrouter_arg)
        targets[SUBROUTER] = (port, "/v1/responses", [pid])
    for floor in (FLOOR, FLOOR_LOOP):
        if floor in wanted:
            port, pid = procs.start_floor(upstream_port, our_loop=floor == FLOOR_LOOP)
            targets[floor] = (port, "/v1/responses", [pid])
    results: dict[str, list[PathResult]] = {name: [] for name in targets}
    order = list(targets)
    for round_number in range(args.rounds):
        for name in order if round_number % 2 == 0 else reversed(order):
            port, url_path, pids = targets[name]
            print(f"round {round_number + 1}: {name} ...", file=sys.stderr)
            results[name].append(await run_path(name, port, url_path, args, pids,
                                                upstream_pid))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.upstream_server:
        return upstream_main()
    _raise_fd_limit()
    folder = tempfile.mkdtemp(prefix="subrouter-scale-")
    procs = Processes(folder)
    try:
        results = asyncio.run(_measure(args, procs))
    finally:
        procs.stop()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"kept {folder}", file=sys.stderr)
    paths = {name: _pooled(rs) for name, rs in results.items()}
    report = {"streams": args.streams, "events": args.events, "gap_ms": args.gap,
              "ramp": args.ramp, "rounds": args.rounds, "paths": paths, "aims": aims(paths)}
    sys.stdout.write(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
