"""
A real ``redis-server`` (Debian's package) for tests: started on a free
loopback port in a temporary folder with persistence off, stoppable and
restartable on the same port mid-test.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_binary() -> str:
    from tests.support.debian import ensure

    found = ensure("redis-server", ["redis-server"])
    if found is None:
        raise RuntimeError(
            "redis-server is not installed and apt-get could not install it: "
            "`sudo apt-get install redis-server`"
        )
    return found


class RedisServer:
    """
    :ivar port: the loopback port it listens on.
    :ivar url: ``redis://127.0.0.1:<port>/0``.
    """

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.password = password
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command("PING") in ("PONG", "NOAUTH"):
                    return
            except OSError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server did not start: {log}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def command(self, *args: str) -> str:
        """
        Run one command over a plain socket and return the first reply line
        (blocking; for test set-up and checks).
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            out = b""
            if self.password:
                out += _encode(["AUTH", self.password])
            out += _encode(list(args))
            s.sendall(out)
            replies = 2 if self.password else 1
            data = b""
            while data.count(b"\r\n") < replies:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        line = data.split(b"\r\n")[replies - 1].decode()
        if line.startswith("-NOAUTH"):
            return "NOAUTH"
        return line.lstrip("+:-$*")


def _encode(args: list[str]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)
