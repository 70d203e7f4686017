"""
Run the console scripts (``cx``, ``subrouter``, ``sr``) as a user does: as
processes, through their real entry points, with pipes or with a terminal
(a pty) where terminal behaviour matters (colour, hidden input, Ctrl-C).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import attrs

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    """
    The installed console script ``name`` of this virtualenv.
    """
    return str(BIN / name)


def home_env(home: Path, **extra: str) -> dict[str, str]:
    """
    An environment whose every agent file lives under ``home``, without
    colour variables from the caller.
    """
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "CX_NO_COLOR", "FORCE_COLOR", "SUBROUTER_URL",
                        "SUBROUTER_CODEX_BASE_URL")}
    env.update(HOME=str(home), CODEX_HOME=str(home / ".codex"),
               XDG_DATA_HOME=str(home / ".local" / "share"),
               XDG_CONFIG_HOME=str(home / ".config"),
               XDG_CACHE_HOME=os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"),
               PI_CODING_AGENT_DIR=str(home / ".pi" / "agent"),
               # nothing listens here: no test talks to a daemon it did not start
               SUBROUTER_URL="http://127.0.0.1:9")
    env.update(extra)
    return env


def run(program: str, *args: str, env: Mapping[str, str], stdin: str = "",
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """
    Run a console script with pipes; blocking (not for tests that also run
    fake servers on the reactor).
    """
    return subprocess.run([script(program), *args], input=stdin, env=dict(env),
                          capture_output=True, text=True, timeout=timeout, check=False)


@attrs.define
class Terminal:
    """
    A console script on a pty: what it printed, and how it ended.
    """

    pid: int
    fd: int
    output: bytes = b""
    status: int | None = None

    def read_until(self, text: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"never saw {text!r}; output so far: {self.output!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"ended before {text!r}: {self.output!r}")
                self.output += chunk
        return self.output

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def interrupt(self) -> None:
        """
        Ctrl-C, as the terminal sends it: SIGINT to the foreground process.
        """
        os.kill(self.pid, signal.SIGINT)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
                if ready:
                    chunk = os.read(self.fd, 65536)
                    self.output += chunk
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                try:
                    while chunk := os.read(self.fd, 65536):
                        self.output += chunk
                except OSError:
                    pass
                os.close(self.fd)
                return self.status
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError(f"still running; output so far: {self.output!r}")


def on_terminal(program: str, *args: str, env: Mapping[str, str]) -> Terminal:
    """
    Start a console script with a pty as its stdin, stdout and stderr.
    """
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child
        try:
            os.execve(script(program), [script(program), *args], dict(env))
        finally:
            os._exit(127)
    return Terminal(pid, fd)
