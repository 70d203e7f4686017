# -*- test-case-name: tests.test_accounting -*-
"""
Token usage read from response bodies, provider-neutral. Pure: no I/O.

Two halves. :class:`BodyScan` runs on the request path and only *finds* the
few lines of a body that can carry usage (a substring search per chunk, no
parsing); :func:`usage_from_payloads` runs on the accounting thread and turns
those lines into :class:`Usage` records.

Every provider's counts are normalised to one shape: ``input_tokens`` is every
prompt token (OpenAI's ``input_tokens``/``prompt_tokens``; Anthropic's
``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``),
``cached_input_tokens`` the part read from the prompt cache,
``cache_write_tokens`` the part written to it (Anthropic only),
``output_tokens`` every generated token, ``reasoning_tokens`` the part of the
output spent reasoning, ``total_tokens`` input plus output unless the
provider says otherwise. So ``cached_input_tokens / input_tokens`` is the
cache-hit ratio for every provider.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

#: the token counters of a record, in display order
TOKEN_FIELDS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "total_tokens",
)
#: the providers whose bodies :func:`usage_from_payloads` reads
PROVIDERS = ("openai", "anthropic")
#: the longest line (or whole JSON body) looked at for usage
MAX_PAYLOAD = 8 * 1024 * 1024

_KEY = b'"usage"'
# a usage *object* (not ``"usage":null``, which every ``response.created`` has)
_OBJECT = (b'"usage":{', b'"usage": {')


@attrs.frozen
class Usage:
    """
    The tokens one model response spent.
    """

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0
    model: str | None = None

    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in TOKEN_FIELDS)


@attrs.frozen
class Origin:
    """
    Who spent the tokens: the conversation, its user, the account that
    answered, and how the answer came.

    :ivar provider: whose account answered, as the account store names it
        (``openai`` for ChatGPT logins and OpenAI keys, ``anthropic`` for
        Claude profiles and Anthropic keys); it also says whose body shapes
        to read.
    :ivar transport: ``http`` or ``websocket``.
    """

    agent: str
    session: str
    user: str | None = None
    account: str | None = None
    provider: str = "openai"
    transport: str = "http"


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return max(0, int(value))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def openai_usage(document: Any) -> Usage | None:
    """
    The usage of a Responses event that holds a response
    (``response.completed``, ``response.incomplete``, ``response.failed``), a
    Responses answer, or a Chat Completions answer or final stream chunk;
    None when it carries none.
    """
    if not isinstance(document, dict):
        return None
    inner = document.get("response")
    source = inner if isinstance(inner, dict) else document
    usage = source.get("usage")
    if not isinstance(usage, dict):
        return None
    details_in = _dict(usage.get("input_tokens_details") or usage.get("prompt_tokens_details"))
    details_out = _dict(
        usage.get("output_tokens_details") or usage.get("completion_tokens_details")
    )
    input_tokens = _count(usage.get("input_tokens", usage.get("prompt_tokens")))
    output_tokens = _count(usage.get("output_tokens", usage.get("completion_tokens")))
    model = source.get("model")
    found = Usage(
        input_tokens=input_tokens,
        cached_input_tokens=_count(details_in.get("cached_tokens")),
        output_tokens=output_tokens,
        reasoning_tokens=_count(details_out.get("reasoning_tokens")),
        total_tokens=_count(usage.get("total_tokens")) or input_tokens + output_tokens,
        model=model if isinstance(model, str) else None,
    )
    return None if found.is_empty() else found


class AnthropicFold:
    """
    One Anthropic Messages response from its events: ``message_start``
    carries the prompt's counts and the model, each ``message_delta`` the
    output so far (cumulative, so the last one wins). A whole (non-streamed)
    ``message`` answer is one document.
    """

    def __init__(self) -> None:
        self.model: str | None = None
        self.fresh = 0
        self.cache_read = 0
        self.cache_write = 0
        self.output = 0
        self.seen = False

    def add(self, document: Any) -> None:
        if not isinstance(document, dict):
            return
        kind = document.get("type")
        if kind == "message_start":
            message = _dict(document.get("message"))
        elif kind == "message":
            message = document
        elif kind == "message_delta":
            message = {"usage": document.get("usage")}
        else:
            return
        model = message.get("model")
        if isinstance(model, str):
            self.model = model
        usage = message.get("usage")
        if not isinstance(usage, dict):
            return
        self.seen = True
        # later events may repeat the prompt's counts: keep the largest seen
        self.fresh = max(self.fresh, _count(usage.get("input_tokens")))
        self.cache_read = max(self.cache_read, _count(usage.get("cache_read_input_tokens")))
        self.cache_write = max(
            self.cache_write, _count(usage.get("cache_creation_input_tokens"))
        )
        self.output = max(self.output, _count(usage.get("output_tokens")))

    def usage(self) -> Usage | None:
        if not self.seen:
            return None
        prompt = self.fresh + self.cache_read + self.cache_write
        found = Usage(
            input_tokens=prompt,
            cached_input_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
            output_tokens=self.output,
            total_tokens=prompt + self.output,
            model=self.model,
        )
        return None if found.is_empty() else found


def _json_of(payload: bytes) -> Any:
    payload = payload.strip()
    if payload.startswith(b"data:"):
        payload = payload[5:].strip()
    if not payload or payload == b"[DONE]":
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return None


def usage_from_payloads(provider: str, payloads: Iterable[bytes]) -> list[Usage]:
    """
    The usage records in the payloads :class:`BodyScan` found in one answer
    (SSE lines with or without ``data:``, NDJSON lines, a whole JSON body, or
    one WebSocket message each).

    OpenAI shapes give one record per payload that holds usage; Anthropic's
    events of one answer fold into one record.
    """
    if provider == "anthropic":
        fold = AnthropicFold()
        for payload in payloads:
            fold.add(_json_of(payload))
        one = fold.usage()
        return [one] if one is not None else []
    found = []
    for payload in payloads:
        usage = openai_usage(_json_of(payload))
        if usage is not None:
            found.append(usage)
    return found


def may_hold_usage(payload: bytes | bytearray) -> bool:
    """
    Whether a line or message can hold a usage object: a substring test, no
    parsing (an escaped ``\\"usage\\"`` inside a string never matches).
    """
    return _KEY in payload and any(marker in payload for marker in _OBJECT)


class BodyScan:
    """
    Finds, as a response body streams through, the payloads that may carry
    token usage. Cheap enough for the request path: per chunk one search for
    the last newline and one substring search; nothing is parsed.

    :param streaming: True for ``text/event-stream`` (and NDJSON), where
        usage sits on a line of its own; False for a JSON answer, kept whole
        (up to :data:`MAX_PAYLOAD`) since it may be pretty-printed.
    """

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.found: list[bytes] = []
        self._tail = bytearray()
        self._chunks: list[bytes] | None = None if streaming else []
        self._size = 0
        self._skipping = False
        #: payloads given up because they were longer than MAX_PAYLOAD
        self.oversized = 0

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if not self.streaming:
            chunks = self._chunks
            if chunks is not None:
                self._size += len(data)
                if self._size > MAX_PAYLOAD:
                    self._chunks = None
                    self.oversized += 1
                else:
                    chunks.append(data)
            return
        end = data.rfind(b"\n")
        if end < 0:
            if not self._skipping:
                self._tail += data
                if len(self._tail) > MAX_PAYLOAD:
                    self._tail.clear()
                    self._skipping = True
                    self.oversized += 1
            return
        if self._skipping:
            # the oversized line ends at this chunk's first newline
            start = data.find(b"\n") + 1
            self._skipping = False
            if start <= end and data.find(_KEY, start, end) >= 0:
                self._collect(data[start:end])
        elif self._tail:
            self._tail += data[:end]
            if len(self._tail) > MAX_PAYLOAD:
                self.oversized += 1
            elif _KEY in self._tail:
                self._collect(bytes(self._tail))
            self._tail.clear()
        elif data.find(_KEY, 0, end) >= 0:
            self._collect(data[:end])
        if end + 1 < len(data):
            self._tail += data[end + 1 :]

    def _collect(self, segment: bytes) -> None:
        for line in segment.split(b"\n"):
            if may_hold_usage(line):
                self.found.append(line)

    def finish(self) -> list[bytes]:
        """
        The payloads found, once the body has ended.
        """
        if self.streaming:
            if self._tail and not self._skipping and may_hold_usage(self._tail):
                self.found.append(bytes(self._tail))
            self._tail.clear()
            return self.found
        chunks = self._chunks
        self._chunks = None
        if not chunks:
            return []
        whole = b"".join(chunks)
        return [whole] if _KEY in whole else []


def is_streaming(content_type: bytes | None) -> bool:
    """
    Whether an answer of this type carries usage on a line of its own.
    """
    if not content_type:
        return False
    lowered = content_type.lower()
    return b"event-stream" in lowered or b"ndjson" in lowered or b"jsonl" in lowered


def joined(payloads: Sequence[bytes]) -> int:
    """
    The bytes held by some payloads (for the queue's bound).
    """
    return sum(len(p) for p in payloads)
