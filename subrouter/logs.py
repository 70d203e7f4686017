# -*- test-case-name: tests.test_redact -*-
"""
Log output for the daemon: text or JSON lines, scrubbed of anything that
looks like a credential on the way out.

Subrouter never passes a secret to a logger; the scrubbing here is the second
line of defence, for text that comes from elsewhere (an upstream's error
message, a traceback). Under twistd, pick the JSON form with
``twistd --logger subrouter.logs.json_observer ...``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)
from zope.interface import implementer

from subrouter.redact import scrub_text


class ScrubbingStream:
    """
    A text stream that scrubs credentials from everything written to it.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(scrub_text(text))

    def flush(self) -> None:
        self._stream.flush()


def _filtered(observer: ILogObserver, level: LogLevel) -> ILogObserver:
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    return FilteringLogObserver(observer, [predicate])


def text_observer(
    stream: IO[str] | None = None, level: LogLevel = LogLevel.info
) -> ILogObserver:
    """
    Human-readable log lines (the default), scrubbed.
    """
    out = ScrubbingStream(stream if stream is not None else sys.stdout)
    return _filtered(textFileLogObserver(out), level)  # type: ignore[arg-type]


_LEGACY_KEYS = frozenset({"message", "time", "system", "isError", "format", "failure", "why"})


def event_as_json_line(event: dict[str, Any]) -> str:
    """
    One log event as a flat JSON object: ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message`` (the formatted text), ``error`` (a traceback, for
    failures), and every named field the event was logged with.
    """
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0.0), UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": getattr(event.get("log_level"), "name", "info"),
        "logger": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
            continue
        record[key] = value
    return json.dumps(record, default=repr) + "\n"


@implementer(ILogObserver)
class _JSONLinesObserver:
    def __init__(self, stream: ScrubbingStream) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        self._stream.write(event_as_json_line(event))
        self._stream.flush()


def json_observer(
    stream: IO[str] | None = None, level: LogLevel = LogLevel.info
) -> ILogObserver:
    """
    One JSON object per line (see :func:`event_as_json_line`), scrubbed.
    Usable as ``twistd --logger subrouter.logs.json_observer``.
    """
    out = ScrubbingStream(stream if stream is not None else sys.stdout)
    return _filtered(_JSONLinesObserver(out), level)
