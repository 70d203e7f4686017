# -*- test-case-name: tests.test_accounting -*-
"""
Where usage rows live: the :class:`UsageStore` interface, and the file store
under ``<state-dir>/usage/``.

The file store keeps, all ``0600`` in a ``0700`` folder:

- ``raw-YYYY-MM-DD.jsonl``: one line per response, appended as records come
  (UTC days), for the last ``raw_days`` days (7 by default);
- ``hourly-YYYY-MM-DD.jsonl``: an older day rolled up, one line per hour,
  conversation, user, account and model, written once (atomically) when its
  raw file ages out, which is then deleted; kept ``retention`` seconds (90
  days by default), then deleted.

Every kept row is also held in memory (tens of thousands of small rows for a
busy team), so queries never read the disk. A line that cannot be read is
reported with its file and line number and skipped; a raw file holding such
lines is never rewritten: when it ages out it is renamed ``*.corrupt`` beside
its rollup, so nothing is lost.

The methods block (file I/O): the ledger calls them from its own thread, and
queries from a thread pool. A lock keeps them consistent.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.logger import Logger

from subrouter.accounting.report import within
from subrouter.accounting.rows import HOUR, Row, hour_start
from subrouter.files import append_whole, atomic_write, ensure_private_directory

_log = Logger()

DAY = 86400.0
DEFAULT_RAW_DAYS = 7
DEFAULT_RETENTION = 90 * DAY
#: lines kept in memory for a disk that refuses them (full, read-only) before
#: the oldest are given up
MAX_HELD_LINES = 200_000
#: seconds between two warnings about a disk that refuses token records
_WARN_EVERY = 60.0
_FILE = re.compile(r"^(raw|hourly)-(\d{4}-\d{2}-\d{2})\.jsonl$")


class UsageStore(Protocol):
    """
    Persists usage rows and answers range reads. A shared backend (Redis, for
    several daemons) implements the same five methods.
    """

    def open(self, now: float) -> None:
        """
        Load what is kept, rolling up and expiring what aged meanwhile.
        """

    def append(self, rows: Sequence[Row]) -> None:
        """
        Keep new per-response rows (called in batches, in time order).
        """

    def rows(self, since: float, until: float) -> tuple[list[Row], str]:
        """
        The rows starting in ``[since, until)``: per-response rows when the
        range lies within the raw horizon (``"raw"``), else hourly rollups,
        with every hour that overlaps the range (``"hourly"``).
        """

    def maintain(self, now: float) -> None:
        """
        Roll up raw days older than the raw horizon; drop rows past retention.
        """

    def close(self) -> None:
        """
        Make everything appended durable and release files.
        """


def utc_day(at: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def day_start(name: str) -> float:
    import calendar

    return float(calendar.timegm(time.strptime(name, "%Y-%m-%d")))


class FileUsageStore:
    """
    :param directory: the ``usage`` folder (created ``0700``); empty to keep
        rows in memory only (a daemon run without a state directory).
    :param raw_days: whole UTC days of per-response rows kept besides today.
    :param retention: seconds rollups are kept.
    """

    def __init__(self, directory: str, *, raw_days: int = DEFAULT_RAW_DAYS,
                 retention: float = DEFAULT_RETENTION) -> None:
        self.directory = directory
        self.raw_days = raw_days
        self.retention = retention
        self._lock = threading.Lock()
        #: per-response rows within the raw horizon, in time order
        self._raw: list[Row] = []
        #: hourly rollups of everything kept (raw days included), by hour start
        self._hours: dict[float, dict[tuple[Any, ...], Row]] = {}
        self._horizon = 0.0
        #: the open raw file (a file descriptor, appended to) and its day
        self._handle: int | None = None
        self._handle_day: str | None = None
        #: lines not on disk yet (the disk refused them), by day, oldest first
        self._held: dict[str, list[str]] = {}
        self._held_count = 0
        self._refused_since: float | None = None
        self._last_warning = 0.0
        #: token records given up (the disk refused them for too long)
        self.lost = 0
        #: how lines are written (tests inject a disk that fills up)
        self.write = os.write
        #: raw days whose files hold unreadable lines
        self._damaged: set[str] = set()
        self.problems: list[str] = []

    # -- the interface -----------------------------------------------------------

    def open(self, now: float) -> None:
        if self.directory:
            ensure_private_directory(self.directory)
        with self._lock:
            self._close_handle()
            self._raw, self._hours = [], {}
            self._horizon = self._raw_horizon(now)
            names = sorted(os.listdir(self.directory)) if self.directory else []
            hourly = {m.group(2) for n in names if (m := _FILE.match(n)) and m.group(1) == "hourly"}
            raw_rows: list[Row] = []
            for name in names:
                match = _FILE.match(name)
                if match is None:
                    continue
                kind, day = match.groups()
                if kind == "hourly":
                    for row in self._read(name):
                        self._add_hourly(row)
                elif day in hourly:
                    # rolled up before a crash that left the raw file: the rollup
                    # wins (the raw file is read only to keep unreadable lines)
                    self._read(name, day)
                    self._retire(name, day)
                else:
                    raw_rows.extend(self._read(name, day))
            raw_rows.sort(key=lambda r: r.start)
            for row in raw_rows:
                self._add_hourly(row.hour_of())
            self._raw = raw_rows
            self._maintain(now)

    def append(self, rows: Sequence[Row]) -> None:
        if not rows:
            return
        with self._lock:
            held = self._held
            for row in rows:
                if self.directory:
                    line = json.dumps(row.as_json(), separators=(",", ":"), ensure_ascii=False)
                    held.setdefault(utc_day(row.start), []).append(line)
                    self._held_count += 1
                if self._raw and row.start < self._raw[-1].start:
                    bisect.insort(self._raw, row, key=lambda r: r.start)
                else:
                    self._raw.append(row)
                self._add_hourly(row.hour_of())
            if self.directory:
                self._write_held()

    def _write_held(self) -> bool:
        """
        Append every held line to its day's file, each day in one whole write.
        A disk that refuses them (full, read-only) leaves no partial line, and
        the lines stay held for the next try; past :data:`MAX_HELD_LINES` the
        oldest are given up, counted in :attr:`lost`.

        :return: whether nothing is held any more.
        """
        written = 0
        for day in sorted(self._held):
            lines = self._held[day]
            try:
                fd = self._open_day(day)
                append_whole(fd, ("\n".join(lines) + "\n").encode("utf-8"), self.write)
            except OSError as e:
                self._refused(e)
                return False
            del self._held[day]
            self._held_count -= len(lines)
            written += len(lines)
        if self._refused_since is not None:
            self._refused_since = None
            _log.info("token accounting: the disk takes records again; wrote {count} held "
                      "while it refused them", count=written)
        return True

    def _refused(self, error: OSError) -> None:
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        while self._held_count > MAX_HELD_LINES:
            day = min(self._held)
            given_up = self._held.pop(day)
            self._held_count -= len(given_up)
            self.lost += len(given_up)
            _log.error("token accounting: gave up {count} records of {day} the disk refused "
                       "for {seconds:.0f} s", count=len(given_up), day=day,
                       seconds=now - self._refused_since)
        if now - self._last_warning >= _WARN_EVERY:
            self._last_warning = now
            _log.warn("token accounting: could not write to {directory}: {error}; holding "
                      "{count} records to write when it takes them again",
                      directory=self.directory, error=error.strerror or str(error),
                      count=self._held_count)

    @property
    def held(self) -> int:
        """
        How many records wait for the disk.
        """
        return self._held_count

    def rows(self, since: float, until: float) -> tuple[list[Row], str]:
        with self._lock:
            if since >= self._horizon:
                return within(self._raw, since, until), "raw"
            first = hour_start(since)
            out: list[Row] = []
            for hour, rows in self._hours.items():
                if first <= hour < until:
                    out.extend(rows.values())
            return out, "hourly"

    def maintain(self, now: float) -> None:
        with self._lock:
            self._maintain(now)

    def close(self) -> None:
        with self._lock:
            if self._held and self.directory and not self._write_held():
                self.lost += self._held_count
                _log.error("token accounting: {count} records could not be written before "
                           "stopping (the disk refused them); they are lost",
                           count=self._held_count)
                self._held.clear()
                self._held_count = 0
            try:
                self._close_handle()
            except OSError as e:
                _log.warn("token accounting: closing {directory} failed: {error}",
                          directory=self.directory, error=e.strerror or str(e))

    # -- reading ---------------------------------------------------------------------

    @property
    def horizon(self) -> float:
        """
        The earliest time per-response rows are kept from.
        """
        return self._horizon

    def _raw_horizon(self, now: float) -> float:
        return day_start(utc_day(now)) - self.raw_days * DAY

    def _read(self, name: str, raw_day: str | None = None) -> list[Row]:
        path = os.path.join(self.directory, name)
        rows = []
        bad = 0
        try:
            with open(path, "rb") as f:
                for number, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rows.append(Row.from_json(json.loads(line)))
                    except ValueError as e:
                        bad += 1
                        if bad <= 3:
                            self._problem(f"{path}: line {number} is not a usage row ({e}); "
                                          "skipped, the file is left as it is")
        except OSError as e:
            self._problem(f"{path}: cannot be read ({e.strerror or e}); skipped")
            if raw_day is not None:
                self._damaged.add(raw_day)
            return []
        if bad and raw_day is not None:
            self._damaged.add(raw_day)
        return rows

    def _problem(self, text: str) -> None:
        self.problems.append(text)
        _log.warn("token accounting: {problem}", problem=text)

    # -- writing -----------------------------------------------------------------------

    def _open_day(self, day: str) -> int:
        if self._handle is not None and self._handle_day == day:
            return self._handle
        self._close_handle()
        path = os.path.join(self.directory, f"raw-{day}.jsonl")
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # a line torn by a crash must not swallow the next one (it
                # stays, reported as unreadable when the file is read)
                append_whole(fd, b"\n", self.write)
        except OSError:
            os.close(fd)
            raise
        self._handle = fd
        self._handle_day = day
        return fd

    def _close_handle(self) -> None:
        fd, self._handle, self._handle_day = self._handle, None, None
        if fd is not None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _add_hourly(self, row: Row) -> None:
        # ``row`` is the store's own (a fresh rollup row or one read from a file)
        hour = self._hours.setdefault(row.start, {})
        key = row.key()
        found = hour.get(key)
        if found is None:
            hour[key] = row
        else:
            found.add(row)

    def _maintain(self, now: float) -> None:
        horizon = self._raw_horizon(now)
        self._horizon = horizon
        today = utc_day(now)
        oldest = now - self.retention
        for name in sorted(os.listdir(self.directory)) if self.directory else []:
            match = _FILE.match(name)
            if match is None:
                continue
            kind, day = match.groups()
            start = day_start(day)
            expired = start + DAY <= oldest
            if kind == "raw" and start < horizon and day != today:
                if expired:
                    self._retire(name, day)
                else:
                    self._roll_up_day(name, day)
            elif kind == "hourly" and expired:
                os.unlink(os.path.join(self.directory, name))
        cut = 0
        while cut < len(self._raw) and self._raw[cut].start < horizon:
            cut += 1
        if cut:
            del self._raw[:cut]
        for hour in [h for h in self._hours if h + HOUR <= oldest]:
            del self._hours[hour]

    def _roll_up_day(self, name: str, day: str) -> None:
        if self._handle_day == day:
            self._close_handle()
        start = day_start(day)
        rows = [r for h, hour in self._hours.items() if start <= h < start + DAY
                for r in hour.values()]
        rows.sort(key=lambda r: r.start)
        text = "".join(
            json.dumps(r.as_json(), separators=(",", ":"), ensure_ascii=False) + "\n"
            for r in rows
        )
        atomic_write(os.path.join(self.directory, f"hourly-{day}.jsonl"), text.encode())
        self._retire(name, day)

    def _retire(self, name: str, day: str) -> None:
        # rows still held for this day are in memory, which the rollup (or
        # the expiry) already took into account: they need no raw file
        self._held_count -= len(self._held.pop(day, ()))
        path = os.path.join(self.directory, name)
        if day in self._damaged:
            os.replace(path, path + ".corrupt")
            self._damaged.discard(day)
            _log.warn("token accounting: {path} had unreadable lines; kept as {kept}",
                      path=path, kept=path + ".corrupt")
        else:
            os.unlink(path)

