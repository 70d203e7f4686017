#!/usr/bin/env python3
"""
One worker against two (``--workers 2``), and a direct connection, in one run.

It reuses ``streams.py``'s fake upstream and client (``proxy_bench.py``'s
workload) and ``harness.py``'s process handling and figures: the same
Codex-like streaming requests (a 60 KB body, 20 SSE events 5 ms apart), one
persistent connection per concurrent stream. Three paths are measured
round by round, in rotating order, so machine noise falls on all alike:

- ``direct``: straight to the fake upstream;
- ``1 worker``: ``subrouter serve --state redis://...`` (one process);
- ``2 workers``: ``subrouter serve --workers 2 --state redis://...``.

Both Subrouters share nothing (their own Redis database each, their own
account store) and use one ChatGPT login. A ``redis-server`` (Debian's) is
started on loopback in the temporary folder, persistence off.

For 8, 32 and 1,000 concurrent streams it reports, per Subrouter path, the
added TTFB (p50/p99 of proxied minus direct), the added per-event latency
(p50/p99) and the CPU time of all its processes per relayed event. No traffic
leaves 127.0.0.1.

    python bench/workers_bench.py            # full run, a few minutes on 2 cores
    python bench/workers_bench.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from typing import IO, Any

import streams as workload
from harness import (
    CODEX_PREFIX,
    HOST,
    BenchError,
    Processes,
    describe_error,
    die_with_parent,
    free_port,
    machine_info,
    machine_line,
    percentile,
    private_environment,
    process_cpu_seconds,
    tail,
    write_account,
)
from streams import EVENTS, Lane, codex_body, stream_request

DIRECT = "direct"
ONE = "1 worker"
TWO = "2 workers"
MODES = (DIRECT, ONE, TWO)
FULL = {8: 30, 32: 15, 1000: 3}
QUICK = {8: 4, 32: 2, 1000: 1}


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def tree_cpu(pid: int) -> float:
    """
    CPU seconds of a process and its children (the workers).
    """
    total = 0.0
    for each in [pid, *_children(pid)]:
        value = process_cpu_seconds(each)
        total += value or 0.0
    return total


class Redis:
    def __init__(self, folder: str) -> None:
        self.port = free_port()
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", HOST, "--save", "",
             "--appendonly", "no", "--dir", folder, "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        time.sleep(0.3)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def start_subrouter(folder: str, upstream_port: int, redis_port: int, db: int,
                    workers: int, files: list[IO[bytes]]) -> tuple[subprocess.Popen[bytes], int]:
    os.makedirs(folder)
    token = write_account(folder)
    key = os.path.join(folder, "state.key")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, __import__("base64").urlsafe_b64encode(os.urandom(32)))
    os.close(fd)
    port = free_port()
    upstream = f"http://{HOST}:{upstream_port}"
    log = open(os.path.join(folder, "subrouter.log"), "wb")
    files.append(log)
    command = [
        os.path.join(os.path.dirname(sys.executable), "subrouter"), "serve",
        "--addr", f"{HOST}:{port}", "--accounts-dir", folder,
        "--codex-upstream", upstream + CODEX_PREFIX, "--openai-upstream", upstream,
        "--codex-home", os.path.join(folder, "codex-home"),
        "--token-url", upstream + "/oauth/token",
        "--usage-url", upstream + "/backend-api/wham/usage", "--fetch-usage", "false",
        "--state-dir", os.path.join(folder, "state"), "--cx-switch-interval", "0",
        "--state", f"redis://{HOST}:{redis_port}/{db}", "--state-key-file", key,
        "--workers", str(workers),
    ]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, cwd=folder,
                               env=private_environment(folder), start_new_session=True,
                               preexec_fn=die_with_parent)
    end = time.monotonic() + 60
    pids: set[int] = set()
    while time.monotonic() < end and len(pids) < workers:
        if process.poll() is not None:
            raise BenchError(f"Subrouter exited: {tail(log.name)}")
        import http.client

        conn = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            conn.request("GET", "/_subrouter/health")
            answer = json.loads(conn.getresponse().read())
            pids.add(answer.get("pid", 0))
        except (OSError, ValueError):
            time.sleep(0.1)
        finally:
            conn.close()
    if len(pids) < workers:
        raise BenchError(f"Subrouter ({workers} workers) did not come up")
    del token
    return process, port


async def measure(ports: dict[str, int], pids: dict[str, int], plan: dict[int, int],
                  progress: IO[str]) -> dict[str, Any]:
    top = max(plan)
    lanes = {mode: [Lane(ports[mode]) for _ in range(top)] for mode in MODES}
    sessions = [f"bench-{i:04d}" for i in range(top)]
    bodies = [codex_body(s) for s in sessions]
    paths = {DIRECT: workload.UPSTREAM_STREAM_PATH, ONE: workload.PROXIED_STREAM_PATH,
             TWO: workload.PROXIED_STREAM_PATH}
    raws = {mode: [stream_request(paths[mode], ports[mode], s, b)
                   for s, b in zip(sessions, bodies, strict=True)] for mode in MODES}
    out: dict[str, Any] = {}

    async def one_round(mode: str, streams: int, into: dict[str, Any]) -> None:
        replies = await asyncio.gather(
            *(lane.call(raw, True) for lane, raw in
              zip(lanes[mode][:streams], raws[mode], strict=False)),
            return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                into["problems"][describe_error(reply)] += 1
                continue
            if reply.status != 200 or len(reply.latencies) != EVENTS:
                into["problems"][f"status {reply.status}, {len(reply.latencies)} events"] += 1
                continue
            into["ttfb"].append(reply.ttfb)
            into["events"].extend(reply.latencies)

    try:
        progress.write("warming up\n")
        for mode in MODES:
            warm: dict[str, Any] = {"ttfb": [], "events": [], "problems": Counter()}
            await one_round(mode, min(top, 64), warm)
        for streams, rounds in sorted(plan.items()):
            progress.write(f"{streams} streams: {rounds} rounds per path\n")
            progress.flush()
            samples: dict[str, dict[str, Any]] = {
                m: {"ttfb": [], "events": [], "problems": Counter()} for m in MODES
            }
            cpu = dict.fromkeys(MODES, 0.0)
            for number in range(rounds):
                order = MODES[number % 3:] + MODES[:number % 3]
                for mode in order:
                    before = tree_cpu(pids[mode]) if mode in pids else 0.0
                    await one_round(mode, streams, samples[mode])
                    if mode in pids:
                        cpu[mode] += tree_cpu(pids[mode]) - before
                    await asyncio.sleep(0.05 if streams < 1000 else 0.5)
            out[str(streams)] = {m: summarize(samples[m], samples[DIRECT], cpu.get(m))
                                 for m in MODES}
    finally:
        for mode in MODES:
            for lane in lanes[mode]:
                lane.close()
    return out


def summarize(mine: dict[str, Any], direct: dict[str, Any], cpu: float | None) -> dict[str, Any]:
    def ms(values: list[float], q: float) -> float:
        return percentile(values, q) * 1000 if values else float("nan")

    result: dict[str, Any] = {
        "streams_ok": len(mine["ttfb"]),
        "problems": dict(mine["problems"]),
        "ttfb_p50": ms(mine["ttfb"], 50), "ttfb_p99": ms(mine["ttfb"], 99),
        "event_p50": ms(mine["events"], 50), "event_p99": ms(mine["events"], 99),
    }
    if mine is not direct:
        result["added_ttfb_p50"] = result["ttfb_p50"] - ms(direct["ttfb"], 50)
        result["added_ttfb_p99"] = result["ttfb_p99"] - ms(direct["ttfb"], 99)
        result["added_event_p99"] = result["event_p99"] - ms(direct["events"], 99)
        events = len(mine["events"])
        result["cpu_us_per_event"] = (cpu or 0.0) / events * 1e6 if events else float("nan")
    return result


def render(report: dict[str, Any]) -> str:
    lines = [
        "| streams | path | ok | added TTFB p50 / p99 (ms) | per-event p99 (ms), added "
        "| CPU per relayed event (µs) | problems |",
        "|---|---|---|---|---|---|---|",
    ]
    for streams, by_mode in report.items():
        for mode in (ONE, TWO):
            r = by_mode[mode]
            lines.append(
                f"| {streams} | {mode} | {r['streams_ok']} | {r['added_ttfb_p50']:.2f} / "
                f"{r['added_ttfb_p99']:.2f} | {r['event_p99']:.2f}, {r['added_event_p99']:+.2f} "
                f"| {r['cpu_us_per_event']:.1f} | {r['problems'] or '-'} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20000)), hard))
    files: list[IO[bytes]] = []
    processes: list[subprocess.Popen[bytes]] = []
    runner = Processes()
    with tempfile.TemporaryDirectory(prefix="subrouter-workers-bench-") as folder:
        redis = Redis(folder)
        try:
            upstream_port = runner.start_upstream(folder, workload.__file__)
            one, one_port = start_subrouter(os.path.join(folder, "one"), upstream_port,
                                            redis.port, 1, 1, files)
            processes.append(one)
            two, two_port = start_subrouter(os.path.join(folder, "two"), upstream_port,
                                            redis.port, 2, 2, files)
            processes.append(two)
            ports = {DIRECT: upstream_port, ONE: one_port, TWO: two_port}
            report = asyncio.run(measure(ports, {ONE: one.pid, TWO: two.pid},
                                         QUICK if args.quick else FULL, sys.stderr))
        finally:
            for process in processes:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(60)
            runner.stop()
            redis.stop()
            for f in files:
                f.close()
    info = machine_info(("twisted", "treq"))
    print(machine_line(info, f"Twisted {info['twisted']}, treq {info['treq']}, "
                             f"subrouter {info['subrouter']}"))
    print(render(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
