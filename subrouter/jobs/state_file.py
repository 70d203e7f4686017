# -*- test-case-name: tests.test_sessions_live -*-
"""
The state file: sticky assignments (with user emails) and exhaustion marks
that survive restarts, in ``<state-dir>/state.json``.

The file is loaded once at start. Changes are saved at most once a second,
off the reactor thread, with the atomic private write every credential file
gets, and once more when the daemon stops. A file that cannot be read is
moved aside (``state.json.corrupt-<time>``) with a log line, and the daemon
starts with empty state.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from subrouter.accounts.store import BlockingRunner
from subrouter.files import atomic_write, ensure_private_directory
from subrouter.sessions.table import SessionTable, row
from subrouter.sessions.usage import UsageBook

_log = Logger()

STATE_FILE = "state.json"
FORMAT = 1
SAVE_INTERVAL = 1.0
#: while saves keep failing (a full or read-only disk), how often it is said again
FAILURE_LOG_INTERVAL = 60.0


def load_state(state_dir: str, table: SessionTable, usage: UsageBook, now: float) -> None:
    """
    Restore saved state. Blocking; for start-up.
    """
    path = os.path.join(state_dir, STATE_FILE)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return
    except OSError as e:
        _log.error("cannot read {path}: {error}; starting without saved sessions",
                   path=path, error=e.strerror or str(e))
        return
    try:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError("not a Subrouter state file of a known format")
        sessions = document.get("sessions", [])
        marks = document.get("exhausted", {})
        if not isinstance(sessions, list) or not isinstance(marks, dict):
            raise ValueError("unexpected structure")
    except ValueError as e:
        aside = f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}"
        try:
            os.replace(path, aside)
        except OSError:
            aside = "(could not move it)"
        _log.error(
            "the state file {path} is unreadable ({error}); moved it to {aside} and "
            "started without saved sessions",
            path=path, error=str(e), aside=aside,
        )
        return
    table.load(sessions)
    usage.load_marks(marks, now)
    _log.info("restored {count} sticky sessions from {path}", count=len(table), path=path)


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class _SavingTimer(TimerService):
    saver: StateSaver

    def stopService(self) -> Deferred[None]:
        d: Deferred[None] = super().stopService()
        d.addCallback(lambda _: self.saver.save_now())
        return d


class StateSaver:
    """
    Saves the state when it changed, off the reactor thread.
    """

    def __init__(
        self,
        state_dir: str,
        table: SessionTable,
        usage: UsageBook,
        run_blocking: BlockingRunner,
        clock: IReactorTime,
    ) -> None:
        self.path = os.path.join(state_dir, STATE_FILE)
        self._dir = state_dir
        self._table = table
        self._usage = usage
        self._run_blocking = run_blocking
        self._clock = clock
        self._saved: tuple[int, int] | None = None
        #: every row's JSON as last encoded, in the table's order; only ever
        #: touched by one save at a time (the timer waits for each)
        self._rows: dict[tuple[str, str], bytes] = {}
        #: since when saves have been failing, how many did, and when it was said
        self._failing_since: float | None = None
        self._failures = 0
        self._failure_said = 0.0

    def _snapshot(
        self,
    ) -> tuple[tuple[int, int], Callable[[], bytes], Callable[[], None]]:
        """
        What to save, taken on the reactor thread: the rows that changed
        since the last save, not every row. The encoding it returns runs
        where it is called (a worker thread). It encodes those rows again and
        joins them with every other row's encoding as last saved: with ten
        thousand conversations and one new, that is one row's JSON and a join,
        not a quarter of a second of encoding that holds the interpreter
        (and so the reactor) every second.
        """
        marker = (self._table.version, self._usage.version)
        saved_at = self._clock.seconds()
        changed, forgotten = self._table.take_changed()
        marks = self._usage.exhaustion_marks()
        encoded = self._rows

        def encode() -> bytes:
            for sid in forgotten:
                encoded.pop(sid, None)
            for sid, values in changed:
                encoded[sid] = _json(row(values))
            return b"".join((
                b'{"format":', _json(FORMAT), b',"saved_at":', _json(saved_at),
                b',"sessions":[', b",".join(encoded.values()),
                b'],"exhausted":', _json(marks), b"}",
            ))

        def give_back() -> None:
            # the save failed: the next one takes these rows again
            self._table.mark_changed([sid for sid, _ in changed], forgotten)

        return marker, encode, give_back

    def save_if_changed(self) -> Deferred[None] | None:
        """
        Save when anything changed since the last save. Never fails: a
        failed write is logged and tried again on the next tick.
        """
        marker = (self._table.version, self._usage.version)
        if marker == self._saved:
            return None
        marker, encode, give_back = self._snapshot()  # taken on the reactor thread

        def write() -> None:
            data = encode()
            ensure_private_directory(self._dir)
            atomic_write(self.path, data)

        def saved(_: object) -> None:
            self._saved = marker
            self._worked()

        def failed(failure: Any) -> None:
            give_back()
            self._failed(failure.value)

        d: Deferred[None] = self._run_blocking(write)
        d.addCallbacks(saved, failed)
        return d

    def service(self) -> TimerService:
        """
        A service that saves every second when something changed, and once
        more, synchronously, when it stops.
        """
        timer = _SavingTimer(SAVE_INTERVAL, self.save_if_changed)
        timer.clock = self._clock
        timer.saver = self
        timer.setName("state-saver")
        return timer

    def save_now(self) -> None:
        """
        Save synchronously (at shutdown).
        """
        if (self._table.version, self._usage.version) == self._saved:
            return
        _, encode, give_back = self._snapshot()
        try:
            ensure_private_directory(self._dir)
            atomic_write(self.path, encode())
        except OSError as e:
            give_back()
            self._failed(e, always=True)  # the last word at shutdown: always said
        else:
            self._worked()

    def _failed(self, error: BaseException, always: bool = False) -> None:
        """
        A save failed: said at once, then at most every
        :data:`FAILURE_LOG_INTERVAL` while they go on failing (every second's
        retry would flood the log, on the disk that is likely full).
        """
        now = self._clock.seconds()
        self._failures += 1
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failure_said < FAILURE_LOG_INTERVAL and not always:
            return
        self._failure_said = now
        text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        if self._failures == 1:
            _log.error("saving {path} failed: {error}; trying again every second",
                       path=self.path, error=text)
        else:
            _log.error("saving {path} still fails: {error} ({failures} failed saves in "
                       "{seconds:.0f} s)", path=self.path, error=text,
                       failures=self._failures, seconds=now - self._failing_since)

    def _worked(self) -> None:
        if self._failing_since is not None:
            _log.info("saving {path} works again, after {failures} failed saves in "
                      "{seconds:.0f} s", path=self.path, failures=self._failures,
                      seconds=self._clock.seconds() - self._failing_since)
        self._failing_since = None
        self._failures = 0
