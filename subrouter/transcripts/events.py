# -*- test-case-name: tests.test_transcripts -*-
"""
The shapes of transcript events. Pure functions: no I/O.

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
