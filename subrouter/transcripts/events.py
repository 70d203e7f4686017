# -*- test-case-name: tests.test_transcript_events -*-
"""
The shapes of transcript events, and token usage read from response bodies.
Pure functions: no I/O.

Every event is one JSON line ``{"timestamp", "type", "payload"}``; every
payload carries ``agent_type``, ``session_id``, ``agent_session_id``,
``request_id`` and, for Codex, ``codex_session_id``. Bodies are stored as
base64 with their byte count and SHA-256, split into pieces of at most 64 KiB
(``http_body_chunk``) followed by a summary (``http_body``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from subrouter.redact import REDACTED, SECRET_HEADERS
from subrouter.timefmt import rfc3339_micro as timestamp

CHUNK = 64 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(value: str) -> str:
    """
    A file name from a client-sent id: runs of anything outside
    ``[A-Za-z0-9._-]`` become ``_``, leading and trailing ``._-`` go, and an
    empty result becomes ``unknown``. No id can name a path outside its folder.
    """
    cleaned = _UNSAFE.sub("_", value).strip("._-")[:200]
    return cleaned or "unknown"


def redact_headers(pairs: Iterable[tuple[bytes, Sequence[bytes]]]) -> dict[str, list[str]]:
    """
    Headers as ``{name: [values]}``, credentials replaced by ``<redacted>``.
    """
    out: dict[str, list[str]] = {}
    for name, values in pairs:
        key = name.decode("latin-1").lower()
        if key in SECRET_HEADERS:
            out[key] = [REDACTED]
        else:
            out.setdefault(key, []).extend(v.decode("latin-1") for v in values)
    return out


def envelope(kind: str, at: float, identity: dict[str, Any], payload: dict[str, Any]) -> str:
    """
    One JSON line for an event.
    """
    body = dict(identity)
    body.update(payload)
    return json.dumps(
        {"timestamp": timestamp(at), "type": kind, "payload": body},
        separators=(",", ":"),
        ensure_ascii=False,
    ) + "\n"


def body_pieces(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """
    ``data`` in pieces of at most 64 KiB, with their offsets in the body.
    """
    for start in range(0, len(data), CHUNK):
        yield offset + start, data[start : start + CHUNK]


def chunk_payload(direction: str, stream_id: str, index: int, offset: int,
                  piece: bytes) -> dict[str, Any]:
    return {
        "direction": direction,
        "stream_id": stream_id,
        "body_chunk": True,
        "chunk_index": index,
        "offset": offset,
        "chunk_bytes": len(piece),
        "chunk_sha256": hashlib.sha256(piece).hexdigest(),
        "body_base64": base64.b64encode(piece).decode("ascii"),
    }


# -- token usage ---------------------------------------------------------------

USAGE_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
                "total_tokens", "cache_creation_input_tokens")


def _count(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def anthropic_usage(usage: dict[str, Any], model: Any, output: bool = True) -> dict[str, Any]:
    """
    An Anthropic ``usage`` object in the provider-neutral shape.

    Anthropic counts cache reads and cache writes apart from ``input_tokens``;
    OpenAI's ``input_tokens`` includes the cached part. So that totals and
    cache-hit ratios (cached input / input) mean the same for both, the
    neutral ``input_tokens`` is all three, ``cached_input_tokens`` the cache
    reads, and ``cache_creation_input_tokens`` the cache writes.

    :param output: whether its ``output_tokens`` count (``message_start``
        carries a placeholder that ``message_delta`` replaces).
    """
    fresh = _count(usage.get("input_tokens"))
    written = _count(usage.get("cache_creation_input_tokens"))
    read = _count(usage.get("cache_read_input_tokens"))
    out = _count(usage.get("output_tokens")) if output else 0
    return {
        "input_tokens": fresh + written + read,
        "cached_input_tokens": read,
        "cache_creation_input_tokens": written,
        "output_tokens": out,
        "reasoning_tokens": 0,
        "total_tokens": fresh + written + read + out,
        "model": model if isinstance(model, str) else None,
    }


def _anthropic_event(
    document: dict[str, Any], state: dict[str, Any] | None
) -> dict[str, Any] | None:
    """
    Usage from a Messages stream event: ``message_start`` holds the input side
    (kept in ``state`` until the turn's ``message_delta``, which holds the
    final output count), so one turn gives one record. Without ``state`` each
    event gives its own part.
    """
    kind = document.get("type")
    if kind == "message_start":
        message = document.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("usage"), dict):
            return None
        start = anthropic_usage(message["usage"], message.get("model"), output=False)
        if state is None:
            return start
        state["start"] = start
        return None
    usage = document.get("usage")
    if not isinstance(usage, dict):
        return None
    start = (state or {}).pop("start", None)
    if start is None:
        record = anthropic_usage({"output_tokens": usage.get("output_tokens")}, None)
    else:
        record = dict(start)
        record["output_tokens"] = _count(usage.get("output_tokens"))
        record["total_tokens"] = record["input_tokens"] + record["output_tokens"]
    return record if any(v for k, v in record.items() if k != "model") else None


def usage_of(document: Any, state: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """
    Token usage and model of a ``response.completed`` event, a Responses
    answer, a Chat Completions answer, an Anthropic Messages answer or its
    stream's ``message_start``/``message_delta``; None when it carries none.

    :param state: per-stream memory joining an Anthropic turn's events.
    """
    if not isinstance(document, dict):
        return None
    kind = document.get("type")
    if kind in ("message_start", "message_delta"):
        return _anthropic_event(document, state)
    if kind == "message" and isinstance(document.get("usage"), dict):
        # a whole Messages answer (Responses and Chat Completions answers
        # name their ``object`` instead)
        whole = anthropic_usage(document["usage"], document.get("model"))
        return whole if whole["total_tokens"] else None
    inner = document.get("response")
    source: dict[str, Any] = inner if isinstance(inner, dict) else document
    usage = source.get("usage")
    if not isinstance(usage, dict):
        return None

    def number(value: Any) -> int:
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0

    details_in = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
    details_out = (
        usage.get("output_tokens_details") or usage.get("completion_tokens_details") or {}
    )
    record: dict[str, Any] = {
        "input_tokens": number(usage.get("input_tokens", usage.get("prompt_tokens"))),
        "cached_input_tokens": number(
            details_in.get("cached_tokens") if isinstance(details_in, dict) else 0
        ),
        "output_tokens": number(usage.get("output_tokens", usage.get("completion_tokens"))),
        "reasoning_tokens": number(
            details_out.get("reasoning_tokens") if isinstance(details_out, dict) else 0
        ),
        "total_tokens": number(usage.get("total_tokens")),
    }
    if not record["total_tokens"]:
        record["total_tokens"] = record["input_tokens"] + record["output_tokens"]
    if not any(record.values()):
        return None
    model = source.get("model")
    record["model"] = model if isinstance(model, str) else None
    return record


def usage_in_lines(
    lines: Iterable[bytes], state: dict[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """
    Usage records in SSE or NDJSON lines (``data:`` stripped, ``[DONE]`` and
    blank lines skipped). Only lines that can hold usage are parsed.

    :param state: per-stream memory (see :func:`usage_of`); give the same
        dict for every call on one stream.
    """
    for line in lines:
        line = line.strip()
        if line.startswith(b"data:"):
            line = line[5:].strip()
        if not line or line == b"[DONE]" or b'"usage"' not in line:
            continue
        try:
            found = usage_of(json.loads(line), state)
        except ValueError:
            continue
        if found is not None:
            yield found
