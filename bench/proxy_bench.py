#!/usr/bin/env python3
"""
A loopback benchmark of Subrouter's streaming hot path, against a direct
connection to the same upstream, in one run.

What is measured
----------------
The run starts two subprocesses on 127.0.0.1: a fake Responses upstream
(``streams.py``, an asyncio HTTP/1.1 keep-alive server), and Subrouter itself
(``twistd -n subrouter``, logging one line per request to a file, as it does in
production) with one ChatGPT login whose token does not expire during the run,
so no refresh happens. The benchmark process is the client: raw HTTP/1.1 over
asyncio, one persistent connection per concurrent stream ("lane"), sending
requests shaped like Codex's (a ~60 KB JSON body, ``Authorization``,
``originator: codex_cli_rs``, ``session-id``, ``OpenAI-Beta``) either straight
to the upstream (``POST /backend-api/codex/responses``) or through Subrouter
(``POST /v1/responses``, which it routes to that same upstream path). The
upstream, the client and the rounds are ``streams.py``'s; starting and
stopping the processes and the report tables are ``harness.py``'s.

The upstream answers with 20 SSE ``response.output_text.delta`` events 5 ms
apart, chunked, each stamped with the upstream's ``time.monotonic()`` at send,
then ``data: [DONE]``. For each request the client records

- TTFB: from starting to write the request until the status line and headers
  are fully received;
- per-event latency: the client's ``time.monotonic()`` when an event arrives
  minus the upstream's stamp (CLOCK_MONOTONIC is system-wide on Linux, so the
  two processes' clocks agree).

Scenarios run 1, 8 and 32 concurrent streams in rounds: in a round every lane
starts one request at the same instant. Direct and proxied rounds alternate,
swapping which goes first each round, so machine noise falls on both alike;
both paths are warmed up first (connection pools full). A last scenario
hammers a small non-streaming ``GET .../small`` from 8 lanes for a fixed time,
in alternating direct and proxied slices, and reports requests per second.

"added" is the proxied percentile minus the direct percentile. Every response
is checked (status, framing, all 20 events in order, ``[DONE]``, and the
upstream's echo of the body's length and CRC and of the credentials and
session it saw); anything wrong is counted and printed, as are the proxy's
warnings and its CPU time per proxied request.

Running it
----------
From the repository root, in the project's virtualenv::

    python bench/proxy_bench.py                  # the full run, about 70 s on 2 cores
    python bench/proxy_bench.py --quick          # a smoke run, about 10 s
    python bench/proxy_bench.py --json out.json  # also write the numbers as JSON
    python bench/proxy_bench.py --against floor+loop  # the reference relay instead
    python bench/proxy_bench.py --baseline ../before  # and a Subrouter from another checkout

``--against floor`` (or ``floor+loop``) puts ``floor_relay.py`` in Subrouter's
place: the least a relay on Twisted does, on plain Twisted (or on Subrouter's
loop and writes), so a run shows what Subrouter's own work adds to it.

``--baseline DIR`` also starts Subrouter from the source tree ``DIR`` (a
checkout or ``git worktree`` of an earlier commit) and runs its rounds
interleaved with the other two: a change's before and after measured in one
run, under the same noise. A separate table gives both added figures side by
side; run to run, this machine's noise moves them more than most single
changes do.

It prints a Markdown table on stdout (progress goes to stderr) and exits 0
unless something crashed: the targets are marked PASS/MISS for information
only. No traffic leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
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
    machine_info,
    machine_line,
    percentile,
    private_folder,
    problem_lines,
    write_account,
    write_json,
)
from streams import SMALL_LANES, Bench, Plan, Results, Target, streams_label

DIRECT = "direct"
PROXIED = "proxied"
MODES = (DIRECT, PROXIED)
#: the second Subrouter, from another source tree (--baseline)
BASELINE = "baseline"
#: what the proxied path can go through
SUBROUTER = "subrouter"
FLOOR = "floor"
FLOOR_LOOP = "floor+loop"
FLOOR_RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor_relay.py")

#: targets, informational: (scenario, added p50 limit, added p99 limit), in ms. Issue
#: 13's are the added TTFB at 8 and 32 streams; the per-event p99 is this bench's own,
#: from when it was first written
TARGETS: dict[str, tuple[float | None, float | None]] = {
    "TTFB, 8 streams": (1.5, None),
    "TTFB, 32 streams": (5.0, None),
    "per-event latency, 8 streams": (None, 0.5),
}
AIM = (
    "aim: added TTFB p50 <= 1.5 ms at 8 streams and <= 5 ms at 32 (issue 13); "
    "per-event added p99 <= 0.5 ms at 8 streams (this bench's own)"
)

FULL = Plan(rounds={1: 120, 8: 80, 32: 40}, small_slices=5, small_slice_seconds=1.0,
            warmup_rounds=3, deadline=240.0)
QUICK = Plan(rounds={1: 12, 8: 6, 32: 3}, small_slices=2, small_slice_seconds=0.5,
             warmup_rounds=1, deadline=240.0)


# -- the report -----------------------------------------------------------------------------


def _verdict(name: str, added: dict[str, float]) -> str | None:
    limits = TARGETS.get(name)
    if limits is None:
        return None
    for key, limit in zip(("p50", "p99"), limits, strict=True):
        if limit is not None and not added[key] <= limit:
            return "MISS"
    return "PASS"


def build_report(results: Results) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []

    def add_row(name: str, direct: Sequence[float], proxied: Sequence[float]) -> None:
        row = comparison_row(name, MODES, direct, proxied)
        row["target"] = _verdict(name, row["added"])
        rows.append(row)

    for n, samples in sorted(results.streams.items()):
        add_row(f"TTFB, {streams_label(n)}", samples[DIRECT].ttfb, samples[PROXIED].ttfb)
    for n, samples in sorted(results.streams.items()):
        add_row(f"per-event latency, {streams_label(n)}", samples[DIRECT].events,
                samples[PROXIED].events)
    if results.small:
        add_row(f"small request latency, {SMALL_LANES} lanes",
                results.small[DIRECT].latencies, results.small[PROXIED].latencies)
    legs = [
        {
            "streams": n,
            "request_leg": {mode: percentile(samples[mode].request_leg, 50) * 1000
                            for mode in MODES},
            "response_leg": {mode: percentile(samples[mode].response_leg, 50) * 1000
                             for mode in MODES},
        }
        for n, samples in sorted(results.streams.items())
    ]
    places = [
        {
            "streams": n,
            **{place: {mode: percentile(getattr(samples[mode], f"{place}_events"), 99) * 1000
                       for mode in MODES}
               for place in ("first", "middle", "last")},
        }
        for n, samples in sorted(results.streams.items())
        if all(samples[mode].last_events for mode in MODES)
    ]
    report = {
        "rows": rows,
        "ttfb_legs_p50": legs,
        "event_p99_by_place": places,
        "small_requests_per_second": streams.requests_per_second(results),
        "requests": {streams_label(n): {m: s.requests for m, s in v.items()}
                     for n, v in sorted(results.streams.items())},
        "problems": streams.problems_by_place(results, {m: m for m in (*MODES, BASELINE)}),
        "proxy_cpu_ms_per_request": {k: v * 1000
                                     for k, v in results.cpu.get(PROXIED, {}).items()},
        "connections_opened": results.connects,
        "cut_short": results.cut_short,
    }
    if results.small.get(BASELINE) is not None or any(
        BASELINE in samples for samples in results.streams.values()
    ):
        report["baseline"] = _against_baseline(results)
    return report


def _against_baseline(results: Results) -> dict[str, Any]:
    """
    This tree's added figures and the baseline tree's, from the same run.
    """
    rows = []

    def add(name: str, pick: Any) -> None:
        now = comparison_row(name, MODES, pick(DIRECT), pick(PROXIED))["added"]
        before = comparison_row(name, MODES, pick(DIRECT), pick(BASELINE))["added"]
        rows.append({"scenario": name, "added": now, "baseline_added": before})

    for n, samples in sorted(results.streams.items()):
        add(f"TTFB, {streams_label(n)}", lambda mode, s=samples: s[mode].ttfb)
    for n, samples in sorted(results.streams.items()):
        add(f"per-event latency, {streams_label(n)}", lambda mode, s=samples: s[mode].events)
    if results.small:
        add(f"small request latency, {SMALL_LANES} lanes",
            lambda mode: results.small[mode].latencies)
    return {
        "rows": rows,
        "cpu_ms_per_request": {k: v * 1000 for k, v in results.cpu.get(BASELINE, {}).items()},
        "small_requests_per_second": streams.requests_per_second(results).get(BASELINE),
    }


def _ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"


def _section(intro: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """
    A paragraph, then a Markdown table (the first column left-aligned, the
    rest right-aligned), then a blank line.
    """
    return [intro, "", "| " + " | ".join(columns) + " |",
            "|" + "|".join(["---", *["---:"] * (len(columns) - 1)]) + "|",
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def render(report: dict[str, Any], machine: str) -> str:
    out = [machine, AIM]
    if report.get("against", SUBROUTER) != SUBROUTER:
        work = report.get("floor_work_us") or 0
        extra = f", {work:g} µs of CPU per request" if work else ""
        out.append(f"proxied = the floor relay (bench/floor_relay.py, {report['against']}"
                   f"{extra}), not Subrouter")
    out += ["", *comparison_table(report["rows"], MODES, verdict="target")]
    rps = report["small_requests_per_second"]
    if rps:
        direct, proxied = rps[DIRECT], rps[PROXIED]
        change = f"{(proxied / direct - 1) * 100:+.1f} %" if direct else "n/a"
        out.append(f"| small requests/s, {SMALL_LANES} lanes | {direct:.0f} req/s | "
                   f"| {proxied:.0f} req/s | | {change} | | | |")
    out.append("")
    out.append("times in ms; added = proxied minus direct, percentile by percentile")
    if report["ttfb_legs_p50"]:
        out.append("")
        out += _section(
            "where the TTFB goes (p50, ms): the request leg ends when the upstream has "
            "the whole request, by its clock; the response leg is the rest",
            ["streams", "request leg direct", "request leg proxied", "response leg direct",
             "response leg proxied"],
            [[str(leg["streams"]), *(_ms(leg[part][mode])
                                     for part in ("request_leg", "response_leg")
                                     for mode in MODES)]
             for leg in report["ttfb_legs_p50"]],
        )
    if report.get("event_p99_by_place"):
        out += _section(
            "where the per-event tail is (p99, ms, direct / proxied): an answer's first "
            "event, its last (which comes with the answer's end), and those between",
            ["streams", "first", "between", "last"],
            [[str(place["streams"]), *(f"{_ms(place[k][DIRECT])} / {_ms(place[k][PROXIED])}"
                                       for k in ("first", "middle", "last"))]
             for place in report["event_p99_by_place"]],
        )
    cpu = report["proxy_cpu_ms_per_request"]
    if cpu:
        out.append("proxy CPU per proxied request: "
                   + ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items()))
    baseline = report.get("baseline")
    if baseline:
        out.append("")
        out += _section(
            f"against the baseline ({report.get('baseline_source', '?')}), in the same run, "
            "rounds interleaved: added = each Subrouter minus direct (ms)",
            ["scenario", "added p50", "baseline added p50", "added p99", "baseline added p99"],
            [[row["scenario"], *(f"{row[which][q]:+.2f}" for q in ("p50", "p99")
                                 for which in ("added", "baseline_added"))]
             for row in baseline["rows"]],
        )[:-1]
        if baseline["cpu_ms_per_request"]:
            out.append("baseline CPU per proxied request: " + ", ".join(
                f"{k} {v:.2f} ms" for k, v in baseline["cpu_ms_per_request"].items()))
        if baseline["small_requests_per_second"]:
            out.append(f"baseline small requests/s: {baseline['small_requests_per_second']:.0f}")
        out.append("")
    out.append("client connections opened: "
               + ", ".join(f"{k} {v}" for k, v in report["connections_opened"].items()))
    log = report.get("proxy_log", {})
    if log:
        out.append(f"Subrouter log: {log.get('lines', 0)} lines; request outcomes "
                   f"{log.get('requests', {})}")
        for text, count in list(log.get("warnings", {}).items())[:10]:
            out.append(f"  log warning x{count}: {text}")
    if report.get("proxy_exited_during_run") is not None:
        out.append(f"SUBROUTER EXITED during the run, status {report['proxy_exited_during_run']}")
    for note in report["cut_short"]:
        out.append(f"cut short by the time limit: {note}")
    if report["problems"]:
        out.append("PROBLEMS (responses that were wrong or failed):")
        out += problem_lines(report["problems"])
    else:
        out.append("every response checked out (status, framing, events, [DONE], upstream echo)")
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare a direct connection to a fake upstream with the path through "
        "Subrouter, on loopback.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="fewer rounds: a smoke run of about 10 s")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    parser.add_argument("--log", metavar="FILE",
                        help="keep Subrouter's log here (default: a temporary file)")
    parser.add_argument("--against", choices=(SUBROUTER, FLOOR, FLOOR_LOOP), default=SUBROUTER,
                        help="what the proxied path goes through: Subrouter (the default), "
                        "or the floor: floor_relay.py, the least a relay on Twisted does "
                        "(rewrites the request head, passes bytes on), on plain Twisted or "
                        "(floor+loop) on Subrouter's loop, for reference")
    parser.add_argument("--floor-work-us", metavar="N", type=float, default=0.0,
                        help="with --against floor or floor+loop: the relay also spends N µs "
                        "of CPU on every request before sending it on, standing in for a "
                        "proxy's own work per request (what budget meets the aims)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run Subrouter from the source tree DIR (a checkout of "
                        "another commit), its rounds interleaved with the others: before "
                        "and after a change in one run")
    args = parser.parse_args(argv)
    if args.baseline is not None:
        if args.against != SUBROUTER:
            parser.error("--baseline goes with Subrouter, not with --against")
        if not os.path.isfile(os.path.join(args.baseline, "subrouter", "__init__.py")):
            parser.error(f"--baseline: no subrouter package in {args.baseline}")
        args.baseline = os.path.abspath(args.baseline)
    if args.floor_work_us and args.against == SUBROUTER:
        parser.error("--floor-work-us goes with --against floor or floor+loop")
    if args.floor_work_us < 0:
        parser.error("--floor-work-us must not be negative")
    return args


def main(argv: Sequence[str] | None = None, stdout: IO[str] = sys.stdout,
         progress: IO[str] = sys.stderr) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    plan = QUICK if args.quick else FULL
    info = machine_info(("twisted", "treq"))
    processes = Processes()
    started = time.monotonic()
    with private_folder("subrouter-bench-") as folder:
        log_path = os.path.abspath(args.log) if args.log else os.path.join(folder, "subrouter.log")
        try:
            access_token = write_account(folder)
            upstream_port = processes.start_upstream(folder, streams.__file__)
            if args.against != SUBROUTER:
                loop = ["--subrouter-loop"] if args.against == FLOOR_LOOP else []
                if args.floor_work_us:
                    loop += ["--work-us", f"{args.floor_work_us:g}"]
                proxy_port = processes.start_relay(
                    PROXIED, folder, FLOOR_RELAY, *loop, str(upstream_port), access_token,
                    CHATGPT_ACCOUNT_ID,
                )
                progress.write(f"upstream on {HOST}:{upstream_port}, the floor relay on "
                               f"{HOST}:{proxy_port}\n")
            else:
                proxy_port = processes.start_daemon(PROXIED, folder, upstream_port, log_path)
                progress.write(f"upstream on {HOST}:{upstream_port}, Subrouter on "
                               f"{HOST}:{proxy_port} (log: {log_path})\n")
            targets = {
                DIRECT: Target(upstream_port, streams.UPSTREAM_STREAM_PATH,
                               streams.UPSTREAM_SMALL_PATH, token="dummy", account="-"),
                PROXIED: Target(proxy_port, streams.PROXIED_STREAM_PATH,
                                streams.PROXIED_SMALL_PATH, token=access_token,
                                account=CHATGPT_ACCOUNT_ID,
                                pid=processes.daemons[PROXIED].pid),
            }
            if args.baseline:
                before = os.path.join(folder, BASELINE)
                os.makedirs(before)
                token = write_account(before)
                port = processes.start_daemon(BASELINE, before, upstream_port,
                                              os.path.join(before, "subrouter.log"),
                                              source=args.baseline)
                progress.write(f"the baseline ({args.baseline}) on {HOST}:{port}\n")
                targets[BASELINE] = Target(port, streams.PROXIED_STREAM_PATH,
                                           streams.PROXIED_SMALL_PATH, token=token,
                                           account=CHATGPT_ACCOUNT_ID,
                                           pid=processes.daemons[BASELINE].pid)
            results = asyncio.run(Bench(plan, targets, progress).run())
            proxy_status = processes.exited()[PROXIED]
        except KeyboardInterrupt:
            progress.write("interrupted\n")
            return 130
        except BenchError as e:
            progress.write(f"proxy_bench: {e}\n")
            return 1
        finally:
            processes.stop()
        report = build_report(results)
        report["against"] = args.against
        if args.baseline:
            report["baseline_source"] = args.baseline
        report["floor_work_us"] = args.floor_work_us
        if args.against == SUBROUTER:
            report["proxy_log"] = streams.summarize_log(log_path)
        report["proxy_exited_during_run"] = proxy_status
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
