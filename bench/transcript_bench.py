#!/usr/bin/env python3
"""
What recording transcripts (``--transcripts DIR``) costs on Subrouter's
streaming hot path, on loopback, in one run.

What is measured
----------------
The run starts, all on 127.0.0.1, ``proxy_bench``'s fake Responses upstream
(20 SSE deltas 5 ms apart, each stamped with ``time.monotonic()``, and a small
JSON answer on ``.../small``) and TWO Subrouter daemons (``twistd -n
subrouter``, each in its own temporary folder with one ChatGPT login that does
not expire during the run) in front of that same upstream:

- "off": no ``--transcripts``;
- "on": ``--transcripts <tmpdir>/transcripts``, so every exchange (request and
  response bodies, base64 JSON lines) is queued for the recorder's writer
  thread.

The client is ``proxy_bench``'s: raw HTTP/1.1 over asyncio, one keep-alive
connection per concurrent stream, Codex-like requests (a 60 KB body,
``originator``, ``session-id``, ``OpenAI-Beta``) to ``POST /v1/responses`` on
each daemon. In each round 1 or 8 streams start at the same instant; "off" and
"on" rounds alternate (swapping which goes first), so machine noise falls on
both alike. A last scenario hammers ``GET /v1/small`` from 8 lanes in
alternating slices. Every response is checked as in ``proxy_bench``.

It reports, for "off", "on" and "added" (on minus off, percentile by
percentile): TTFB and per-event latency at 1 and 8 streams, and the small
requests' latency and rate; each daemon's CPU time per request; and, for the
"on" daemon, the size of the transcript folder it wrote (after it stopped and
drained its queue) and the ``dropped_events`` its
``GET /_subrouter/transcripts`` reports at the end. The aim (informational,
PASS/MISS per row) is at most 0.3 ms added at p50.

Running it
----------
From the repository root, in the project's virtualenv::

    python bench/transcript_bench.py                  # the full run, under 2 minutes
    python bench/transcript_bench.py --quick          # a smoke run, about 15 s
    python bench/transcript_bench.py --json out.json  # also write the numbers as JSON

It prints a Markdown table on stdout (progress goes to stderr) and exits 0
unless something broke (a daemon or the upstream failed to start, or crashed):
the aim is for information only. Subprocesses and temporary folders are
removed when it ends, also on Ctrl-C. No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import IO, Any

import proxy_bench as pb

OFF = pb.DIRECT  # proxy_bench's first slot: the daemon without --transcripts
ON = pb.PROXIED  # its second slot: the daemon recording transcripts
NAMES = {OFF: "off", ON: "on"}

AIM_P50_MS = 0.3
AIM = f"aim: at most {AIM_P50_MS:g} ms added at p50 with transcripts on (latency rows)"
#: measuring stops (with what it has) after this long
DEADLINE = 150.0
#: how long to wait for the recorder's folder to stop growing before asking for its numbers
DRAIN_TIMEOUT = 5.0

FULL = pb.Plan(rounds={1: 150, 8: 110}, small_slices=6, small_slice_seconds=1.0,
               warmup_rounds=3)
QUICK = pb.Plan(rounds={1: 20, 8: 12}, small_slices=2, small_slice_seconds=0.5,
                warmup_rounds=1)


# -- the processes ------------------------------------------------------------------------


class TwoProxies(pb.Processes):
    """
    The fake upstream and two Subrouter daemons, stopped however the run ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self.proxies: dict[str, subprocess.Popen[bytes]] = {}

    def start_subrouter(self, mode: str, folder: str, upstream_port: int, log_path: str,
                        extra: Sequence[str] = ()) -> int:
        """
        Like ``proxy_bench.Processes.start_proxy``, with extra options.
        """
        port = pb.free_port()
        log = open(log_path, "wb")
        self._files.append(log)
        upstream = f"http://{pb.HOST}:{upstream_port}"
        command = [
            *pb.twistd_command(), "subrouter",
            "--addr", f"{pb.HOST}:{port}",
            "--accounts-dir", folder,
            "--codex-upstream", upstream + pb.CODEX_PREFIX,
            "--openai-upstream", upstream,
            "--codex-home", os.path.join(folder, "codex-home"),
            "--token-url", upstream + "/oauth/token",
            "--usage-url", upstream + "/backend-api/wham/usage",
            "--state-dir", os.path.join(folder, "state"),
            # never touch this machine's OpenCode or pi files
            "--cx-switch-interval", "0",
            *extra,
        ]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
            start_new_session=True, preexec_fn=pb._die_with_parent,
        )
        self.proxies[mode] = process
        # proxy_bench's health check watches self.proxy
        self.proxy = process
        try:
            self._wait_healthy(port, log_path)
        finally:
            self.proxy = None
        return port

    def stop_proxies(self) -> None:
        """
        Stop the daemons (SIGTERM: the recorder drains its queue), leaving the upstream.
        """
        proxies = list(self.proxies.values())
        self.proxies.clear()
        for process in proxies:
            if process.poll() is None:
                process.terminate()
        for process in proxies:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def stop(self) -> None:
        self.stop_proxies()
        super().stop()


def get_json(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(pb.HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(body)
    except ValueError:
        return response.status, body[:200].decode("latin-1")


def folder_size(path: str) -> tuple[int, int]:
    """
    Bytes and files under ``path``.
    """
    size = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(root, name)).st_size
                files += 1
    return size, files


def wait_still(path: str, timeout: float) -> None:
    """
    Wait (bounded) until the folder has not grown for a moment.
    """
    end = time.monotonic() + timeout
    last = folder_size(path)
    while time.monotonic() < end:
        time.sleep(0.25)
        now = folder_size(path)
        if now == last:
            return
        last = now


# -- measuring ----------------------------------------------------------------------------


class TranscriptBench(pb.Bench):
    """
    ``proxy_bench``'s client with both slots sent through Subrouter: the
    "direct" slot to the daemon without transcripts, the "proxied" one to the
    daemon with them; the CPU time of both daemons is noted.
    """

    def __init__(self, plan: pb.Plan, ports: dict[str, int], tokens: dict[str, str],
                 pids: dict[str, int], progress: IO[str]) -> None:
        super().__init__(plan, ports, tokens[ON], pids[ON], progress)
        self.pids = pids
        self.deadline = time.monotonic() + DEADLINE
        #: CPU seconds per request of each daemon, by scenario
        self.cpu: dict[str, dict[str, float]] = {OFF: {}, ON: {}}
        # proxy_bench sent the first slot straight to the upstream: send it to the
        # other daemon instead, the same requests but for the Host header
        on_host = f"Host: {pb.HOST}:{ports[ON]}\r\n".encode()
        off_host = f"Host: {pb.HOST}:{ports[OFF]}\r\n".encode()
        self.requests[OFF] = [raw.replace(on_host, off_host, 1) for raw in self.requests[ON]]
        self.echoes[OFF] = [
            {**echo, "auth": tokens[OFF][:12]} for echo in self.echoes[ON]
        ]
        self.small_requests[OFF] = self.small_requests[ON].replace(on_host, off_host, 1)

    async def _streams(self, streams: int, rounds: int) -> None:
        before = pb.process_cpu_seconds(self.pids[OFF])
        await super()._streams(streams, rounds)
        label = f"{streams} stream" + ("s" if streams > 1 else "")
        self._note_both(label, before, {m: s.requests
                                        for m, s in self.results.streams[streams].items()})

    async def _small(self) -> None:
        before = pb.process_cpu_seconds(self.pids[OFF])
        await super()._small()
        self._note_both("small requests", before,
                        {m: len(s.latencies) for m, s in self.results.small.items()})

    def _note_both(self, label: str, off_before: float | None, requests: dict[str, int]) -> None:
        after = pb.process_cpu_seconds(self.pids[OFF])
        if off_before is not None and after is not None and requests[OFF]:
            self.cpu[OFF][label] = (after - off_before) / requests[OFF]
        # proxy_bench noted the "proxied" slot's daemon, the one recording
        if label in self.results.proxy_cpu:
            self.cpu[ON][label] = self.results.proxy_cpu[label]


# -- the report ---------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    return {"p50": pb.percentile(values, 50) * 1000, "p99": pb.percentile(values, 99) * 1000,
            "n": len(values)}


def build_report(results: pb.Results, cpu: dict[str, dict[str, float]]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []

    def add_row(name: str, off: Sequence[float], on: Sequence[float]) -> None:
        a, b = _stats(off), _stats(on)
        added = {key: b[key] - a[key] for key in ("p50", "p99")}
        p50 = added["p50"]
        verdict = None if p50 != p50 else ("PASS" if p50 <= AIM_P50_MS else "MISS")
        rows.append({"scenario": name, "off": a, "on": b, "added": added, "aim": verdict})

    def label(streams: int) -> str:
        return f"{streams} stream" + ("s" if streams > 1 else "")

    for streams, samples in sorted(results.streams.items()):
        add_row(f"TTFB, {label(streams)}", samples[OFF].ttfb, samples[ON].ttfb)
    for streams, samples in sorted(results.streams.items()):
        add_row(f"per-event latency, {label(streams)}", samples[OFF].events, samples[ON].events)
    rps: dict[str, float] = {}
    if results.small:
        add_row(f"small request latency, {pb.SMALL_LANES} lanes",
                results.small[OFF].latencies, results.small[ON].latencies)
        for mode, hammered in results.small.items():
            rps[NAMES[mode]] = (len(hammered.latencies) / hammered.seconds
                                if hammered.seconds else 0.0)
    problems: dict[str, dict[str, int]] = {}
    for streams, samples in sorted(results.streams.items()):
        for mode, s in samples.items():
            if s.problems:
                problems[f"{label(streams)}, {NAMES[mode]}"] = dict(s.problems)
    for mode, hammered in results.small.items():
        if hammered.problems:
            problems[f"small requests, {NAMES[mode]}"] = dict(hammered.problems)
    for mode, counter in results.warmup_problems.items():
        if counter:
            problems[f"warm-up, {NAMES[mode]}"] = dict(counter)
    return {
        "rows": rows,
        "small_requests_per_second": rps,
        "requests": {label(n): {NAMES[m]: s.requests for m, s in v.items()}
                     for n, v in sorted(results.streams.items())},
        "cpu_ms_per_request": {NAMES[m]: {k: v * 1000 for k, v in by.items()}
                               for m, by in cpu.items()},
        "problems": problems,
        "connections_opened": {NAMES[m]: n for m, n in results.connects.items()},
        "cut_short": results.cut_short,
    }


def _ms(value: float, signed: bool = False) -> str:
    if value != value:  # NaN: no samples
        return "n/a"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def render(report: dict[str, Any], machine: str) -> str:
    out = [machine, AIM, "",
           "| scenario | off p50 | off p99 | on p50 | on p99 | added p50 | added p99 "
           "| samples (off/on) | aim |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in report["rows"]:
        a, b, d = row["off"], row["on"], row["added"]
        out.append(
            f"| {row['scenario']} | {_ms(a['p50'])} | {_ms(a['p99'])} | {_ms(b['p50'])} "
            f"| {_ms(b['p99'])} | {_ms(d['p50'], True)} | {_ms(d['p99'], True)} "
            f"| {a['n']}/{b['n']} | {row['aim'] or ''} |"
        )
    rps = report["small_requests_per_second"]
    if rps:
        off, on = rps["off"], rps["on"]
        change = f"{(on / off - 1) * 100:+.1f} %" if off else "n/a"
        out.append(f"| small requests/s, {pb.SMALL_LANES} lanes | {off:.0f} req/s | "
                   f"| {on:.0f} req/s | | {change} | | | |")
    out += ["", "times in ms; added = on minus off, percentile by percentile", ""]
    cpu = report["cpu_ms_per_request"]
    labels = [k for k in cpu.get("on", {}) if k in cpu.get("off", {})]
    if labels:
        out += ["Subrouter CPU per request (ms):", "",
                "| scenario | off | on | added |", "|---|---:|---:|---:|"]
        for key in labels:
            off_cpu, on_cpu = cpu["off"][key], cpu["on"][key]
            out.append(f"| {key} | {off_cpu:.2f} | {on_cpu:.2f} | {on_cpu - off_cpu:+.2f} |")
        out.append("")
    t = report.get("transcripts", {})
    if t:
        per = (f", {_size(int(t['bytes'] / t['recorded_requests']))} per request"
               if t.get("recorded_requests") else "")
        out.append(f"transcript folder: {_size(t['bytes'])} in {t['files']} files "
                   f"({t['recorded_requests']} requests recorded{per}); "
                   f"sessions listed {t.get('sessions', '?')}; "
                   f"dropped_events {t.get('dropped_events', '?')}")
        if t.get("error"):
            out.append(f"  transcripts endpoint: {t['error']}")
        if t.get("off_status") != 404:
            out.append(f"  NOTE: the 'off' daemon's /_subrouter/transcripts answered "
                       f"{t.get('off_status')}, not 404 (recording off)")
    out.append("client connections opened: "
               + ", ".join(f"{k} {v}" for k, v in report["connections_opened"].items()))
    for mode, log in report.get("logs", {}).items():
        out.append(f"Subrouter {mode} log: {log.get('lines', 0)} lines; request outcomes "
                   f"{log.get('requests', {})}")
        for text, count in list(log.get("warnings", {}).items())[:10]:
            out.append(f"  log warning x{count}: {text}")
    for mode, status in report.get("exited_during_run", {}).items():
        if status is not None:
            out.append(f"SUBROUTER {mode.upper()} EXITED during the run, status {status}")
    for note in report["cut_short"]:
        out.append(f"cut short by the time limit: {note}")
    if report["problems"]:
        out.append("PROBLEMS (responses that were wrong or failed):")
        for where, counts in report["problems"].items():
            for text, count in counts.items():
                out.append(f"  {where}: x{count} {text}")
    else:
        out.append("every response checked out (status, framing, events, [DONE], upstream echo)")
    return "\n".join(out)


def recorded_requests(log: dict[str, Any]) -> int:
    """
    The proxied requests a daemon logged (``/v1/...``), from ``summarize_log``.
    """
    return sum(count for key, count in log.get("requests", {}).items()
               if key.split(" ")[1:2] and key.split(" ")[1].startswith("/v1/"))


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare Subrouter with and without --transcripts, on loopback.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds: a smoke run of about 15 s")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    return parser.parse_args(argv)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None, stdout: IO[str] = sys.stdout,
         progress: IO[str] = sys.stderr) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    plan = QUICK if args.quick else FULL
    info = pb.machine_info()
    processes = TwoProxies()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="subrouter-transcript-bench-") as top:
        folders = {mode: os.path.join(top, NAMES[mode]) for mode in (OFF, ON)}
        logs = {mode: os.path.join(top, f"subrouter-{NAMES[mode]}.log") for mode in (OFF, ON)}
        transcripts = os.path.join(top, "transcripts")
        extra = {OFF: [], ON: ["--transcripts", transcripts]}
        transcript_info: dict[str, Any] = {}
        exited: dict[str, int | None] = {}
        try:
            tokens: dict[str, str] = {}
            for mode, folder in folders.items():
                os.makedirs(folder, mode=0o700)
                tokens[mode] = pb.write_account(folder)
            upstream_port = processes.start_upstream(top)
            ports = {mode: processes.start_subrouter(mode, folders[mode], upstream_port,
                                                     logs[mode], extra[mode])
                     for mode in (OFF, ON)}
            pids = {mode: processes.proxies[mode].pid for mode in (OFF, ON)}
            progress.write(f"upstream on {pb.HOST}:{upstream_port}; Subrouter off on "
                           f"{pb.HOST}:{ports[OFF]}, on (transcripts in {transcripts}) on "
                           f"{pb.HOST}:{ports[ON]}\n")
            bench = TranscriptBench(plan, ports, tokens, pids, progress)
            results = asyncio.run(bench.run())
            exited = {NAMES[m]: p.poll() for m, p in processes.proxies.items()}
            if exited[NAMES[ON]] is None:
                wait_still(transcripts, DRAIN_TIMEOUT)
                try:
                    status, listing = get_json(ports[ON], "/_subrouter/transcripts?limit=1000")
                    if status == 200 and isinstance(listing, dict):
                        transcript_info["dropped_events"] = listing.get("dropped_events")
                        transcript_info["sessions"] = listing.get("total")
                    else:
                        transcript_info["error"] = f"status {status}: {listing}"
                except OSError as e:
                    transcript_info["error"] = str(e)
            with contextlib.suppress(OSError):
                transcript_info["off_status"] = get_json(ports[OFF],
                                                         "/_subrouter/transcripts")[0]
            # SIGTERM: the recorder drains its queue before the daemon exits
            processes.stop_proxies()
            size, files = folder_size(transcripts)
            transcript_info.update(bytes=size, files=files)
        except KeyboardInterrupt:
            progress.write("interrupted\n")
            return 130
        except pb.BenchError as e:
            progress.write(f"transcript_bench: {e}\n")
            return 1
        finally:
            processes.stop()
        report = build_report(results, bench.cpu)
        report["logs"] = {NAMES[m]: pb.summarize_log(path) for m, path in logs.items()}
        transcript_info["recorded_requests"] = recorded_requests(report["logs"]["on"])
        report["transcripts"] = transcript_info
        report["exited_during_run"] = exited
    report["machine"] = info
    report["plan"] = {"rounds": plan.rounds, "small_slices": plan.small_slices,
                      "small_slice_seconds": plan.small_slice_seconds,
                      "events": pb.EVENTS, "event_interval_ms": pb.EVENT_INTERVAL * 1000,
                      "body_bytes": pb.BODY_SIZE, "small_lanes": pb.SMALL_LANES}
    report["seconds"] = round(time.monotonic() - started, 1)
    stdout.write(render(report, pb.machine_line(info)) + "\n")
    stdout.flush()
    progress.write(f"done in {report['seconds']:.0f} s\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(pb._finite(report), f, indent=2)
            f.write("\n")
    broke = any(status is not None for status in exited.values())
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
