"""
Transcripts on a disk that fills up: every line is whole or absent, a flush
never hangs, usage rows survive until they can be written (or are logged at
shutdown), and nothing raises. A writer that fails like a full disk is
injected; one test also uses a real 64 KiB tmpfs when this machine lets us
mount one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from subrouter.accounting.extract import Origin, Usage
from subrouter.accounting.ledger import Ledger
from subrouter.accounting.rows import Row
from subrouter.accounting.store import FileUsageStore
from subrouter.transcripts.recorder import Conversation, Recorder
from tests.support.disk import FillingDisk

COMPLETED = (b'data: {"type":"response.completed","response":{"model":"m","usage":'
             b'{"input_tokens":7,"output_tokens":3,"total_tokens":10}}}\n\n')


@pytest.fixture
def log() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


def lines_of(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "a half-written last line"
    return [json.loads(line) for line in raw.splitlines()]


def session_file(root: Path, session: str) -> Path:
    return root / "by-agent" / "codex" / "by-session" / f"{session}.jsonl"


def record_exchange(recorder: Recorder, conversation: Conversation, number: int) -> None:
    request_id = f"r{number}"
    recorder.event(conversation, request_id, "subrouter_meta", {"n": number})
    recorder.body(conversation, request_id, f"b{number}", "upstream_to_client",
                  b"data: {\"i\": %d}\n\n" % number + COMPLETED, 200)
    recorder.body_end(conversation, request_id, f"b{number}")


def test_a_write_that_fails_part_way_leaves_no_partial_line(tmp_path: Path) -> None:
    disk = FillingDisk()
    recorder = Recorder(str(tmp_path))
    recorder.write = disk
    conversation = Conversation("codex", "s1")
    recorder.start()
    try:
        record_exchange(recorder, conversation, 1)
        recorder.flush()
        disk.full = True
        record_exchange(recorder, conversation, 2)
        recorder.flush()
        assert disk.failures >= 1
        lines = lines_of(session_file(tmp_path, "s1"))
        assert [e["payload"].get("n") for e in lines if e["type"] == "subrouter_meta"] == [1]
        # space comes back: the next events start on a line of their own
        disk.full = False
        record_exchange(recorder, conversation, 3)
        recorder.flush()
    finally:
        recorder.stop()
    lines = lines_of(session_file(tmp_path, "s1"))
    assert [e["payload"].get("n") for e in lines if e["type"] == "subrouter_meta"] == [1, 3]
    assert recorder.dropped >= 3  # the second exchange's meta, chunk and end
    # the summary counts only what was written
    (summary,) = recorder.summaries()
    assert summary.event_count == len(lines)


def test_a_flush_on_a_full_disk_returns_at_once(tmp_path: Path) -> None:
    disk = FillingDisk()
    disk.full, disk.room = True, 0
    recorder = Recorder(str(tmp_path))
    recorder.write = disk
    recorder.start()
    try:
        record_exchange(recorder, Conversation("codex", "s"), 1)
        started = time.monotonic()
        recorder.flush(timeout=5.0)
        assert time.monotonic() - started < 1.0
    finally:
        recorder.stop()


def test_a_partial_last_line_left_by_a_crash_is_cut_before_appending(tmp_path: Path) -> None:
    path = session_file(tmp_path, "crashed")
    path.parent.mkdir(parents=True)
    whole = json.dumps({"type": "subrouter_meta", "payload": {"n": 0}}) + "\n"
    path.write_text(whole + '{"type": "http_body_ch')
    recorder = Recorder(str(tmp_path))
    recorder.start()
    try:
        recorder.event(Conversation("codex", "crashed"), "r", "subrouter_meta", {"n": 1})
        recorder.flush()
    finally:
        recorder.stop()
    lines = lines_of(path)
    assert [e["payload"]["n"] for e in lines] == [0, 1]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                       check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected writer covers it")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True,
                       timeout=10)


def test_a_real_full_tmpfs_leaves_only_whole_lines(tiny_disk: Path) -> None:
    recorder = Recorder(str(tiny_disk))
    conversation = Conversation("codex", "big")
    recorder.start()
    try:
        number = 0
        while recorder.dropped == 0 and number < 400:
            number += 1
            record_exchange(recorder, conversation, number)
            recorder.body(conversation, "x", f"x{number}", "client_to_upstream",
                          os.urandom(900), None)
            recorder.body_end(conversation, "x", f"x{number}")
            recorder.flush()
        assert recorder.dropped > 0, "the disk never filled"
        before = lines_of(session_file(tiny_disk, "big"))
        # free space, record more: the file continues with whole lines
        (tiny_disk / "by-agent" / "codex" / "by-session" / "big.jsonl").write_bytes(b"")
        record_exchange(recorder, conversation, 10_000)
        recorder.flush()
    finally:
        recorder.stop()
    assert before
    after = lines_of(session_file(tiny_disk, "big"))
    assert any(e["payload"].get("n") == 10_000 for e in after)


# -- token usage rows on a full disk --------------------------------------------------------


def _usage_rows(count: int, start: float) -> list[Row]:
    return [Row.record(start + i, Origin("codex", f"c{i}", None, "acct"),
                       Usage(input_tokens=i + 1, total_tokens=i + 1, model="m"))
            for i in range(count)]


def _raw_lines(folder: Path) -> list[dict[str, Any]]:
    (raw,) = folder.glob("raw-*.jsonl")
    data = raw.read_bytes()
    assert not data or data.endswith(b"\n"), "a partial line was left"
    return [json.loads(line) for line in data.splitlines()]


def test_usage_rows_the_disk_refuses_are_held_and_written_once_it_takes_them(
    tmp_path: Path, log: list[dict[str, Any]]
) -> None:
    now = time.time()
    store = FileUsageStore(str(tmp_path / "usage"))
    disk = FillingDisk()
    store.write = disk
    store.open(now)
    store.append(_usage_rows(2, now - 100))
    disk.full = True
    store.append(_usage_rows(3, now - 50))  # a short write, then ENOSPC
    store.append(_usage_rows(2, now - 20))
    # only whole lines on disk; every row counted and held, none lost
    assert [r["total_tokens"] for r in _raw_lines(tmp_path / "usage")] == [1, 2]
    assert store.held == 5 and store.lost == 0
    assert sum(r.total_tokens for r in store.rows(now - 3600, now)[0]) == 3 + 6 + 3
    warnings = [e for e in log if "holding" in str(e.get("log_format", ""))]
    assert len(warnings) == 1  # once, not once per batch
    disk.full = False
    store.append(_usage_rows(1, now - 10))
    assert [r["total_tokens"] for r in _raw_lines(tmp_path / "usage")] == [1, 2, 1, 2, 3, 1, 2, 1]
    assert store.held == 0
    store.close()


def test_usage_rows_still_refused_at_stop_are_reported_lost_and_leave_no_partial_line(
    tmp_path: Path, log: list[dict[str, Any]]
) -> None:
    now = time.time()
    clock = [now]
    store = FileUsageStore(str(tmp_path / "usage"))
    disk = FillingDisk()
    store.write = disk
    ledger = Ledger(store, clock=lambda: clock[0], batch_wait=30.0)
    ledger.start()
    ledger.record(Origin("codex", "c1", None, "acct"), Usage(input_tokens=4, total_tokens=4))
    ledger.flush()
    disk.full = True
    for i in range(3):
        ledger.record(Origin("codex", f"d{i}", None, "acct"),
                      Usage(input_tokens=5, total_tokens=5))
    ledger.stop()  # no exception, whatever the disk does
    assert [r["session"] for r in _raw_lines(tmp_path / "usage")] == ["c1"]
    assert store.lost == 3
    errors = [e for e in log if "are lost" in str(e.get("log_format", ""))]
    assert len(errors) == 1 and errors[0]["count"] == 3
