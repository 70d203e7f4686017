# -*- test-case-name: tests.test_logs -*-
"""
Log output for the daemon: text or JSON lines, scrubbed of anything that
looks like a credential on the way out.

Subrouter never passes a secret to a logger; the scrubbing here is the second
line of defence, for text that comes from elsewhere (an upstream's error
message, a traceback). Under twistd, pick the JSON form with
``twistd --logger subrouter.logs.json_observer ...``.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

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


def json_observer(
    stream: IO[str] | None = None, level: LogLevel = LogLevel.info
) -> ILogObserver:
    """
    One JSON object per line, with every named field of each event, scrubbed.
    Usable as ``twistd --logger subrouter.logs.json_observer``.
    """
    out = ScrubbingStream(stream if stream is not None else sys.stdout)
    return _filtered(jsonFileLogObserver(out, recordSeparator=""), level)  # type: ignore[arg-type]
