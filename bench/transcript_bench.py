#!/usr/bin/env python3
"""
What recording transcripts (``--transcripts DIR``) costs on Subrouter's
streaming hot path, on loopback, in one run.

What is measured
----------------
The run starts, all on 127.0.0.1, the fake Responses upstream of ``streams.py``
(the workload ``proxy_bench`` measures too)
(20 SSE deltas 5 ms apart, each stamped with ``time.monotonic()``, and a small
JSON answer on ``.../small``) and TWO Subrouter daemons (``twistd -n
subrouter``, each in its own temporary folder with one ChatGPT login that does
not expire during the run) in front of that same upstream:

- "off": no ``--transcripts``;
- "on": ``--transcripts <tmpdir>/transcripts``, so every exchange (request and
  response bodies, base64 JSON lines) is queued for the recorder's writer
  thread.

The client is ``streams.py``'s: raw HTTP/1.1 over asyncio, one keep-alive
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
import os
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

import streams
from harness import (
    CHATGPT_ACCOUNT_ID,
    HOST,
    BenchError,
    Processes,
    comparison_row,
    comparison_table,
    exit_on_sigterm,
    get_json,
    machine_info,
    machine_line,
    private_folder,
    problem_lines,
    write_account,
    write_json,
)
from streams import SMALL_LANES, Bench, Plan, Results, Target, streams_label

OFF = "off"  # the daemon without --transcripts
ON = "on"  # the daemon recording transcripts
MODES = (OFF, ON)

AIM_P50_MS = 0.3
AIM = f"aim: at most {AIM_P50_MS:g} ms added at p50 with transcripts on (latency rows)"
#: how long to wait for the recorder's folder to stop growing before asking for its numbers
DRAIN_TIMEOUT = 5.0

FULL = Plan(rounds={1: 150, 8: 110}, small_slices=6, small_slice_seconds=1.0,
            warmup_rounds=3, deadline=150.0)
QUICK = Plan(rounds={1: 20, 8: 12}, small_slices=2, small_slice_seconds=0.5,
             warmup_rounds=1, deadline=150.0)


# -- the transcript folder ------------------------------------------------------------------


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


# -- the report ---------------------------------------------------------------------------


def build_report(results: Results) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []

    def add_row(name: str, off: Sequence[float], on: Sequence[float]) -> None:
        row = comparison_row(name, MODES, off, on)
        p50 = row["added"]["p50"]
        row["aim"] = None if p50 != p50 else ("PASS" if p50 <= AIM_P50_MS else "MISS")
        rows.append(row)

    for n, samples in sorted(results.streams.items()):
        add_row(f"TTFB, {streams_label(n)}", samples[OFF].ttfb, samples[ON].ttfb)
    for n, samples in sorted(results.streams.items()):
        add_row(f"per-event latency, {streams_label(n)}", samples[OFF].events,
                samples[ON].events)
    if results.small:
        add_row(f"small request latency, {SMALL_LANES} lanes",
                results.small[OFF].latencies, results.small[ON].latencies)
    return {
        "rows": rows,
        "small_requests_per_second": streams.requests_per_second(results),
        "requests": {streams_label(n): {m: s.requests for m, s in v.items()}
                     for n, v in sorted(results.streams.items())},
        "cpu_ms_per_request": {m: {k: v * 1000 for k, v in by.items()}
                               for m, by in results.cpu.items()},
        "problems": streams.problems_by_place(results, {m: m for m in MODES}),
        "connections_opened": results.connects,
        "cut_short": results.cut_short,
    }


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def render(report: dict[str, Any], machine: str) -> str:
    out = [machine, AIM, "", *comparison_table(report["rows"], MODES, verdict="aim")]
    rps = report["small_requests_per_second"]
    if rps:
        off, on = rps["off"], rps["on"]
        change = f"{(on / off - 1) * 100:+.1f} %" if off else "n/a"
        out.append(f"| small requests/s, {SMALL_LANES} lanes | {off:.0f} req/s | "
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
        out += problem_lines(report["problems"])
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


def transcripts_listing(port: int) -> dict[str, Any]:
    """
    What the recording daemon's ``GET /_subrouter/transcripts`` says about
    the sessions it kept and the events it dropped.
    """
    try:
        status, listing = get_json(port, "/_subrouter/transcripts?limit=1000")
    except OSError as e:
        return {"error": str(e)}
    if status == 200 and isinstance(listing, dict):
        return {"dropped_events": listing.get("dropped_events"),
                "sessions": listing.get("total")}
    return {"error": f"status {status}: {listing}"}


def main(argv: Sequence[str] | None = None, stdout: IO[str] = sys.stdout,
         progress: IO[str] = sys.stderr) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    plan = QUICK if args.quick else FULL
    info = machine_info(("twisted", "treq"))
    processes = Processes()
    started = time.monotonic()
    with private_folder("subrouter-transcript-bench-") as top:
        folders = {mode: os.path.join(top, mode) for mode in MODES}
        logs = {mode: os.path.join(top, f"subrouter-{mode}.log") for mode in MODES}
        transcripts = os.path.join(top, "transcripts")
        extra = {OFF: [], ON: ["--transcripts", transcripts]}
        transcript_info: dict[str, Any] = {}
        exited: dict[str, int | None] = {}
        try:
            tokens: dict[str, str] = {}
            for mode, folder in folders.items():
                os.makedirs(folder, mode=0o700)
                tokens[mode] = write_account(folder)
            upstream_port = processes.start_upstream(top, streams.__file__)
            ports = {mode: processes.start_daemon(mode, folders[mode], upstream_port,
                                                  logs[mode], extra[mode])
                     for mode in MODES}
            progress.write(f"upstream on {HOST}:{upstream_port}; Subrouter off on "
                           f"{HOST}:{ports[OFF]}, on (transcripts in {transcripts}) on "
                           f"{HOST}:{ports[ON]}\n")
            targets = {
                mode: Target(ports[mode], streams.PROXIED_STREAM_PATH,
                             streams.PROXIED_SMALL_PATH, token=tokens[mode],
                             account=CHATGPT_ACCOUNT_ID, pid=processes.daemons[mode].pid)
                for mode in MODES
            }
            results = asyncio.run(Bench(plan, targets, progress).run())
            exited = processes.exited()
            if exited[ON] is None:
                wait_still(transcripts, DRAIN_TIMEOUT)
                transcript_info.update(transcripts_listing(ports[ON]))
            with contextlib.suppress(OSError):
                transcript_info["off_status"] = get_json(ports[OFF],
                                                         "/_subrouter/transcripts")[0]
            # SIGTERM: the recorder drains its queue before the daemon exits
            processes.stop_daemons()
            size, files = folder_size(transcripts)
            transcript_info.update(bytes=size, files=files)
        except KeyboardInterrupt:
            progress.write("interrupted\n")
            return 130
        except BenchError as e:
            progress.write(f"transcript_bench: {e}\n")
            return 1
        finally:
            processes.stop()
        report = build_report(results)
        report["logs"] = {mode: streams.summarize_log(path) for mode, path in logs.items()}
        transcript_info["recorded_requests"] = recorded_requests(report["logs"][ON])
        report["transcripts"] = transcript_info
        report["exited_during_run"] = exited
    report["machine"] = info
    report["plan"] = {"rounds": plan.rounds, "small_slices": plan.small_slices,
                      "small_slice_seconds": plan.small_slice_seconds,
                      "events": streams.EVENTS,
                      "event_interval_ms": streams.EVENT_INTERVAL * 1000,
                      "body_bytes": streams.BODY_SIZE, "small_lanes": SMALL_LANES}
    report["seconds"] = round(time.monotonic() - started, 1)
    stdout.write(render(report, machine_line(
        info, f"Twisted {info['twisted']}, treq {info['treq']}, subrouter {info['subrouter']}"
    )) + "\n")
    stdout.flush()
    progress.write(f"done in {report['seconds']:.0f} s\n")
    if args.json:
        write_json(args.json, report)
    broke = any(status is not None for status in exited.values())
    return 1 if broke else 0


if __name__ == "__main__":
    sys.exit(main())
