# -*- test-case-name: tests.test_accounting -*-
"""
The token ledger: the one door through which every response's usage enters,
whatever carried it, and the one place queries read it from.

The request path only hands over what it already has: for an HTTP answer, a
:class:`BodyTap` that keeps the few lines that may carry usage (no parsing);
for a WebSocket message, the message itself when it may hold a usage object;
for a provider whose events the proxy already parsed, a :class:`Usage`. These
go onto a bounded queue. A thread of its own parses them, turns them into
rows and hands them to the :class:`~subrouter.accounting.store.UsageStore`
at most :data:`BATCH_WAIT` seconds later. Stopping drains the queue; anything
that arrives after (a response finishing during shutdown) is written at once.

The provider of the :class:`Origin` says how bodies are read: ``anthropic``
folds an answer's ``message_start`` and ``message_delta`` events (or a whole
``message``) into one record; anything else is read as OpenAI's shapes
(Responses events and answers, Chat Completions).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.logger import Logger

from subrouter.accounting.extract import (
    BodyScan,
    Origin,
    Usage,
    is_streaming,
    may_hold_usage,
    usage_from_payloads,
)
from subrouter.accounting.report import (
    Query,
    QueryError,
    conversations,
    parse_query,
    report,
    usage_of,
)
from subrouter.accounting.rows import HOUR, Row
from subrouter.accounting.store import UsageStore

_log = Logger()

#: how long records gather before they are written
BATCH_WAIT = 1.0
#: bytes waiting for the thread before payloads are dropped (and counted)
MAX_QUEUE_BYTES = 64 * 1024 * 1024

__all__ = ["BodyTap", "Ledger", "Origin", "QueryError", "Usage"]


class BodyTap:
    """
    What one HTTP answer hands the ledger: :meth:`feed` each relayed chunk,
    then :meth:`finish` once when the body is complete.
    """

    __slots__ = ("_ledger", "_origin", "_scan", "feed")

    def __init__(self, ledger: Ledger, origin: Origin, streaming: bool) -> None:
        self._ledger = ledger
        self._origin = origin
        self._scan = BodyScan(streaming)
        #: hand a relayed chunk over (the scan's own method: one call per chunk)
        self.feed: Callable[[bytes], None] = self._scan.feed

    def finish(self) -> None:
        payloads = self._scan.finish()
        if payloads:
            self._ledger.payloads(self._origin, payloads)


class Ledger:
    """
    :param store: where rows are kept.
    :param clock: the source of record times.
    """

    def __init__(self, store: UsageStore, *, clock: Callable[[], float] = time.time,
                 batch_wait: float = BATCH_WAIT,
                 max_queue_bytes: int = MAX_QUEUE_BYTES) -> None:
        self.store = store
        self.clock = clock
        self.batch_wait = batch_wait
        self.max_queue_bytes = max_queue_bytes
        self.recorded = 0
        self.dropped = 0
        self._queue: deque[tuple[Any, ...]] = deque()
        self._queued_bytes = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._last_drop_log = 0.0
        self._listeners: list[Callable[[list[Row]], None]] = []

    def subscribe(self, listener: Callable[[list[Row]], None]) -> None:
        """
        Have ``listener`` called with every batch of new rows once they are
        stored (e.g. to feed tokens spent per account into forecasts). It is
        called on the ledger's own thread: hop to the reactor with
        ``reactor.callFromThread``.
        """
        self._listeners.append(listener)

    # -- the request path: cheap appends only --------------------------------------

    def body(self, origin: Origin, content_type: bytes | None) -> BodyTap:
        """
        A tap for one HTTP answer of this content type.
        """
        return BodyTap(self, origin, is_streaming(content_type))

    def message(self, origin: Origin, payload: bytes) -> None:
        """
        One text WebSocket message from the upstream; kept only when it may
        hold a usage object.
        """
        if may_hold_usage(payload):
            self.payloads(origin, [payload])

    def payloads(self, origin: Origin, payloads: list[bytes], at: float | None = None) -> None:
        """
        The payloads of one answer that may carry usage, parsed later by the
        shapes of ``origin.provider``.
        """
        size = sum(len(p) for p in payloads)
        self._put(("payloads", origin, payloads, self.clock() if at is None else at), size)

    def record(self, origin: Origin, usage: Usage, at: float | None = None) -> None:
        """
        Usage the caller already read (any provider, normalised as
        :class:`Usage` describes).
        """
        self._put(("usage", origin, usage, self.clock() if at is None else at), 64)

    def maintain(self) -> None:
        """
        Roll up aged raw days and drop expired rows, on the ledger's thread.
        """
        self._put(("maintain", self.clock()), 0)

    def _put(self, item: tuple[Any, ...], size: int) -> None:
        with self._wake:
            if self._thread is None:
                # stopped (a response finishing during shutdown): write it now
                self._write([item])
                self.store.close()
                return
            if self._queued_bytes + size > self.max_queue_bytes:
                self.dropped += 1
                now = time.monotonic()
                if now - self._last_drop_log > 10:
                    self._last_drop_log = now
                    _log.warn("token accounting is behind: dropped {dropped} answers so far",
                              dropped=self.dropped)
                return
            self._queue.append(item)
            self._queued_bytes += size
            if item[0] == "flush":
                self._wake.notify()

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """
        Load the store and start the thread. Blocking (reads the store).
        """
        self.store.open(self.clock())
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="subrouter-accounting",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """
        Write everything queued, then stop the thread. Blocking.
        """
        with self._wake:
            self._stopping = True
            self._wake.notify()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=30)
        with self._wake:
            self._thread = None
            leftover = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
        self._write(leftover)
        self.store.close()

    def flush(self, timeout: float = 10.0) -> None:
        """
        Wait until everything queued so far is written. Blocking.
        """
        done = threading.Event()
        with self._wake:
            running = self._thread is not None
        if not running:
            return
        self._put(("flush", done), 0)
        done.wait(timeout)

    def service(self, run_blocking: Callable[[Callable[[], Any]], Any] | None = None) -> Service:
        """
        A service that loads the ledger and starts its thread, and at shutdown
        writes everything queued before the thread stops.

        :param run_blocking: runs the stop off the reactor thread (its
            Deferred holds the shutdown), for a store whose writes need the
            reactor (Redis); without it the stop blocks the reactor.
        """
        return _LedgerService(self, run_blocking)

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._stopping and not any(i[0] == "flush" for i in self._queue):
                    # one wake-up per batch, not per answer
                    self._wake.wait(self.batch_wait)
                batch = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                stopping = self._stopping
            self._write(batch)
            if stopping:
                return

    def _write(self, batch: list[tuple[Any, ...]]) -> None:
        rows: list[Row] = []
        flushed: list[threading.Event] = []
        maintain: float | None = None
        for item in batch:
            kind = item[0]
            try:
                if kind == "payloads":
                    _, origin, payloads, at = item
                    for usage in usage_from_payloads(origin.provider, payloads):
                        rows.append(Row.record(at, origin, usage))
                elif kind == "usage":
                    _, origin, usage, at = item
                    if not usage.is_empty():
                        rows.append(Row.record(at, origin, usage))
                elif kind == "flush":
                    flushed.append(item[1])
                elif kind == "maintain":
                    maintain = item[1]
            except Exception:
                _log.failure("reading token usage failed")
        try:
            self.store.append(rows)
            self.recorded += len(rows)
            if rows:
                for listener in self._listeners:
                    listener(rows)
            if maintain is not None:
                self.store.maintain(maintain)
        except OSError as e:
            self.dropped += len(rows)
            _log.warn("token accounting could not write {count} records: {error}",
                      count=len(rows), error=e.strerror or str(e))
        except Exception:
            self.dropped += len(rows)
            _log.failure("token accounting failed to write")
        for done in flushed:
            done.set()

    # -- reading (any thread; blocking) ---------------------------------------------------

    def _rows(self, query: Query) -> tuple[list[Row], str, Query]:
        rows, resolution = self.store.rows(query.since, query.until)
        if resolution == "hourly" and query.bucket != "day" and float(query.bucket) < HOUR:
            query = attrs.evolve(query, bucket=HOUR)  # rollups hold no finer time
        return rows, resolution, query

    def query(self, args: Mapping[str, str], now: float) -> dict[str, Any]:
        """
        ``/_subrouter/token-usage``.

        :raises QueryError: for an unusable parameter.
        """
        query = parse_query(args, now)
        rows, resolution, query = self._rows(query)
        out = report(rows, query, resolution=resolution)
        out["recorded"] = self.recorded
        out["dropped"] = self.dropped
        return out

    def usage_of_conversations(
        self, wanted: set[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        """
        The summed usage of each ``(agent, session)`` asked for, over all the
        rows kept.
        """
        rows, _ = self.store.rows(0.0, math.inf)
        groups: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            key = (row.agent, row.session)
            if key in wanted:
                groups.setdefault(key, []).append(row)
        return {key: usage_of(found) for key, found in groups.items()}

    def conversations(self, args: Mapping[str, str], now: float) -> dict[str, Any]:
        """
        ``/_subrouter/conversations``: per-conversation sums over the range.

        :raises QueryError: for an unusable parameter.
        """
        query = parse_query({k: v for k, v in args.items() if k != "bucket"}
                            | {"bucket": "day"}, now)
        rows, resolution, query = self._rows(query)
        return {
            "since_ts": query.since,
            "until_ts": query.until,
            "resolution": resolution,
            "conversations": conversations(rows, query.since, query.until, query.limit),
        }


class _LedgerService(Service):
    def __init__(
        self, ledger: Ledger, run_blocking: Callable[[Callable[[], Any]], Any] | None
    ) -> None:
        self.ledger = ledger
        self._run_blocking = run_blocking

    def startService(self) -> None:
        super().startService()
        self.ledger.start()

    def stopService(self) -> Any:
        super().stopService()
        if self._run_blocking is not None:
            # the writer may be waiting on the reactor (a Redis store): keep
            # the reactor running until it is done
            return self._run_blocking(self.ledger.stop)
        self.ledger.stop()
        return None
