"""
Transcripts over real sockets: what is recorded for HTTP, SSE and WebSocket
traffic, the redaction, the browsing endpoints (with the token ledger's
usage per session), and that a
full queue or a broken disk never hurts a request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.web.http_headers import Headers

from subrouter.transcripts.events import safe_name
from subrouter.transcripts.recorder import Conversation, Recorder
from tests.support.daemon import Daemon, make_config, read_all, sleep, start_daemon
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, json_response, sse, write_oauth_account

FAR = time.time() + 30 * 86400
EMAIL = "rec@example.com"
COMPLETED = {"type": "response.completed", "response": {
    "model": "gpt-5-codex",
    "usage": {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 40},
              "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 5},
              "total_tokens": 120}}}


async def recording_daemon(tmp_path: Path, upstream: FakeUpstream, ca: TestCA,
                           **kw: Any) -> Daemon:
    write_oauth_account(tmp_path / "accounts-store", EMAIL, exp=FAR)
    daemon = await start_daemon(make_config(tmp_path, upstream, ca,
                                            transcripts=str(tmp_path / "tx"), **kw))
    await daemon.wait_for_accounts(1)
    return daemon


async def ledger_rows(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    """
    The token ledger's rows once ``count`` are written (within a few seconds).
    """
    deadline = time.monotonic() + 5
    while True:
        rows = [json.loads(line) for path in (tmp_path / "state" / "usage").glob("raw-*")
                for line in path.read_text().splitlines()]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await sleep(0.05)


def events_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def settled(daemon: Daemon, session: str) -> list[dict[str, Any]]:
    path = daemon.accounts_dir.parent / "tx" / "by-agent" / "codex" / "by-session" / (
        safe_name(session) + ".jsonl")
    deadline = time.monotonic() + 5
    while True:
        if path.exists():
            events = events_of(path)
            if events and events[-1]["type"] == "http_body" and events[-1]["payload"][
                    "direction"] == "upstream_to_client":
                return events
        assert time.monotonic() < deadline, "the transcript was never written"
        await sleep(0.02)


@pytest_twisted.ensureDeferred
async def test_an_sse_exchange_is_recorded_whole_and_redacted(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    daemon = await recording_daemon(tmp_path, upstream, ca)
    try:
        upstream.script(b"/backend-api/codex/responses",
                        sse(['{"type":"response.created"}', json.dumps(COMPLETED)]))
        body = json.dumps({"input": "x" * 200_000}).encode()  # several 64 KiB pieces
        headers = Headers({b"session-id": [b"sess-1"], b"authorization": [b"Bearer client-tok"],
                           b"x-subrouter-user-email": [b"Dev@Example.com"],
                           b"cookie": [b"a=b"]})
        response = await daemon.request("POST", "/v1/responses", data=body, headers=headers)
        received = await read_all(response)
        events = await settled(daemon, "sess-1")
    finally:
        await daemon.stop()
    meta = events[0]
    assert meta["type"] == "subrouter_meta"
    payload = meta["payload"]
    assert payload["transport"] == "http" and payload["account"] == EMAIL
    assert payload["user"] == "dev@example.com" and payload["path"] == "/v1/responses"
    assert payload["upstream"].endswith("/backend-api/codex/responses")
    assert payload["headers"]["authorization"] == ["<redacted>"]
    assert payload["headers"]["cookie"] == ["<redacted>"]
    for event in events:
        p = event["payload"]
        assert p["agent_type"] == "codex" and p["session_id"] == "sess-1"
        assert p["codex_session_id"] == "sess-1" and p["request_id"] == payload["request_id"]
        assert event["timestamp"].endswith("Z")

    def body_of(direction: str) -> tuple[bytes, dict[str, Any]]:
        chunks = [e["payload"] for e in events if e["type"] == "http_body_chunk"
                  and e["payload"]["direction"] == direction]
        data = b""
        for chunk in chunks:
            piece = base64.b64decode(chunk["body_base64"])
            assert len(piece) == chunk["chunk_bytes"] <= 64 * 1024
            assert hashlib.sha256(piece).hexdigest() == chunk["chunk_sha256"]
            assert chunk["offset"] == len(data)
            data += piece
        (summary,) = [e["payload"] for e in events if e["type"] == "http_body"
                      and e["payload"]["direction"] == direction]
        assert summary["bytes"] == len(data) and summary["chunks"] == len(chunks)
        assert summary["sha256"] == hashlib.sha256(data).hexdigest()
        return data, summary

    sent, _ = body_of("client_to_upstream")
    assert sent == body
    got, summary = body_of("upstream_to_client")
    assert got == received and summary["status"] == 200
    text = "".join(p.read_text() for p in (tmp_path / "tx").rglob("*") if p.is_file())
    access = json.loads((daemon.accounts_dir / "accounts" / f"{EMAIL}.json").read_text())[
        "auth"]["tokens"]["access_token"]
    assert access not in text and "client-tok" not in text
    # token usage goes to the ledger under the state dir, not the transcripts
    assert not (tmp_path / "tx" / "usage.jsonl").exists()
    usage = await ledger_rows(tmp_path, 1)
    assert usage == [{
        "t": usage[0]["t"], "agent": "codex", "session": "sess-1", "account": EMAIL,
        "user": "dev@example.com", "model": "gpt-5-codex", "provider": "openai",
        "input_tokens": 100, "cached_input_tokens": 40, "output_tokens": 20,
        "reasoning_tokens": 5, "total_tokens": 120,
    }]
    folder = tmp_path / "tx" / "by-agent" / "codex" / "by-session"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "sess-1.jsonl").stat().st_mode) == 0o600


@pytest_twisted.ensureDeferred
async def test_browsing_lists_sessions_and_serves_events_plain_and_raw(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    daemon = await recording_daemon(tmp_path, upstream, ca)
    try:
        upstream.script(b"/backend-api/codex/responses", json_response(200, COMPLETED))
        for session in ("s-a", "s-b"):
            response = await daemon.request(
                "POST", "/v1/responses", data=b'{"q":1}',
                headers=Headers({b"session-id": [session.encode()]}))
            await read_all(response)
            await settled(daemon, session)
        response = await daemon.request("GET", "/v1/models")  # excluded by default
        await read_all(response)
        assert len(await ledger_rows(tmp_path, 2)) == 2
        listing = await daemon.get_json("/_subrouter/transcripts?limit=1")
        assert listing["total"] == 2 and len(listing["sessions"]) == 1
        full = await daemon.get_json("/_subrouter/transcripts")
        row = {r["session_id"]: r for r in full["sessions"]}["s-a"]
        assert row["account"] == EMAIL and row["event_count"] >= 5
        assert row["usage"]["total_tokens"] == 120 and row["usage"]["requests"] == 1
        assert (await daemon.get_json(f"/_subrouter/transcripts?account={EMAIL}"))["total"] == 2
        assert (await daemon.get_json("/_subrouter/transcripts?agent=claude"))["total"] == 0
        plain = await daemon.get_json("/_subrouter/transcripts/codex/s-a")
        assert plain["session_id"] == "s-a"
        assert all("body_base64" not in e["payload"] for e in plain["events"])
        assert any(e["payload"].get("body_base64_redacted") for e in plain["events"])
        raw = await daemon.get_json("/_subrouter/transcripts/codex/s-a/raw")
        bodies = [e["payload"].get("body_text") for e in raw["events"] if e["type"] == "http_body"]
        assert '{"q":1}' in bodies and json.dumps(COMPLETED) in bodies
        missing = await daemon.request("GET", "/_subrouter/transcripts/codex/nope")
        assert missing.code == 404
        await read_all(missing)
        assert not list((tmp_path / "tx").rglob("*models*"))
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_a_broken_disk_never_hurts_a_request(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    (tmp_path / "tx").mkdir()
    (tmp_path / "tx" / "by-agent").write_text("a file where a folder should be")
    daemon = await recording_daemon(tmp_path, upstream, ca)
    try:
        for _ in range(3):
            response = await daemon.request("POST", "/v1/responses", data=b"{}",
                                            headers=Headers({b"session-id": [b"x"]}))
            assert response.code == 200
            await read_all(response)
        listing = await daemon.get_json("/_subrouter/transcripts")
        deadline = time.monotonic() + 5
        while listing["dropped_events"] == 0:
            assert time.monotonic() < deadline
            await sleep(0.05)
            listing = await daemon.get_json("/_subrouter/transcripts")
        assert listing["dropped_events"] > 0
    finally:
        await daemon.stop()


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path), max_queue_bytes=1000)
    conversation = Conversation("codex", "s")
    # not started: nothing drains the queue
    for _ in range(10):
        recorder.body(conversation, "r", "b", "upstream_to_client", b"x" * 400)
    assert recorder.dropped == 10
    recorder.start()
    try:
        for _ in range(2):
            recorder.body(conversation, "r", "b", "upstream_to_client", b"x" * 400)
        recorder.body_end(conversation, "r", "b")
        recorder.flush()
    finally:
        recorder.stop()
    assert recorder.written > 0


def test_client_ids_cannot_escape_the_folder(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path / "tx"))
    recorder.start()
    try:
        for evil in ("../../etc/passwd", "/abs/path", "..", "a/../../b", "", "a\x00b"):
            recorder.event(Conversation("../x", evil), "r", "subrouter_meta", {})
        recorder.flush()
    finally:
        recorder.stop()
    for path in (tmp_path / "tx").rglob("*"):
        assert str(path.resolve()).startswith(str((tmp_path / "tx").resolve()))
    assert not (tmp_path / "etc").exists()
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert safe_name("..") == "unknown"


def test_retention_deletes_idle_sessions(tmp_path: Path) -> None:
    now = [1_000_000.0]
    recorder = Recorder(str(tmp_path), clock=lambda: now[0])
    recorder.start()
    try:
        recorder.event(Conversation("codex", "old"), "r", "subrouter_meta", {})
        now[0] += 40 * 86400
        recorder.event(Conversation("codex", "new"), "r", "subrouter_meta", {})
        recorder.expire(30 * 86400)
        recorder.flush()
        names = sorted(p.name for p in (tmp_path / "by-agent" / "codex" / "by-session")
                       .iterdir())
    finally:
        recorder.stop()
    assert names == ["new.jsonl", "new.summary.json"]
    assert [s.session_id for s in recorder.summaries()] == ["new"]


def test_summaries_survive_a_restart(tmp_path: Path) -> None:
    recorder = Recorder(str(tmp_path))
    recorder.start()
    recorder.event(Conversation("codex", "kept", "u@x.com", "a@x.com"), "r", "subrouter_meta",
                   {"user": "u@x.com", "account": "a@x.com"})
    recorder.flush()
    recorder.stop()
    again = Recorder(str(tmp_path))
    again.start()
    try:
        (summary,) = again.summaries()
    finally:
        again.stop()
    assert (summary.session_id, summary.account, summary.event_count) == ("kept", "a@x.com", 1)


def test_safe_names_stay_in_their_folder() -> None:
    assert os.sep not in safe_name("a/b")
    assert safe_name("../..") == "unknown"
