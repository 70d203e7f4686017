"""
What every Subrouter benchmark shares: starting and stopping the fake
upstream and the daemons, the account they serve, free ports and private
temporary folders, reading a process's CPU time, percentiles, interleaving
the two paths being compared, and the report (comparison rows and tables,
machine line, JSON).

A benchmark keeps only what it measures: its workload (the fake upstream's
protocol and the client) and its own report lines. Everything here runs on
127.0.0.1 and in temporary folders: nothing a benchmark starts reads or writes
this machine's Codex, OpenCode or pi files, and nothing outlives the run (the
children die with the benchmark, Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import IO, Any

HOST = "127.0.0.1"
#: the Codex upstream's path prefix, which the fake upstreams accept or not
CODEX_PREFIX = "/backend-api/codex"

EMAIL = "bench@example.com"
CHATGPT_ACCOUNT_ID = "acct-bench"

#: a starting process gets this long to be ready
STARTUP_TIMEOUT = 30.0
#: a pause between rounds, so one path's leftover work does not land in the other's round
SETTLE = 0.01
#: a fake upstream exits by itself after this long, should everything else fail
UPSTREAM_LIFETIME = 1800.0
#: the longest HTTP head either end of a benchmark accepts
MAX_HEAD = 64 * 1024


class BenchError(Exception):
    """
    The benchmark cannot go on; the message says why.
    """


# -- numbers -------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """
    The ``q``-th percentile, interpolating between the closest ranks; NaN
    without values.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def stats(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | int]:
    """
    p50 and p99 of ``values`` times ``scale`` (seconds to ms by default), and the count.
    """
    return {"p50": percentile(values, 50) * scale, "p99": percentile(values, 99) * scale,
            "n": len(values)}


def interleaved(modes: Sequence[str], number: int) -> Sequence[str]:
    """
    The order in which round ``number`` runs the compared paths: rotated by
    one every round, so machine noise falls on all alike and each path runs
    in every place equally often. (For two paths that is swapping them. For
    three, reversing them every round would run the two outer ones twice in
    a row, with warm caches, and the middle one never.)
    """
    shift = number % len(modes) if modes else 0
    return [*modes[shift:], *modes[:shift]]


def process_cpu_seconds(pid: int) -> float | None:
    """
    The user+system CPU time a process has used so far, from /proc (Linux).
    """
    split = process_cpu_split(pid)
    return None if split is None else split[0] + split[1]


def process_cpu_split(pid: int) -> tuple[float, float] | None:
    """
    The CPU time a process has used so far in user space and in the kernel
    (its system calls, and the loopback's TCP work done on their behalf),
    in seconds, from /proc (Linux).
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def describe_error(error: BaseException) -> str:
    """
    One line naming a failure, for the PROBLEMS counters.
    """
    text = str(error) or type(error).__name__
    return f"{type(error).__name__}: {text}"[:240]


# -- the account a daemon serves -----------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def fake_jwt(claims: dict[str, Any]) -> str:
    """
    An unsigned JWT carrying ``claims``: Subrouter only decodes the payload.
    """
    header = _b64url(b'{"alg":"none","typ":"JWT"}')
    return f"{header}.{_b64url(json.dumps(claims).encode())}.{_b64url(b'sig')}"


def write_account(accounts_dir: str) -> str:
    """
    Write one ChatGPT login, valid for 30 days (so no refresh happens during
    a run), into a ``cx`` store.

    :return: its access token.
    """
    access = fake_jwt({"exp": int(time.time()) + 30 * 86400})
    document = {
        "email": EMAIL,
        "addedAt": "2026-01-01T00:00:00Z",
        "auth": {
            "auth_mode": "chatgpt",
            "tokens": {
                "access_token": access,
                "refresh_token": "rt-bench",
                "id_token": fake_jwt({"email": EMAIL}),
                "account_id": CHATGPT_ACCOUNT_ID,
            },
            "last_refresh": "2026-01-01T00:00:00Z",
        },
    }
    folder = os.path.join(accounts_dir, "accounts")
    os.makedirs(folder, mode=0o700)
    fd = os.open(os.path.join(folder, EMAIL + ".json"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(document, indent=2) + "\n")
    return access


# -- the processes -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    """
    In the child before exec: get SIGTERM if the benchmark dies (Linux), so a
    killed benchmark leaves no daemon behind.
    """
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def twistd_command() -> list[str]:
    """
    How to run a twistd plugin in the foreground from this virtualenv.
    ``SUBROUTER_BENCH_PROFILE=FILE`` runs it under cProfile, stats saved to FILE.
    """
    profile = os.environ.get("SUBROUTER_BENCH_PROFILE")
    extra = [f"--profile={profile}", "--profiler=cprofile", "--savestats"] if profile else []
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(twistd):
        return [twistd, "-n", "--pidfile=", *extra]
    found = shutil.which("twistd")
    if found:
        return [found, "-n", "--pidfile=", *extra]
    # `twist` runs the same plugins, in the foreground, logging to stdout
    return [sys.executable, "-m", "twisted"]


def tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"(cannot read {path}: {e})"


def get_json(port: int, path: str) -> tuple[int, Any]:
    """
    ``GET path`` on a daemon: the status and the JSON body (or the start of
    the body, if it is not JSON).
    """
    # http.client, unlike urllib, never goes through an environment proxy
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
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


def private_environment(folder: str) -> dict[str, str]:
    """
    This environment with every place an agent keeps its login (Codex,
    OpenCode, pi, and the home they default to) moved into ``folder``: what
    the options forget, the daemon still cannot find on this machine.
    """
    return {
        **os.environ,
        "HOME": folder,
        "CODEX_HOME": os.path.join(folder, "codex-home"),
        "XDG_DATA_HOME": os.path.join(folder, "xdg-data"),
        "PI_CODING_AGENT_DIR": os.path.join(folder, "pi-agent"),
    }


class Processes:
    """
    A benchmark's fake upstream and Subrouter daemons, stopped however the run ends.

    :ivar upstream: the fake upstream process, once started.
    :ivar daemons: the Subrouter processes, by name.
    """

    def __init__(self) -> None:
        self.upstream: subprocess.Popen[bytes] | None = None
        self.daemons: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def start_upstream(self, folder: str, script: str, *args: str) -> int:
        """
        Run ``script --upstream-server *args`` (see :func:`serve_upstream`)
        and wait for the port it prints.
        """
        self.upstream, port = self._start_script(folder, "upstream", script,
                                                 "--upstream-server", *args)
        return port

    def start_relay(self, name: str, folder: str, script: str, *args: str) -> int:
        """
        Run a reference relay (``script *args``, which prints its port once it
        listens) in the place of a Subrouter daemon: it is stopped with them,
        and its CPU time is read the same way.
        """
        self.daemons[name], port = self._start_script(folder, name, script, *args)
        return port

    def _start_script(self, folder: str, name: str, script: str,
                      *args: str) -> tuple[subprocess.Popen[bytes], int]:
        errors = open(os.path.join(folder, f"{name}.log"), "wb")
        self._files.append(errors)
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(script), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, cwd=folder,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        stdout = process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], STARTUP_TIMEOUT)
        line = stdout.readline() if ready else b""
        if not line.strip().isdigit():
            process.kill()
            process.wait()
            raise BenchError(f"{name} did not start: {tail(errors.name)}")
        return process, int(line)

    def start_daemon(self, name: str, folder: str, upstream_port: int, log_path: str,
                     extra: Sequence[str] = (), source: str | None = None) -> int:
        """
        Start ``twistd -n subrouter`` serving the account in ``folder`` in
        front of the upstream, and wait until it answers its health check.

        :param name: what to call it (the key in :attr:`daemons`).
        :param folder: its private folder: the ``cx`` store, state and Codex
            home all live there.
        :param log_path: where its log goes.
        :param extra: more options.
        :param source: run Subrouter from this source tree (its ``subrouter``
            package first on ``PYTHONPATH``) instead of the installed one.
        :return: its port.
        """
        port = free_port()
        log = open(log_path, "wb")
        self._files.append(log)
        upstream = f"http://{HOST}:{upstream_port}"
        command = [
            *twistd_command(), "subrouter",
            "--addr", f"{HOST}:{port}",
            "--accounts-dir", folder,
            "--codex-upstream", upstream + CODEX_PREFIX,
            "--openai-upstream", upstream,
            # refreshes never happen here, but never touch ~/.codex either
            "--codex-home", os.path.join(folder, "codex-home"),
            # everything stays on loopback and in the temporary folder
            "--token-url", upstream + "/oauth/token",
            "--usage-url", upstream + "/backend-api/wham/usage",
            "--state-dir", os.path.join(folder, "state"),
            # never touch this machine's OpenCode or pi files
            "--cx-switch-interval", "0",
            *extra,
        ]
        env = private_environment(folder)
        if source is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                [source, *filter(None, [env.get("PYTHONPATH")])])
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
            env=env, start_new_session=True, preexec_fn=die_with_parent,
        )
        self.daemons[name] = process
        self._wait_healthy(process, port, log_path)
        return port

    @staticmethod
    def _wait_healthy(process: subprocess.Popen[bytes], port: int, log_path: str) -> None:
        end = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < end:
            if process.poll() is not None:
                raise BenchError(
                    f"Subrouter exited with status {process.returncode} while starting:\n"
                    + tail(log_path)
                )
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            try:
                conn.request("GET", "/_subrouter/health")
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.05)
        raise BenchError(f"Subrouter did not become healthy in {STARTUP_TIMEOUT:g}s:\n"
                         + tail(log_path))

    def exited(self) -> dict[str, int | None]:
        """
        Each daemon's exit status, ``None`` for those still running.
        """
        return {name: process.poll() for name, process in self.daemons.items()}

    def stop_daemons(self) -> None:
        """
        Stop the daemons (SIGTERM, so they finish what they were writing),
        leaving the upstream.
        """
        daemons = list(self.daemons.values())
        self.daemons.clear()
        for process in daemons:
            if process.poll() is None:
                process.terminate()
        for process in daemons:
            _reap(process)
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()

    def stop(self) -> None:
        self.stop_daemons()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            if upstream.stdin is not None:
                # the upstream's signal to finish (see serve_upstream)
                with contextlib.suppress(OSError):
                    upstream.stdin.close()
            if upstream.poll() is None:
                upstream.terminate()
                _reap(upstream)
            if upstream.stdout is not None:
                upstream.stdout.close()
        for f in self._files:
            f.close()
        self._files.clear()


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# -- a fake upstream's process -------------------------------------------------------------


async def serve_upstream(factory: Callable[[], asyncio.Protocol],
                         on_stop: Callable[[], None] | None = None) -> None:
    """
    Serve ``factory``'s protocol on a free port of 127.0.0.1, print the port
    on stdout, and serve until stdin closes (the benchmark holds it open, so
    EOF means it has gone), SIGTERM, or :data:`UPSTREAM_LIFETIME`.

    :param on_stop: called once the server has closed.
    """
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, HOST, 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    stop: asyncio.Future[None] = loop.create_future()

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    def stdin_readable() -> None:
        try:
            data = os.read(0, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(0)
            finish()

    loop.add_reader(0, stdin_readable)
    loop.add_signal_handler(signal.SIGTERM, finish)
    loop.call_later(UPSTREAM_LIFETIME, finish)
    try:
        await stop
    finally:
        server.close()
        if on_stop is not None:
            on_stop()


def run_upstream(serve: Callable[[], Any]) -> int:
    """
    The fake upstream process's main: run the ``serve`` coroutine function.
    """
    # the benchmark process owns shutdown; Ctrl-C in its terminal is for it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(serve())
    return 0


# -- the run -------------------------------------------------------------------------------


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def exit_on_sigterm() -> None:
    """
    Make SIGTERM end the benchmark as Ctrl-C does: through its ``finally``
    clauses, which stop the processes and remove the temporary folders.
    """
    signal.signal(signal.SIGTERM, _terminated)


def private_folder(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """
    A temporary folder (0700) for a run's stores, logs and daemons' homes,
    removed when the run ends.
    """
    return tempfile.TemporaryDirectory(prefix=prefix)


def finite(value: Any) -> Any:
    """
    ``value`` with NaN (a figure without samples) as null, for strict JSON.
    """
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def write_json(path: str, report: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(finite(report), f, indent=2)
        f.write("\n")


# -- the report ----------------------------------------------------------------------------


def ms(value: float, signed: bool = False, digits: int = 2) -> str:
    """
    A time in ms for a table cell; ``n/a`` for NaN (no samples).
    """
    if value != value:
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def comparison_row(name: str, keys: tuple[str, str], first: Sequence[float],
                   second: Sequence[float]) -> dict[str, Any]:
    """
    One row comparing two paths' samples (in seconds): p50/p99 in ms of
    each, under ``keys``, and ``added`` (second minus first, percentile by
    percentile).
    """
    a, b = stats(first), stats(second)
    return {"scenario": name, keys[0]: a, keys[1]: b,
            "added": {key: b[key] - a[key] for key in ("p50", "p99")}}


def comparison_table(rows: Sequence[dict[str, Any]], keys: tuple[str, str],
                     verdict: str | None = None, digits: int = 2) -> list[str]:
    """
    :func:`comparison_row` rows as a Markdown table.

    :param keys: the two paths' keys, also their column names.
    :param verdict: the key of a last column (e.g. a PASS/MISS), if any.
    :param digits: decimals of the times.
    """
    first, second = keys
    head = (f"| scenario | {first} p50 | {first} p99 | {second} p50 | {second} p99 "
            f"| added p50 | added p99 | samples ({first}/{second}) |")
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if verdict is not None:
        head += f" {verdict} |"
        rule += "---|"
    out = [head, rule]
    for row in rows:
        a, b, d = row[first], row[second], row["added"]
        line = (
            f"| {row['scenario']} | {ms(a['p50'], digits=digits)} | {ms(a['p99'], digits=digits)} "
            f"| {ms(b['p50'], digits=digits)} | {ms(b['p99'], digits=digits)} "
            f"| {ms(d['p50'], True, digits)} | {ms(d['p99'], True, digits)} "
            f"| {a['n']}/{b['n']} |"
        )
        if verdict is not None:
            line += f" {row[verdict] or ''} |"
        out.append(line)
    return out


def problem_lines(problems: dict[str, dict[str, int]]) -> list[str]:
    """
    The PROBLEMS counters, one line per problem and place.
    """
    return [f"  {where}: x{count} {text}"
            for where, counts in problems.items() for text, count in counts.items()]


#: a log line at warning level or worse, or a traceback
BAD_LOG_LEVEL = re.compile(r"#(warn|error|critical)\]|Traceback|Unhandled")


def log_text(line: str) -> str:
    """
    A log line without its timestamp and source (which would make every line
    distinct), for counting.
    """
    return line.split("] ", 1)[-1].strip()[:200]


def machine_info(packages: Sequence[str] = ("twisted", "treq")) -> dict[str, Any]:
    """
    The machine and versions a run's figures belong to.

    :param packages: the distributions whose versions matter, besides subrouter.
    """
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }
    for name in packages:
        info[name] = version(name)
    info["subrouter"] = version("subrouter")
    info["loadavg"] = os.getloadavg()
    return info


def machine_line(info: dict[str, Any], versions: str) -> str:
    """
    The first line of a report: the machine, ``versions`` (how the bench
    names the packages it depends on) and the load at the start.
    """
    return (
        f"machine: nproc {info['nproc']}, {info['implementation']} {info['python']}, "
        f"{info['platform']}; {versions}; load average at start {info['loadavg'][0]:.2f}"
    )
