# -*- test-case-name: tests.test_redact -*-
"""
Log output for the daemon: text or JSON lines, scrubbed of anything that
looks like a credential on the way out.

Subrouter never passes a secret to a logger; the scrubbing here is the second
line of defence, for text that comes from elsewhere (an upstream's error
message, a traceback). ``twistd -n subrouter`` printing to stdout logs
through :func:`text_observer` too (``tap.makeService`` hands it to twistd);
pick the JSON form with ``twistd --logger subrouter.logs.json_observer ...``.

``subrouter serve --log-file PATH`` writes to a :class:`ReopenableFile`,
which SIGHUP reopens (:func:`reopen_log_files`) after logrotate moved it.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from time import time
from typing import IO, Any, Protocol

from twisted.logger import (
    ILogObserver,
    LogLevel,
    formatEvent,
    formatTime,
    textFileLogObserver,
)
from twisted.logger import Logger as _TwistedLogger
from zope.interface import implementer

from subrouter.redact import scrub_text


class Writable(Protocol):
    """
    Where log text goes: a text stream, or a :class:`ReopenableFile`.
    """

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


class ScrubbingStream:
    """
    A text stream that scrubs credentials from everything written to it.
    """

    def __init__(self, stream: Writable) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(scrub_text(text))

    def flush(self) -> None:
        self._stream.flush()


#: every log level there is
_LEVELS = frozenset(LogLevel.iterconstants())


class Logger(_TwistedLogger):
    """
    Twisted's ``Logger``, whose ``emit`` checks the level with one set lookup.
    Twisted's sorts ``LogLevel``'s constants on every event to check it; the
    proxy emits one line per request. Events are the same, to the key.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level not in _LEVELS:
            # an invalid level: Twisted reports it as such
            super().emit(level, format, **kwargs)
            return
        kwargs.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            log_time=time(),
        )
        if "log_trace" in kwargs:
            kwargs["log_trace"].append((self, self.observer))  # type: ignore[attr-defined]
        self.observer(kwargs)


@implementer(ILogObserver)
class _AtLeast:
    """
    Passes on the events of ``level`` and above; drops the rest, and events
    without a level. What Twisted's ``FilteringLogObserver`` with a
    ``LogLevelFilterPredicate`` does when no namespace has a level of its
    own (Subrouter sets none), with one set lookup per event instead of a
    walk up the event's namespace.
    """

    def __init__(self, observer: ILogObserver, level: LogLevel) -> None:
        self._observer = observer
        self._levels = frozenset(known for known in _LEVELS if known >= level)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level") in self._levels:
            if "log_trace" in event:
                event["log_trace"].append((self, self._observer))
            self._observer(event)


def _filtered(observer: ILogObserver, level: LogLevel) -> ILogObserver:
    return _AtLeast(observer, level)


@implementer(ILogObserver)
class _TextObserver:
    """
    Twisted's text log lines, the same to the character, with the most
    common one made cheaply: the proxy's one line per request (its text built
    already, see ``proxy/resource.py``) skips the format-string parsing and
    gets its timestamp from a cache kept per second. Every other event is
    formatted by Twisted.
    """

    def __init__(self, stream: Writable) -> None:
        self._stream = stream
        self._classic = textFileLogObserver(stream)  # type: ignore[arg-type]
        self._second: int | None = None
        self._stamp = ""

    def __call__(self, event: dict[str, Any]) -> None:
        when = event.get("log_time")
        level = event.get("log_level")
        if (
            event.get("log_format") != "{request_line}"
            or when is None or level is None
            or "log_system" in event or "log_failure" in event
            or not event.get("request_line")
        ):
            self._classic(event)
            return
        second = int(when)
        if second != self._second:
            self._stamp = formatTime(when)
            self._second = second
        line = str(event.get("request_line", "")).replace("\n", "\n\t")
        namespace = event.get("log_namespace", "-")
        self._stream.write(f"{self._stamp} [{namespace}#{level.name}] {line}\n")
        self._stream.flush()


def text_observer(
    stream: Writable | None = None, level: LogLevel = LogLevel.info
) -> ILogObserver:
    """
    Human-readable log lines (the default), scrubbed.
    """
    out = ScrubbingStream(stream if stream is not None else sys.stdout)
    return _filtered(_TextObserver(out), level)


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
    stream: Writable | None = None, level: LogLevel = LogLevel.info
) -> ILogObserver:
    """
    One JSON object per line (see :func:`event_as_json_line`), scrubbed.
    Usable as ``twistd --logger subrouter.logs.json_observer``.
    """
    out = ScrubbingStream(stream if stream is not None else sys.stdout)
    return _filtered(_JSONLinesObserver(out), level)


#: every log file opened by :class:`ReopenableFile`, for SIGHUP
_OPEN_LOG_FILES: list[ReopenableFile] = []


class ReopenableFile:
    """
    A log file opened for appending, private (0600), that can be reopened
    by path: after logrotate renames it, SIGHUP makes the daemon write to a
    new file of the old name.

    :param path: the file; created when missing.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self._file = self._open()
        _OPEN_LOG_FILES.append(self)

    def _open(self) -> IO[str]:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def write(self, text: str) -> int:
        return self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def reopen(self) -> None:
        fresh = self._open()
        stale, self._file = self._file, fresh
        stale.close()

    def close(self) -> None:
        self._file.close()
        if self in _OPEN_LOG_FILES:
            _OPEN_LOG_FILES.remove(self)


def reopen_log_files() -> list[str]:
    """
    Reopen every :class:`ReopenableFile`; return the paths reopened (a file
    that cannot be reopened keeps the old one and is left out).
    """
    done = []
    for log_file in list(_OPEN_LOG_FILES):
        try:
            log_file.reopen()
        except OSError:
            continue
        done.append(log_file.path)
    return done
