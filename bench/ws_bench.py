#!/usr/bin/env python3
"""
A loopback benchmark of Subrouter's WebSocket relay, against a direct
WebSocket to the same upstream, in one run.

What is measured
----------------
The run starts two subprocesses on 127.0.0.1: a fake Responses upstream
(``wsload.py``, which also holds the wire and the client: a lean WebSocket
server written on plain asyncio, speaking ``ws://`` on
``/backend-api/codex/responses``), and Subrouter itself (``twistd -n
subrouter``, started by ``harness.py`` as for every benchmark: every URL on
loopback, every folder temporary, one ChatGPT login whose token does not
expire during the run, so no refresh happens). The benchmark process is the
client: a minimal WebSocket client on asyncio (masked frames, as RFC 6455
wants of clients), opening either
``ws://127.0.0.1:U/backend-api/codex/responses`` on the upstream ("direct") or
``ws://127.0.0.1:P/v1/responses`` on Subrouter ("proxied"), which relays it to
that same upstream path with the login's credentials.

For every ``{"type":"response.create","seq":N,"t":T}`` text message the
upstream answers at once with ``{"type":"response.completed","seq":N,"t":T}``;
``T`` is the client's ``time.monotonic()`` just before sending. The scenarios:

- handshake: the time to open a WebSocket, from starting the TCP connect to
  having the whole ``101`` response. Through Subrouter it includes the relay's
  own connect and handshake to the upstream, which it completes before it
  accepts the client. Every handshake is a new connection with a new
  ``session_id`` (a new conversation), closed cleanly after it is timed;
- round trip over 1 and over 8 concurrent connections: each connection sends
  its next message the moment the reply to the previous one arrives (closed
  loop), and a sample is reply arrival minus ``T``. With 8 connections the
  machine's cores are busy, so this shows how the relay's cost per message
  turns into queueing;
- round trip over 1 connection with a 64 KB request, as Codex's
  ``response.create`` messages carry the conversation;
- one-way burst, over 1 and over 8 connections at once: the client sends one
  trigger per connection, the upstream answers with N small
  ``response.output_text.delta`` messages as fast as its socket takes them
  (with flow control), then a ``response.completed``; the rate is all the
  messages over the time from sending the first trigger to the arrival of the
  last message.

Each scenario runs in rounds. Direct and proxied rounds alternate, swapping
which goes first each round, so machine noise falls on both alike; both paths
are warmed up first. "added" is the proxied percentile minus the direct one.
Every reply is checked (type, ``seq``, ``T`` echoed exactly; burst messages
counted and in order), and so is each handshake (``Sec-WebSocket-Accept``,
and the path, bearer token, account and ``session_id`` the upstream saw,
which it echoes in ``X-Bench-*`` headers of its ``101``); anything wrong,
missing or late is counted and printed, as are the upstream's own counters,
Subrouter's warnings (with the scenario they came in) and its CPU time per
handshake, round trip and burst message.

Running it
----------
From the repository root, in the project's virtualenv::

    python bench/ws_bench.py                  # the full run, about a minute on 2 cores
    python bench/ws_bench.py --quick          # a smoke run, 10 to 15 s
    python bench/ws_bench.py --json out.json  # also write the numbers as JSON
    python bench/ws_bench.py --log sr.log     # keep Subrouter's log

``SUBROUTER_BENCH_PROFILE=FILE`` runs Subrouter under cProfile (see
``harness.twistd_command``).

It prints Markdown tables on stdout (progress goes to stderr) and exits 0; 1
when it could not run, 2 when anything listed under PROBLEMS went wrong (or
Subrouter exited), 130 on Ctrl-C. Subprocesses and temporary folders are
removed however the run ends, Ctrl-C and SIGTERM included. No traffic leaves
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, cast

import wsload
from harness import (
    BAD_LOG_LEVEL,
    CHATGPT_ACCOUNT_ID,
    HOST,
    SETTLE,
    BenchError,
    Processes,
    comparison_row,
    comparison_table,
    describe_error,
    exit_on_sigterm,
    interleaved,
    log_text,
    machine_info,
    machine_line,
    percentile,
    private_folder,
    problem_lines,
    process_cpu_seconds,
    write_account,
    write_json,
)
from wsload import (
    MESSAGE_BYTES,
    TOKEN_ECHO,
    UPSTREAM_PATH,
    Burst,
    HandshakeFailed,
    Job,
    PingPong,
    WsClient,
)

DIRECT = "direct"
PROXIED = "proxied"
MODES = (DIRECT, PROXIED)

PATHS = {DIRECT: UPSTREAM_PATH, PROXIED: "/v1/responses"}

#: the padded request of the "64 KB request" scenario
BIG_REQUEST = 64 * 1024
#: a round of any scenario gives up after this long
ROUND_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
#: what the client puts in Authorization when it goes through Subrouter (it is replaced)
CLIENT_PLACEHOLDER_KEY = "sk-bench-client-placeholder"


@dataclass(frozen=True)
class Latency:
    """
    A round-trip scenario: ``lanes`` connections, each doing ``per_lane``
    request/replies per round, requests padded to ``size`` bytes (0: bare).
    """

    name: str
    lanes: int
    size: int
    rounds: int
    per_lane: int


@dataclass(frozen=True)
class Bursts:
    """
    A burst scenario: ``lanes`` connections bursting at once, ``rounds``
    rounds of ``messages`` messages per connection.
    """

    name: str
    lanes: int
    rounds: int
    messages: int


@dataclass(frozen=True)
class Plan:
    """
    How much to measure.

    :ivar handshake_rounds: alternating rounds per path, each of
        ``handshakes_per_round`` handshakes one after the other.
    :ivar latency: the round-trip scenarios.
    :ivar bursts: the one-way burst scenarios.
    :ivar warmup: request/replies per lane per path before measuring anything.
    :ivar deadline: measuring stops (with what it has) after this long.
    """

    handshake_rounds: int
    handshakes_per_round: int
    latency: tuple[Latency, ...]
    bursts: tuple[Bursts, ...]
    warmup: int
    deadline: float


FULL = Plan(
    handshake_rounds=20,
    handshakes_per_round=50,
    latency=(
        Latency("round trip, 1 connection", 1, 0, 40, 500),
        Latency("round trip, 8 connections", 8, 0, 30, 100),
        Latency("round trip, 1 connection, 64 KB request", 1, BIG_REQUEST, 20, 100),
    ),
    bursts=(
        Bursts("one-way burst, 1 connection", 1, 16, 50000),
        Bursts("one-way burst, 8 connections", 8, 8, 10000),
    ),
    warmup=500,
    deadline=100.0,
)
QUICK = Plan(
    handshake_rounds=6,
    handshakes_per_round=20,
    latency=(
        Latency("round trip, 1 connection", 1, 0, 10, 300),
        Latency("round trip, 8 connections", 8, 0, 8, 60),
        Latency("round trip, 1 connection, 64 KB request", 1, BIG_REQUEST, 6, 50),
    ),
    bursts=(
        Bursts("one-way burst, 1 connection", 1, 4, 25000),
        Bursts("one-way burst, 8 connections", 8, 3, 5000),
    ),
    warmup=100,
    deadline=25.0,
)


# -- the measurements -------------------------------------------------------------------------


@dataclass
class Samples:
    values: list[float] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)


@dataclass
class Results:
    handshakes: dict[str, Samples] = field(default_factory=dict)
    latency: dict[str, dict[str, Samples]] = field(default_factory=dict)
    bursts: dict[str, dict[str, Samples]] = field(default_factory=dict)
    warmup_problems: dict[str, Counter[str]] = field(default_factory=dict)
    #: Subrouter CPU seconds and relayed messages, by scenario
    proxy_cpu: dict[str, tuple[float, int, str]] = field(default_factory=dict)
    #: what the upstream saw of the first proxied handshake (less the token)
    upstream_saw: dict[str, str] = field(default_factory=dict)
    cut_short: list[str] = field(default_factory=list)
    connections: Counter[str] = field(default_factory=Counter)
    #: (wall-clock start, what): to tell during what a Subrouter log line came
    timeline: list[tuple[float, str]] = field(default_factory=list)


class Bench:
    def __init__(self, plan: Plan, ports: dict[str, int], access_token: str, proxy_pid: int,
                 progress: IO[str]) -> None:
        self.plan = plan
        self.ports = ports
        self.access_token = access_token
        self.proxy_pid = proxy_pid
        self.progress = progress
        self.results = Results()
        self.deadline = 0.0
        self._open: set[WsClient] = set()

    def say(self, text: str) -> None:
        self.results.timeline.append((time.time(), text.split(":", 1)[0]))
        self.progress.write(text + "\n")
        self.progress.flush()

    def late(self) -> bool:
        return time.monotonic() > self.deadline

    # -- connections

    def _request(self, mode: str, key: bytes, session: str) -> bytes:
        port = self.ports[mode]
        if mode == DIRECT:
            # what Subrouter itself sends the upstream
            credentials = (f"Authorization: Bearer {self.access_token}\r\n"
                           f"ChatGPT-Account-ID: {CHATGPT_ACCOUNT_ID}\r\n")
        else:
            credentials = f"Authorization: Bearer {CLIENT_PLACEHOLDER_KEY}\r\n"
        return (
            f"GET {PATHS[mode]} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode('ascii')}\r\nSec-WebSocket-Version: 13\r\n"
            f"{credentials}originator: codex_cli_rs\r\nsession_id: {session}\r\n"
            "OpenAI-Beta: responses_websockets=2026-02-04\r\nUser-Agent: subrouter-ws-bench\r\n"
            "\r\n"
        ).encode("latin-1")

    def _check_echo(self, mode: str, headers: dict[str, str], session: str) -> list[str]:
        if mode == PROXIED and not self.results.upstream_saw:
            self.results.upstream_saw = {k[8:]: v for k, v in headers.items()
                                         if k.startswith("x-bench-") and k != "x-bench-auth"}
        problems = []
        expected = {
            "x-bench-path": UPSTREAM_PATH,
            "x-bench-auth": self.access_token[:TOKEN_ECHO],
            "x-bench-account": CHATGPT_ACCOUNT_ID,
            "x-bench-session": session,
            "x-bench-origin": "-",
        }
        for name, value in expected.items():
            if headers.get(name) != value:
                problems.append(f"handshake: upstream saw {name[8:]}={headers.get(name)!r}, "
                                f"not {value!r}")
        return problems

    async def connect(self, mode: str) -> tuple[WsClient, float, list[str]]:
        """
        Open a WebSocket; its opening time and what was wrong with the handshake.
        """
        loop = asyncio.get_running_loop()
        key = base64.b64encode(os.urandom(16))
        session = str(uuid.uuid4())
        request = self._request(mode, key, session)
        self.results.connections[mode] += 1
        started = time.monotonic()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: WsClient(request, key), HOST, self.ports[mode]),
            CONNECT_TIMEOUT,
        )
        self._open.add(conn)
        try:
            headers, opened = await asyncio.wait_for(asyncio.shield(conn.handshake),
                                                     CONNECT_TIMEOUT)
        except BaseException:
            self._open.discard(conn)
            conn.abort()
            raise
        return conn, opened - started, self._check_echo(mode, headers, session)

    async def close(self, conn: WsClient, problems: Counter[str]) -> None:
        """
        Close cleanly: our close frame, theirs, then the server closes TCP.
        """
        self._open.discard(conn)
        if conn.transport is not None:
            conn.start_close(1000)
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), CLOSE_TIMEOUT)
            except TimeoutError:
                problems[f"close: no TCP close within {CLOSE_TIMEOUT:g}s"] += 1
                conn.abort()
        if conn.close_received is None:
            problems["close: no close frame back"] += 1
        elif conn.close_received != 1000:
            problems[f"close: close code {conn.close_received} back"] += 1
        for error in conn.errors:
            problems[error] += 1
        if conn.unsolicited:
            problems["messages nobody asked for"] += conn.unsolicited

    def abort_all(self) -> None:
        for conn in list(self._open):
            conn.abort()
        self._open.clear()

    async def open_lanes(self, mode: str, count: int, problems: Counter[str]) -> list[WsClient]:
        lanes = []
        for _ in range(count):
            try:
                conn, _, echo = await self.connect(mode)
            except (OSError, TimeoutError, HandshakeFailed) as e:
                problems[f"connect: {describe_error(e)}"] += 1
                continue
            for text in echo:
                problems[text] += 1
            lanes.append(conn)
        return lanes

    async def close_lanes(self, lanes: Sequence[WsClient], problems: Counter[str]) -> None:
        await asyncio.gather(*(self.close(conn, problems) for conn in lanes))

    async def run_jobs(self, lanes: Sequence[WsClient], jobs: Sequence[Job],
                       problems: Counter[str]) -> bool:
        """
        One job per lane, all at once; False when any failed or timed out.
        """
        futures = [conn.run(job) for conn, job in zip(lanes, jobs, strict=True)]
        _, pending = await asyncio.wait(futures, timeout=ROUND_TIMEOUT)
        ok = not pending
        for future in pending:
            future.cancel()
        for conn, job in zip(lanes, jobs, strict=True):
            if job.future.cancelled():
                problems[f"timed out after {ROUND_TIMEOUT:g}s"] += 1
                conn.job = None
            elif job.future.exception() is not None:
                problems[describe_error(cast(BaseException, job.future.exception()))] += 1
                ok = False
            problems.update(job.problems)
        return ok

    # -- scenarios

    def _cpu(self) -> float | None:
        return process_cpu_seconds(self.proxy_pid)

    def _note_cpu(self, scenario: str, before: float | None, after: float | None,
                  count: int, per: str) -> None:
        if before is None or after is None:
            return
        seconds, total, _ = self.results.proxy_cpu.get(scenario, (0.0, 0, per))
        self.results.proxy_cpu[scenario] = (seconds + after - before, total + count, per)

    async def run(self) -> Results:
        self.deadline = time.monotonic() + self.plan.deadline
        try:
            await self._warm_up()
            await self._handshakes()
            for scenario in self.plan.latency:
                await self._latency(scenario)
            for bursts in self.plan.bursts:
                await self._bursts(bursts)
        finally:
            self.abort_all()
            self.results.timeline.append((time.time(), "after the measurements"))
        return self.results

    async def _warm_up(self) -> None:
        self.say("warming up")
        for mode in MODES:
            problems = self.results.warmup_problems.setdefault(mode, Counter())
            for _ in range(3):
                with contextlib.suppress(OSError, TimeoutError, HandshakeFailed):
                    conn, _, _ = await self.connect(mode)
                    await self.close(conn, problems)
            lanes = await self.open_lanes(mode, 8, problems)
            if not lanes:
                raise BenchError(f"cannot open a {mode} WebSocket: {dict(problems)}")
            await self.run_jobs(lanes, [PingPong(self.plan.warmup, b"") for _ in lanes],
                                problems)
            await self.run_jobs(lanes[:1], [PingPong(10, self._pad(BIG_REQUEST))], problems)
            await self.run_jobs(lanes, [Burst(1000) for _ in lanes], problems)
            await self.close_lanes(lanes, problems)

    async def _handshakes(self) -> None:
        plan = self.plan
        self.say(f"handshakes: {plan.handshake_rounds} rounds of {plan.handshakes_per_round} "
                 "per path")
        samples = {mode: Samples() for mode in MODES}
        self.results.handshakes = samples
        for number in range(plan.handshake_rounds):
            if self.late():
                self.results.cut_short.append(f"handshakes: stopped after {number} rounds")
                break
            for mode in interleaved(MODES, number):
                into = samples[mode]
                before = self._cpu() if mode == PROXIED else None
                for _ in range(plan.handshakes_per_round):
                    try:
                        conn, seconds, echo = await self.connect(mode)
                    except (OSError, TimeoutError, HandshakeFailed) as e:
                        into.problems[f"connect: {describe_error(e)}"] += 1
                        continue
                    into.values.append(seconds)
                    into.problems.update(echo)
                    await self.close(conn, into.problems)
                if mode == PROXIED:
                    self._note_cpu("handshake", before, self._cpu(),
                                   plan.handshakes_per_round, "WebSocket opened and closed")
                await asyncio.sleep(SETTLE)

    @staticmethod
    def _pad(size: int) -> bytes:
        if not size:
            return b""
        bare = len(b'{"type":"response.create","seq":1000000,"t":123456.12345678901}')
        return b',"pad":"%s"' % (b"x" * max(0, size - bare - len(b',"pad":""')))

    async def _latency(self, scenario: Latency) -> None:
        self.say(f"{scenario.name}: {scenario.rounds} rounds of {scenario.per_lane} "
                 "request/replies per connection per path")
        samples = {mode: Samples() for mode in MODES}
        self.results.latency[scenario.name] = samples
        lanes = {mode: await self.open_lanes(mode, scenario.lanes, samples[mode].problems)
                 for mode in MODES}
        pad = self._pad(scenario.size)
        try:
            for number in range(scenario.rounds):
                if self.late():
                    self.results.cut_short.append(
                        f"{scenario.name}: stopped after {number} rounds")
                    break
                for mode in interleaved(MODES, number):
                    into = samples[mode]
                    if len(lanes[mode]) < scenario.lanes:
                        # a connection was lost: top up
                        lanes[mode] += await self.open_lanes(
                            mode, scenario.lanes - len(lanes[mode]), into.problems)
                    jobs = [PingPong(scenario.per_lane, pad) for _ in lanes[mode]]
                    before = self._cpu() if mode == PROXIED else None
                    ok = await self.run_jobs(lanes[mode], jobs, into.problems)
                    if mode == PROXIED:
                        self._note_cpu(scenario.name, before, self._cpu(),
                                       sum(job.replies for job in jobs), "round trip")
                    for job in jobs:
                        into.values += job.latencies
                    if not ok:
                        for conn in lanes[mode]:
                            self._open.discard(conn)
                            conn.abort()
                        lanes[mode] = []
                    await asyncio.sleep(SETTLE)
        finally:
            for mode in MODES:
                await self.close_lanes(lanes[mode], samples[mode].problems)

    async def _bursts(self, scenario: Bursts) -> None:
        self.say(f"{scenario.name}: {scenario.rounds} rounds of {scenario.messages} messages "
                 "per connection per path")
        samples = {mode: Samples() for mode in MODES}
        self.results.bursts[scenario.name] = samples
        lanes = {mode: await self.open_lanes(mode, scenario.lanes, samples[mode].problems)
                 for mode in MODES}
        try:
            for number in range(scenario.rounds):
                if self.late():
                    self.results.cut_short.append(
                        f"{scenario.name}: stopped after {number} rounds")
                    break
                for mode in interleaved(MODES, number):
                    into = samples[mode]
                    if len(lanes[mode]) < scenario.lanes:
                        lanes[mode] += await self.open_lanes(
                            mode, scenario.lanes - len(lanes[mode]), into.problems)
                    jobs = [Burst(scenario.messages) for _ in lanes[mode]]
                    before = self._cpu() if mode == PROXIED else None
                    ok = await self.run_jobs(lanes[mode], jobs, into.problems)
                    if mode == PROXIED:
                        self._note_cpu(scenario.name, before, self._cpu(),
                                       sum(job.received + 1 for job in jobs), "message")
                    rate = aggregate_rate(jobs)
                    if rate is not None and len(jobs) == scenario.lanes:
                        into.values.append(rate)
                    if not ok:
                        for conn in lanes[mode]:
                            self._open.discard(conn)
                            conn.abort()
                        lanes[mode] = []
                    await asyncio.sleep(SETTLE)
        finally:
            for mode in MODES:
                await self.close_lanes(lanes[mode], samples[mode].problems)


def aggregate_rate(jobs: Sequence[Burst]) -> float | None:
    """
    All the bursts' messages over the time from the first trigger to the
    last message; None unless every burst arrived whole.
    """
    if not jobs or any(job.rate is None for job in jobs):
        return None
    first = min(job.sent_at for job in jobs)
    last = max(cast(float, job.done_at) for job in jobs)
    return sum(job.count for job in jobs) / (last - first)


# -- the processes --------------------------------------------------------------------------


def read_upstream_stats(path: str) -> dict[str, int]:
    try:
        with open(path) as f:
            return cast(dict[str, int], json.load(f))
    except (OSError, ValueError):
        return {}


_OPENED = re.compile(r"WebSocket \S+ opened via account")
_CLOSED = re.compile(r"WebSocket \S+ via account \S+ closed \((\S+)\)")
_FACTORY = re.compile(r"(Starting|Stopping) factory")


def _log_time(line: str) -> float | None:
    try:
        return datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()
    except ValueError:
        return None


def during(when: float | None, timeline: Sequence[tuple[float, str]]) -> str:
    """
    What the benchmark was doing at ``when`` (log times are whole seconds).
    """
    if when is None:
        return "?"
    doing = [what for start, what in timeline if int(start) <= when]
    return doing[-1] if doing else "start-up"


def summarize_log(path: str, timeline: Sequence[tuple[float, str]]) -> dict[str, Any]:
    """
    What Subrouter logged: WebSockets opened and closed (by code), factory
    start/stop lines, warnings (with what the benchmark was doing then).
    """
    closed: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    factories = 0
    when: dict[str, list[str]] = {}
    opened = lines = 0
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                lines += 1
                match = _CLOSED.search(line)
                if match:
                    closed[match.group(1)] += 1
                elif _OPENED.search(line):
                    opened += 1
                elif _FACTORY.search(line):
                    factories += 1
                elif BAD_LOG_LEVEL.search(line):
                    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", log_text(line))
                    warnings[text] += 1
                    seen = when.setdefault(text, [])
                    phase = during(_log_time(line), timeline)
                    if phase not in seen:
                        seen.append(phase)
    except OSError as e:
        return {"error": str(e)}
    return {"lines": lines, "opened": opened, "closed": dict(closed),
            "factory_lines": factories,
            "warnings": [{"text": text, "count": count, "during": when[text]}
                         for text, count in warnings.items()]}


# -- the report -----------------------------------------------------------------------------


def build_report(results: Results, plan: Plan) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []

    def add_row(name: str, samples: dict[str, Samples]) -> None:
        rows.append(comparison_row(name, MODES, samples[DIRECT].values,
                                   samples[PROXIED].values))

    if results.handshakes:
        add_row("handshake (open a WebSocket)", results.handshakes)
    for name, samples in results.latency.items():
        add_row(name, samples)
    bursts: list[dict[str, Any]] = []
    for scenario in plan.bursts:
        by_mode = results.bursts.get(scenario.name)
        if by_mode is None:
            continue
        burst: dict[str, Any] = {"scenario": scenario.name, "connections": scenario.lanes,
                                 "messages_per_connection": scenario.messages}
        for mode in MODES:
            rates = by_mode[mode].values
            burst[mode] = {"median": percentile(rates, 50), "min": min(rates, default=0.0),
                           "max": max(rates, default=0.0), "n": len(rates)}
        bursts.append(burst)
    problems: dict[str, dict[str, int]] = {}

    def note(where: str, counter: Counter[str]) -> None:
        if counter:
            problems[where] = dict(counter)

    for mode, taken in results.handshakes.items():
        note(f"handshakes, {mode}", taken.problems)
    for name, by_mode in results.latency.items():
        for mode, taken in by_mode.items():
            note(f"{name}, {mode}", taken.problems)
    for name, by_mode in results.bursts.items():
        for mode, taken in by_mode.items():
            note(f"{name}, {mode}", taken.problems)
    for mode, counter in results.warmup_problems.items():
        note(f"warm-up, {mode}", counter)
    cpu = {name: {"us": seconds / count * 1e6 if count else float("nan"), "per": per}
           for name, (seconds, count, per) in results.proxy_cpu.items()}
    return {"rows": rows, "bursts": bursts, "problems": problems,
            "proxy_cpu_us": cpu, "upstream_saw": results.upstream_saw,
            "connections_opened": dict(results.connections), "cut_short": results.cut_short}


def _rate(value: float) -> str:
    return "n/a" if value != value else f"{value:,.0f}"


def render(report: dict[str, Any], machine: str) -> str:
    out = [machine, "", *comparison_table(report["rows"], MODES, digits=3)]
    if report["bursts"]:
        out += ["", f"one-way bursts of {MESSAGE_BYTES} B text messages, rate in messages/s "
                "over all connections, from the first trigger sent to the last message in",
                "", "| scenario | direct median | direct min | proxied median | proxied min "
                "| proxied / direct | rounds (direct/proxied) |",
                "|---|---:|---:|---:|---:|---:|---:|"]
        for burst in report["bursts"]:
            direct, proxied = burst[DIRECT], burst[PROXIED]
            ratio = (f"{proxied['median'] / direct['median'] * 100:.1f} %"
                     if direct["median"] == direct["median"] and direct["median"] else "n/a")
            out.append(
                f"| {burst['scenario']} ({burst['messages_per_connection']:,} messages each) "
                f"| {_rate(direct['median'])} | {_rate(direct['min'])} "
                f"| {_rate(proxied['median'])} | {_rate(proxied['min'])} | {ratio} "
                f"| {direct['n']}/{proxied['n']} |"
            )
    out += ["", "times in ms; added = proxied minus direct, percentile by percentile"]
    if report["bursts"]:
        out.append("direct burst rates are the ceiling of this benchmark's own client and "
                   "upstream (pure Python), not of loopback")
    cpu = report["proxy_cpu_us"]
    if cpu:
        out.append("Subrouter CPU time (its /proc/PID/stat, user+system, over the proxied "
                   "rounds): " + "; ".join(
                       f"{name} {value['us']:.0f} µs per {value['per']}"
                       for name, value in cpu.items()))
    if report["upstream_saw"]:
        out.append("the upstream saw Subrouter's handshake as: " + ", ".join(
            f"{k} {v!r}" for k, v in report["upstream_saw"].items())
            + " (the bench upstream declines permessage-deflate)")
    out.append("client connections opened: "
               + ", ".join(f"{k} {v}" for k, v in report["connections_opened"].items()))
    upstream = report.get("upstream", {})
    if upstream:
        out.append("upstream counters: " + ", ".join(f"{k} {v}" for k, v in upstream.items()))
    log = report.get("proxy_log", {})
    if log:
        out.append(f"Subrouter log: {log.get('lines', 0)} lines; WebSockets opened "
                   f"{log.get('opened', 0)}, closed by code {log.get('closed', {})}; "
                   f"{log.get('factory_lines', 0)} 'Starting/Stopping factory' lines")
        for warning in log.get("warnings", [])[:10]:
            expected = (" (expected: the bench upstream has no usage endpoint)"
                        if "fetching the usage" in warning["text"] else "")
            out.append(f"  log warning x{warning['count']} (during "
                       f"{', '.join(warning['during'])}): {warning['text']}{expected}")
    if report.get("proxy_exited_during_run") is not None:
        out.append(f"SUBROUTER EXITED during the run, status {report['proxy_exited_during_run']}")
    for note in report["cut_short"]:
        out.append(f"cut short by the time limit: {note}")
    if report["problems"]:
        out.append("PROBLEMS (messages or handshakes that were wrong, missing or late):")
        out += problem_lines(report["problems"])
    else:
        out.append("every handshake, reply and burst checked out (accept key, upstream echo "
                   "of path and credentials, seq and t, counts and order, clean close)")
    return "\n".join(out)


def autobahn_nvx() -> bool | None:
    """
    Whether autobahn uses its NVX (C) frame masking and UTF-8 checks here.
    """
    try:
        from autobahn.websocket import USES_NVX
    except ImportError:
        return None
    return bool(USES_NVX)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare a direct WebSocket to a fake upstream with the path through "
        "Subrouter's relay, on loopback.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds: a smoke run of about 15 s")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--log", metavar="FILE",
                        help="keep Subrouter's log here (default: a temporary file)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, stdout: IO[str] = sys.stdout,
         progress: IO[str] = sys.stderr) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    plan = QUICK if args.quick else FULL
    info = machine_info(("twisted", "autobahn"))
    info["autobahn_nvx"] = autobahn_nvx()
    processes = Processes()
    started = time.monotonic()
    with private_folder("subrouter-ws-bench-") as folder:
        stats_path = os.path.join(folder, "upstream-stats.json")
        log_path = os.path.abspath(args.log) if args.log else os.path.join(folder, "subrouter.log")
        try:
            access_token = write_account(folder)
            upstream_port = processes.start_upstream(folder, wsload.__file__,
                                                     "--upstream-stats", stats_path)
            proxy_port = processes.start_daemon(PROXIED, folder, upstream_port, log_path)
            progress.write(f"upstream on {HOST}:{upstream_port}, Subrouter on "
                           f"{HOST}:{proxy_port} (log: {log_path})\n")
            bench = Bench(plan, {DIRECT: upstream_port, PROXIED: proxy_port}, access_token,
                          processes.daemons[PROXIED].pid, progress)
            results = asyncio.run(bench.run())
            proxy_status = processes.exited()[PROXIED]
        except KeyboardInterrupt:
            progress.write("interrupted\n")
            return 130
        except BenchError as e:
            progress.write(f"ws_bench: {e}\n")
            return 1
        finally:
            # the upstream writes its counters as it exits
            processes.stop()
        report = build_report(results, plan)
        report["upstream"] = read_upstream_stats(stats_path)
        report["proxy_log"] = summarize_log(log_path, results.timeline)
        report["proxy_exited_during_run"] = proxy_status
    report["machine"] = info
    report["plan"] = {
        "handshakes": plan.handshake_rounds * plan.handshakes_per_round,
        "latency": [{"name": s.name, "connections": s.lanes, "request_bytes": s.size or None,
                     "rounds": s.rounds, "per_connection": s.per_lane} for s in plan.latency],
        "bursts": [{"name": b.name, "connections": b.lanes, "rounds": b.rounds,
                    "messages_per_connection": b.messages} for b in plan.bursts],
        "burst_message_bytes": MESSAGE_BYTES,
    }
    report["seconds"] = round(time.monotonic() - started, 1)
    versions = (f"Twisted {info['twisted']}, autobahn {info['autobahn']} "
                f"(NVX {info['autobahn_nvx']}), subrouter {info['subrouter']}")
    stdout.write(render(report, machine_line(info, versions)) + "\n")
    stdout.flush()
    progress.write(f"done in {report['seconds']:.0f} s\n")
    if args.json:
        write_json(args.json, report)
    return 2 if report["problems"] or report["proxy_exited_during_run"] is not None else 0


if __name__ == "__main__":
    sys.exit(main())
