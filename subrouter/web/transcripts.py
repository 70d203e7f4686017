# -*- test-case-name: tests.test_transcripts -*-
"""
``/_subrouter/transcripts``: the recorded sessions, and each session's events.

The list comes from the summaries the recorder keeps; a session's events are
read from its file off the reactor thread, a batch at a time, and streamed,
so a large transcript is never loaded whole. The plain view leaves bodies out
(``body_base64_redacted``); ``/raw`` decodes them (``body_text`` when UTF-8,
``body_base64`` otherwise), putting chunked bodies back together on their
summary event.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from subrouter.accounting.ledger import Ledger
from subrouter.errors import error_body, method_not_allowed
from subrouter.transcripts.recorder import Recorder

BATCH_BYTES = 256 * 1024
MAX_LINE = 32 * 1024 * 1024


def _arg(request: Request, name: bytes) -> str | None:
    values = (request.args or {}).get(name)
    if not values:
        return None
    return values[0].decode("utf-8", "replace") or None


class TranscriptsResource(Resource):
    """
    :param recorder: the recorder (None when recording is off).
    :param run_blocking: runs file work off the reactor thread.
    :param ledger: the token ledger, whose per-conversation sums fill each
        summary's ``usage``.
    """

    def __init__(self, recorder: Recorder | None,
                 run_blocking: Callable[[Callable[[], Any]], Deferred[Any]],
                 ledger: Ledger | None = None) -> None:
        super().__init__()
        self._recorder = recorder
        self._run_blocking = run_blocking
        self._ledger = ledger

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, b"GET, HEAD")
        return super().render(request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        segments = [path, *(request.postpath or [])]
        request.postpath = []
        return _Session(self._recorder, self._run_blocking, segments)

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        recorder = self._recorder
        if recorder is None:
            request.setResponseCode(404)
            return error_body("transcripts_off", "recording is off: start with --transcripts DIR")
        agent, user, account = _arg(request, b"agent"), _arg(request, b"user"), _arg(
            request, b"account")
        try:
            limit = max(1, min(int(_arg(request, b"limit") or 50), 1000))
            offset = max(0, int(_arg(request, b"offset") or 0))
        except ValueError:
            request.setResponseCode(400)
            return error_body("invalid_request", "limit and offset must be whole numbers")
        rows = [
            s.as_json() for s in recorder.summaries()
            if (agent is None or s.agent == agent)
            and (user is None or s.user == user)
            and (account is None or s.account == account)
        ]
        rows.sort(key=lambda r: r["last_event_at"] or 0, reverse=True)
        answer = {
            "sessions": rows[offset: offset + limit],
            "total": len(rows),
            "offset": offset,
            "limit": limit,
            "dropped_events": recorder.dropped,
        }
        ledger = self._ledger
        if ledger is None or not answer["sessions"]:
            return json.dumps(answer).encode()
        Deferred.fromCoroutine(self._with_usage(request, ledger, answer))
        return NOT_DONE_YET

    async def _with_usage(self, request: Request, ledger: Ledger,
                          answer: dict[str, Any]) -> None:
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        shown = answer["sessions"]
        wanted = {(r["agent"], r["session_id"]) for r in shown}
        sums = await self._run_blocking(lambda: ledger.usage_of_conversations(wanted))
        for row in shown:
            row["usage"] = sums.get((row["agent"], row["session_id"]), {})
        if not gone:
            request.write(json.dumps(answer).encode())
            request.finish()


class _Session(Resource):
    isLeaf = True

    def __init__(self, recorder: Recorder | None, run_blocking: Any,
                 segments: list[bytes]) -> None:
        super().__init__()
        self._recorder = recorder
        self._run_blocking = run_blocking
        self._segments = [s.decode("utf-8", "replace") for s in segments if s]

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, b"GET, HEAD")
        return super().render(request)

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        segments = self._segments
        raw = len(segments) == 3 and segments[2] == "raw"
        recorder = self._recorder
        if recorder is None or len(segments) not in (2, 3) or (len(segments) == 3 and not raw):
            request.setResponseCode(404)
            return error_body("not_found", "no such transcript")
        agent, session = segments[0], segments[1]
        Deferred.fromCoroutine(self._stream(request, recorder, agent, session, raw))
        return NOT_DONE_YET

    async def _stream(self, request: Request, recorder: Recorder, agent: str, session: str,
                      raw: bool) -> None:
        await self._run_blocking(recorder.flush)
        path = recorder.path_of(agent, session)
        if path is None:
            request.setResponseCode(404)
            request.write(error_body("not_found", f"no transcript for {agent}/{session}"))
            request.finish()
            return
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        request.write(json.dumps({"agent_type": agent, "session_id": session})[:-1].encode()
                      + b', "events": [')
        shaper = _Shaper(raw)
        offset = 0
        first = True
        while not gone:
            lines, offset = await self._run_blocking(lambda o=offset: _read_batch(path, o))
            if not lines:
                break
            out = []
            for line in lines:
                for event in shaper.shape(line):
                    out.append(("" if first else ",") + json.dumps(event))
                    first = False
            if out and not gone:
                request.write("".join(out).encode())
        if not gone:
            request.write(b"]}\n")
            request.finish()


def _read_batch(path: str, offset: int) -> tuple[list[bytes], int]:
    with open(path, "rb") as f:
        f.seek(offset)
        lines = []
        size = 0
        while size < BATCH_BYTES:
            line = f.readline(MAX_LINE)
            if not line or not line.endswith(b"\n"):
                break  # the end, or a line still being written
            lines.append(line)
            size += len(line)
        return lines, offset + size


class _Shaper:
    """
    Turns stored events into what the endpoint shows.
    """

    def __init__(self, raw: bool) -> None:
        self.raw = raw
        self.bodies: dict[str, list[bytes]] = {}

    def shape(self, line: bytes) -> list[dict[str, Any]]:
        try:
            event = json.loads(line)
        except ValueError:
            return [{"type": "unreadable_line", "payload": {}}]
        payload = event.get("payload") if isinstance(event, dict) else None
        if not isinstance(payload, dict):
            return [event]
        encoded = payload.pop("body_base64", None)
        if not self.raw:
            if encoded is not None:
                payload["body_base64_redacted"] = True
            return [event]
        stream = payload.get("stream_id")
        if payload.get("body_chunk") and isinstance(stream, str):
            self.bodies.setdefault(stream, []).append(_decode(encoded))
            return [event]
        if payload.get("body_chunked") and isinstance(stream, str):
            _attach(payload, b"".join(self.bodies.pop(stream, [])))
        elif encoded is not None:
            _attach(payload, _decode(encoded))
        return [event]


def _decode(encoded: Any) -> bytes:
    if not isinstance(encoded, str):
        return b""
    try:
        return base64.b64decode(encoded)
    except ValueError:
        return b""


def _attach(payload: dict[str, Any], body: bytes) -> None:
    try:
        payload["body_text"] = body.decode("utf-8")
    except UnicodeDecodeError:
        payload["body_base64"] = base64.b64encode(body).decode("ascii")
