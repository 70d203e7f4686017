# -*- test-case-name: tests.test_gcs_sync -*-
"""
Mirroring the transcript folder to Google Cloud Storage with ``gsutil``.

A TimerService runs ``gsutil -m rsync -r <dir> <gs://bucket/prefix/>`` at
start and every ``--transcript-sync-interval``. Runs never overlap (the timer
waits for the previous one), each is bounded by ``--transcript-sync-timeout``
(TERM, then KILL), the daemon's environment is inherited (gsutil needs HOME,
PATH, BOTO_CONFIG, ...), stderr is logged line by line, and a failure is
logged and tried again on the next tick. Recording never waits for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()

KILL_GRACE = 5.0


def normalise_gcs_uri(value: str) -> str:
    """
    ``gs://bucket/prefix`` with a trailing slash.

    :raises ValueError: when it is not a ``gs://`` URI with a bucket.
    """
    value = value.strip()
    if not value.startswith("gs://") or len(value) <= len("gs://") or value[5] == "/":
        raise ValueError(f"{value!r} is not a gs://bucket/prefix URI")
    return value if value.endswith("/") else value + "/"


class _Run(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[int | None] = Deferred()
        self._pending = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        buffered = self._pending.get(fd, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._pending[fd] = rest[-4096:]
        for line in lines:
            self._log(fd, line)

    def _log(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        if text:
            _log.info("gsutil: {line}", line=text, stream="stderr" if fd == 2 else "stdout")

    def processEnded(self, reason: Failure) -> None:
        for fd, rest in self._pending.items():
            self._log(fd, rest)
        if reason.check(ProcessDone):
            self.ended.callback(0)
        else:
            self.ended.callback(getattr(reason.value, "exitCode", None))


class GsutilSync:
    """
    :param gsutil: the gsutil executable (found on PATH at start).
    :param spawn: ``reactor.spawnProcess``, injected for tests.
    :param timeout: seconds one run may take.
    """

    def __init__(
        self,
        *,
        directory: str,
        uri: str,
        gsutil: str,
        spawn: Callable[..., Any],
        clock: IReactorTime,
        timeout: float,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.uri = uri
        self.gsutil = gsutil
        self._spawn = spawn
        self._clock = clock
        self.timeout = timeout
        self._environ = environ
        self.runs = 0
        self.failures = 0
        self._kill: Any = None

    def run_once(self) -> Deferred[None]:
        """
        One sync; the Deferred fires when it ended, whatever happened.
        """
        return Deferred.fromCoroutine(self._run_once())

    async def _run_once(self) -> None:
        if not os.path.isdir(self.directory):
            return  # nothing recorded yet
        self.runs += 1
        argv = [self.gsutil, "-m", "rsync", "-r", self.directory, self.uri]
        run = _Run()
        try:
            process = self._spawn(run, self.gsutil, argv,
                                  env=dict(os.environ if self._environ is None
                                           else self._environ))
        except OSError as e:
            self.failures += 1
            _log.warn("could not start gsutil: {error}", error=e.strerror or str(e))
            return
        killer = self._clock.callLater(self.timeout, self._stop, process, run)
        code = await run.ended
        for timer in (killer, self._kill):
            if timer is not None and timer.active():
                timer.cancel()
        self._kill = None
        if code == 0:
            _log.info("mirrored {directory} to {uri}", directory=self.directory, uri=self.uri)
        else:
            self.failures += 1
            _log.warn("gsutil rsync to {uri} failed (exit {code}); retrying next tick",
                      uri=self.uri, code=code)

    def _stop(self, process: Any, run: _Run) -> None:
        _log.warn("gsutil rsync took longer than {timeout}s; stopping it", timeout=self.timeout)
        try:
            process.signalProcess("TERM")
        except ProcessExitedAlready:
            return

        def kill() -> None:
            if not run.ended.called:
                try:
                    process.signalProcess("KILL")
                except ProcessExitedAlready:
                    return

        self._kill = self._clock.callLater(KILL_GRACE, kill)
