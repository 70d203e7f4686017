# -*- test-case-name: tests.test_transcripts -*-
"""
Recording transcripts without slowing or breaking the proxy.

The request path only appends small tuples (bytes it already has, never
encoded) to a bounded queue; a writer thread does everything else: base64 and
SHA-256, JSON lines, appending to ``<dir>/by-agent/<agent>/by-session/<id>.jsonl``
(directories 0700, files 0600), and the per-session summaries the browsing
endpoint lists. Token usage is not read here: the token ledger
(:mod:`subrouter.accounting`) counts every answer, recorded or not. When the
queue is full or the disk fails, events are dropped, counted and logged; the
proxy carries on.

Every line is whole or absent: the events of one batch go to each file in one
write, and a write that fails part-way (a full disk) is cut back to where the
file ended before it. A file found ending in a partial line (a crash mid-write)
is cut back to its last complete line when it is next opened.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger

from subrouter.files import append_whole, atomic_write, cut_partial_line
from subrouter.transcripts.events import (
    CHUNK,
    body_pieces,
    chunk_payload,
    envelope,
    safe_name,
)

_log = Logger()

DEFAULT_MAX_BODY = 16 * 1024 * 1024
DEFAULT_QUEUE_BYTES = 64 * 1024 * 1024
MAX_OPEN_FILES = 64
#: how long the writer lets events gather before writing them
BATCH_WAIT = 0.05
SUMMARY_SUFFIX = ".summary.json"
#: how often a failing disk is logged, in seconds
_FAILURE_LOG_INTERVAL = 10.0


@attrs.define
class Conversation:
    """
    Whose transcript an event goes to.
    """

    agent: str
    session_id: str
    user: str | None = None
    account: str | None = None

    def identity(self, request_id: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "agent_type": self.agent,
            "session_id": self.session_id,
            "agent_session_id": self.session_id,
            "request_id": request_id,
        }
        if self.agent == "codex":
            payload["codex_session_id"] = self.session_id
        return payload

    _path: str | None = attrs.field(default=None, init=False, repr=False, eq=False)

    def relative_path(self) -> str:
        if self._path is None:
            self._path = os.path.join(
                "by-agent", safe_name(self.agent),
                "by-session", safe_name(self.session_id) + ".jsonl",
            )
        return self._path


@attrs.define
class Summary:
    agent: str
    session_id: str
    file: str
    first_event_at: float | None = None
    last_event_at: float | None = None
    event_count: int = 0
    total_bytes: int = 0
    user: str | None = None
    account: str | None = None
    usage: dict[str, int] = attrs.Factory(dict)

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.define
class _Out:
    """
    One open transcript file, and the whole lines waiting for the next write.
    """

    fd: int
    #: (conversation, text, time, body bytes, events) appended in this batch
    lines: list[tuple[Conversation, str, float, int, int]] = attrs.Factory(list)


@attrs.define
class _Stream:
    direction: str
    status: int | None
    hash: Any = attrs.Factory(hashlib.sha256)
    size: int = 0
    chunks: int = 0
    truncated: bool = False
    #: recorded bytes not yet written as chunk events (reads are coalesced)
    pending: bytearray = attrs.Factory(bytearray)
    written: int = 0


class Recorder:
    """
    :param directory: the transcript root (``--transcripts``).
    :param clock: the source of time for timestamps.
    :param max_body: bytes of one body recorded; the rest is counted only.
    :param max_queue_bytes: bytes waiting for the writer before events drop.
    """

    def __init__(
        self,
        directory: str,
        *,
        clock: Callable[[], float] = time.time,
        max_body: int = DEFAULT_MAX_BODY,
        max_queue_bytes: int = DEFAULT_QUEUE_BYTES,
        exclude: tuple[str, ...] = ("/models",),
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.clock = clock
        self.max_body = max_body
        self.max_queue_bytes = max_queue_bytes
        self.exclude = exclude
        self.dropped = 0
        self.written = 0
        self._queue: deque[tuple[Any, ...]] = deque()
        self._queued_bytes = 0
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._files: OrderedDict[str, _Out] = OrderedDict()
        #: files with lines waiting, in the order they were first appended to
        self._pending: dict[str, _Out] = {}
        self._streams: dict[str, _Stream] = {}
        self._summaries: dict[str, Summary] = {}
        self._dirty: set[str] = set()
        self._summary_lock = threading.Lock()
        self._counter = 0
        self._last_drop_log = 0.0
        self._last_failure_log = 0.0
        #: the writer: ``os.write``, replaced in tests to fail like a full disk
        self.write = os.write

    # -- life cycle ----------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._load_summaries()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="subrouter-transcripts",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def flush(self, timeout: float = 5.0) -> None:
        """
        Wait until everything queued so far is written (for readers and tests),
        or was dropped because it could not be. Blocking.
        """
        done = threading.Event()
        self._put(("flush", done), 0)
        done.wait(timeout)

    # -- the hot path: cheap appends only --------------------------------------

    def wants(self, path: str) -> bool:
        return not any(path == e or path.endswith(e) for e in self.exclude)

    def new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter}"

    def event(self, conversation: Conversation, request_id: str, kind: str,
              payload: dict[str, Any]) -> None:
        self._put(("event", conversation, request_id, kind, payload, self.clock()), 256)

    def body(self, conversation: Conversation, request_id: str, stream_id: str,
             direction: str, data: bytes, status: int | None = None) -> None:
        """
        Part of a body; the first call for a stream opens it.
        """
        self._put(("data", conversation, request_id, stream_id, direction, data, status,
                   self.clock()), len(data))

    def body_end(self, conversation: Conversation, request_id: str, stream_id: str) -> None:
        self._put(("end", conversation, request_id, stream_id, self.clock()), 64)

    def message(self, conversation: Conversation, request_id: str, direction: str,
                data: bytes, binary: bool) -> None:
        self._put(("ws", conversation, request_id, direction, data, binary, self.clock()),
                  len(data))

    def _put(self, item: tuple[Any, ...], size: int) -> None:
        with self._wake:
            if self._queued_bytes + size > self.max_queue_bytes or (
                self._thread is None and item[0] != "flush"
            ):
                self.dropped += 1
                now = time.monotonic()
                if now - self._last_drop_log > 10:
                    self._last_drop_log = now
                    _log.warn(
                        "transcript queue full or writer stopped: dropped {dropped} events "
                        "so far (the proxy is unaffected)", dropped=self.dropped,
                    )
                if item[0] == "flush":
                    item[1].set()
                return
            was_empty = not self._queue
            self._queue.append((*item, size))
            self._queued_bytes += size
            if was_empty or item[0] == "flush":
                self._wake.notify()

    # -- the writer thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait(1.0)
                    if not self._queue:
                        self._write_summaries()
                if not self._queue and self._stopping:
                    break
                urgent = self._stopping or any(i[0] == "flush" for i in self._queue)
            if not urgent:
                # let a batch gather: one wake-up per batch, not per event, so the
                # writer competes with the request path for the interpreter rarely
                time.sleep(BATCH_WAIT)
            with self._wake:
                batch = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
            for item in batch:
                try:
                    self._handle(item)
                except OSError as e:
                    self.dropped += 1
                    self._disk_failed("recording an event", e)
                except Exception:
                    self.dropped += 1
                    _log.failure("recording a transcript event failed")
                finally:
                    if item[0] == "flush":
                        # a failed flush still answers its waiter
                        item[1].set()
            self._write_out()
        self._shut_down()

    def _shut_down(self) -> None:
        """
        The writer's last acts: write what is pending, then close. Never
        raises: a full disk at shutdown is logged.
        """
        try:
            self._write_out()
            self._write_summaries()
        except Exception:
            _log.failure("finishing the transcripts at shutdown failed")
        for out in self._files.values():
            _close(out.fd)
        self._files.clear()

    def expire(self, older_than: float) -> None:
        """
        Delete the transcripts whose last event is older than ``older_than``
        seconds (done by the writer thread, between writes).
        """
        self._put(("expire", self.clock() - older_than), 0)

    def _expire(self, cutoff: float) -> None:
        self._write_out()
        with self._summary_lock:
            old = [r for r, s in self._summaries.items()
                   if s.last_event_at is not None and s.last_event_at < cutoff]
        for relative in old:
            out = self._files.pop(relative, None)
            if out is not None:
                _close(out.fd)
            base = os.path.join(self.directory, relative)
            for path in (base, base[: -len(".jsonl")] + SUMMARY_SUFFIX):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            with self._summary_lock:
                self._summaries.pop(relative, None)
            self._dirty.discard(relative)
        if old:
            _log.info("deleted {count} transcripts older than the retention", count=len(old))

    def _handle(self, item: tuple[Any, ...]) -> None:
        op = item[0]
        if op == "expire":
            self._expire(item[1])
        elif op == "flush":
            # the waiter is answered by the caller, whatever happens here
            self._write_out()
            self._write_summaries()
        elif op == "event":
            _, conversation, request_id, kind, payload, at, _size = item
            self._note_meta(conversation, kind, payload)
            self._append(conversation, envelope(kind, at, conversation.identity(request_id),
                                                payload), at, 0)
        elif op == "data":
            _, conversation, request_id, stream_id, direction, data, status, at, _size = item
            self._data(conversation, request_id, stream_id, direction, data, status, at)
        elif op == "end":
            _, conversation, request_id, stream_id, at, _size = item
            self._end(conversation, request_id, stream_id, at)
        elif op == "ws":
            _, conversation, request_id, direction, data, binary, at, _size = item
            payload = {
                "direction": direction,
                "opcode": "binary" if binary else "text",
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "body_base64": base64.b64encode(data[: self.max_body]).decode("ascii"),
            }
            if len(data) > self.max_body:
                payload["truncated"] = True
            self._append(conversation, envelope("websocket_message", at,
                                                conversation.identity(request_id), payload),
                         at, len(data))

    def _data(self, conversation: Conversation, request_id: str, stream_id: str,
              direction: str, data: bytes, status: int | None, at: float) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._streams[stream_id] = _Stream(direction, status)
        stream.hash.update(data)
        offset = stream.size
        stream.size += len(data)
        room = self.max_body - offset
        if room <= 0:
            stream.truncated = True
            return
        if len(data) > room:
            data, stream.truncated = data[:room], True
        # SSE arrives in many small reads: store them in pieces of up to 64 KiB
        stream.pending += data
        if len(stream.pending) >= CHUNK:
            full = len(stream.pending) - len(stream.pending) % CHUNK
            self._write_chunks(conversation, request_id, stream_id, stream, full, at)

    def _write_chunks(self, conversation: Conversation, request_id: str, stream_id: str,
                      stream: _Stream, size: int, at: float) -> None:
        data = bytes(stream.pending[:size])
        del stream.pending[:size]
        identity = conversation.identity(request_id)
        lines = []
        for piece_offset, piece in body_pieces(data, stream.written):
            lines.append(envelope("http_body_chunk", at, identity, chunk_payload(
                stream.direction, stream_id, stream.chunks, piece_offset, piece)))
            stream.chunks += 1
        stream.written += len(data)
        self._append(conversation, "".join(lines), at, 0, events=len(lines))

    def _end(self, conversation: Conversation, request_id: str, stream_id: str,
             at: float) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            stream = _Stream("upstream_to_client", None)
        if stream.pending:
            self._write_chunks(conversation, request_id, stream_id, stream,
                               len(stream.pending), at)
        payload: dict[str, Any] = {
            "direction": stream.direction,
            "stream_id": stream_id,
            "body_chunked": True,
            "bytes": stream.size,
            "sha256": stream.hash.hexdigest(),
            "chunks": stream.chunks,
        }
        if stream.status is not None:
            payload["status"] = stream.status
        if stream.truncated:
            payload["truncated"] = True
        self._append(conversation, envelope("http_body", at, conversation.identity(request_id),
                                            payload), at, stream.size)

    def _note_meta(self, conversation: Conversation, kind: str, payload: dict[str, Any]) -> None:
        if kind != "subrouter_meta":
            return
        summary = self._summary(conversation)
        with self._summary_lock:
            if summary.user is None and payload.get("user"):
                summary.user = payload["user"]
            if summary.account is None and payload.get("account"):
                summary.account = payload["account"]

    def _append(self, conversation: Conversation, text: str, at: float, size: int,
                events: int = 1) -> None:
        """
        Queue whole lines for ``conversation``'s file; :meth:`_write_out`
        writes each file's lines in one write at the end of the batch.
        """
        relative = conversation.relative_path()
        out = self._pending.get(relative)
        if out is None:
            out = self._files.get(relative)
            if out is None:
                out = _Out(self._open(os.path.join(self.directory, relative)))
                self._files[relative] = out
                while len(self._files) > MAX_OPEN_FILES:
                    old_relative, old = next(iter(self._files.items()))
                    if old_relative in self._pending:
                        break  # never close a file with lines waiting
                    del self._files[old_relative]
                    _close(old.fd)
            else:
                self._files.move_to_end(relative)
            self._pending[relative] = out
        out.lines.append((conversation, text, at, size, events))

    def _write_out(self) -> None:
        """
        Write every file's waiting lines, each file in one whole write; a file
        that refuses them gets none of them (counted as dropped).
        """
        pending, self._pending = self._pending, {}
        for relative, out in pending.items():
            lines, out.lines = out.lines, []
            data = "".join(line[1] for line in lines).encode("utf-8")
            try:
                append_whole(out.fd, data, self.write)
            except OSError as e:
                self.dropped += sum(line[4] for line in lines)
                self._disk_failed(f"writing {relative}", e)
                continue
            for conversation, _, at, size, events in lines:
                self.written += events
                summary = self._summary(conversation)
                with self._summary_lock:
                    if summary.first_event_at is None:
                        summary.first_event_at = at
                    summary.last_event_at = at
                    summary.event_count += events
                    summary.total_bytes += size
            self._dirty.add(relative)

    def _open(self, path: str) -> int:
        """
        Open a transcript file for appending, first cutting back a partial last
        line an earlier crash may have left, so the next line starts whole.
        """
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            cut = cut_partial_line(fd)
            if cut:
                _log.warn("cut {count} bytes of a partial last line from {path} (an earlier "
                          "write did not finish)", count=cut, path=path)
        except OSError:
            _close(fd)
            raise
        return fd

    def _disk_failed(self, what: str, error: OSError) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= _FAILURE_LOG_INTERVAL:
            self._last_failure_log = now
            _log.warn("{what} failed ({error}); events dropped so far: {dropped} (the proxy is "
                      "unaffected, no line is left half-written)", what=what,
                      error=error.strerror or str(error), dropped=self.dropped)

    def _summary(self, conversation: Conversation) -> Summary:
        relative = conversation.relative_path()
        summary = self._summaries.get(relative)
        if summary is None:
            summary = Summary(safe_name(conversation.agent), conversation.session_id, relative)
            with self._summary_lock:
                self._summaries[relative] = summary
        return summary

    def _write_summaries(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for relative in dirty:
            summary = self._summaries.get(relative)
            if summary is None:
                continue
            path = os.path.join(self.directory, relative[: -len(".jsonl")] + SUMMARY_SUFFIX)
            try:
                with self._summary_lock:
                    data = json.dumps(summary.as_json()).encode()
                atomic_write(path, data)
            except OSError:
                self._dirty.add(relative)  # tried again on the next round

    def _load_summaries(self) -> None:
        root = os.path.join(self.directory, "by-agent")
        if not os.path.isdir(root):
            return
        for agent in os.listdir(root):
            folder = os.path.join(root, agent, "by-session")
            if not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                if not name.endswith(SUMMARY_SUFFIX):
                    continue
                try:
                    with open(os.path.join(folder, name), "rb") as f:
                        document = json.loads(f.read())
                    summary = Summary(**document)
                except (OSError, ValueError, TypeError):
                    continue
                self._summaries[summary.file] = summary

    # -- reading (any thread) ----------------------------------------------------

    def summaries(self) -> list[Summary]:
        with self._summary_lock:
            return [attrs.evolve(s, usage=dict(s.usage)) for s in self._summaries.values()]

    def path_of(self, agent: str, session_id: str) -> str | None:
        relative = os.path.join("by-agent", safe_name(agent), "by-session",
                                safe_name(session_id) + ".jsonl")
        path = os.path.join(self.directory, relative)
        return path if os.path.isfile(path) else None



def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass  # nothing is buffered: every write went straight to the file
