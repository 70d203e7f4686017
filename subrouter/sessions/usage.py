# -*- test-case-name: tests.test_usage -*-
"""
What Subrouter knows of each account's rate limits, and where it learns it.

Three sources feed one book: the usage endpoint (polled), the
``x-codex-primary-*`` / ``x-codex-secondary-*`` headers of every proxied
answer, and ``codex.rate_limits`` events inside streams. Usage-limit errors
mark an account exhausted until its window resets. The parsers here are pure;
:class:`UsageBook` holds the state and turns it into scheduler scores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from twisted.web.http_headers import Headers

from subrouter.sessions.forecast import BurnMeter, Forecast
from subrouter.sessions.scheduler import (
    API_KEY,
    EXHAUSTED,
    UNKNOWN,
    UNKNOWN_RISKY,
    Score,
    Window,
    score_windows,
)
from subrouter.upstream.headers import raw_values

#: how long an exhaustion lasts when nothing says when the window resets
DEFAULT_EXHAUSTED_FOR = 600.0
#: a reset that is due now, as a number of seconds (0 would mean unknown)
IMMINENT = 1.0
#: never trust a reset further away than this
MAX_EXHAUSTED_FOR = 8 * 86400.0

_USAGE_LIMIT = re.compile(r"usage[ _-]limit", re.IGNORECASE)
_LIMIT_VERB = re.compile(r"\b(reached|hit|exceeded)\b", re.IGNORECASE)


def _usage_wording(text: str) -> bool:
    return bool(_USAGE_LIMIT.search(text)) and bool(_LIMIT_VERB.search(text))
_OVERLOAD_TYPES = frozenset({"server_is_overloaded", "server_error", "overloaded_error"})


def _number(value: object) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, (str, bytes)):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _window(name: str, raw: object, now: float, minutes_key: str = "") -> Window | None:
    if not isinstance(raw, Mapping):
        return None
    used = _number(raw.get("used_percent"))
    if used is None:
        return None  # unknown is not 0%
    seconds = _number(raw.get("limit_window_seconds"))
    if seconds is None:
        minutes = _number(raw.get("window_minutes"))
        seconds = minutes * 60 if minutes is not None else 0.0
    reset_after = _number(raw.get("reset_after_seconds"))
    if reset_after is None:
        reset_after = _number(raw.get("resets_in_seconds"))
    reset_at = _number(raw.get("reset_at")) or _number(raw.get("resets_at"))
    if reset_at is not None and reset_at > 0:
        # a reset due now (whole seconds, a poll a moment before it) is a reset
        # in a second, not an unknown one: an unknown one would keep a full
        # window marked for the default ten minutes past its reset
        reset_after = max(reset_at - now, IMMINENT)
    return Window(name, used, int(seconds), reset_after or 0.0)


def windows_from_usage(document: object, now: float) -> tuple[list[Window], str | None]:
    """
    The windows in a ``wham/usage`` answer, and the plan it names.
    ``limit_reached`` adds a full window, which makes the account exhausted.
    """
    if not isinstance(document, Mapping):
        return [], None
    plan = document.get("plan_type")
    windows: list[Window] = []
    limits = document.get("rate_limit")
    if isinstance(limits, Mapping):
        for name, key in (("primary", "primary_window"), ("secondary", "secondary_window")):
            window = _window(name, limits.get(key), now)
            if window is not None:
                windows.append(window)
        if limits.get("limit_reached") is True:
            windows.append(Window("reached", 100.0))
    return windows, plan if isinstance(plan, str) else None


def windows_from_event(event: object, now: float) -> tuple[list[Window], str | None]:
    """
    The windows in a ``codex.rate_limits`` stream event.
    """
    if not isinstance(event, Mapping):
        return [], None
    limits = event.get("rate_limits")
    windows: list[Window] = []
    if isinstance(limits, Mapping):
        for name in ("primary", "secondary"):
            window = _window(name, limits.get(name), now)
            if window is not None:
                windows.append(window)
    plan = event.get("plan_type")
    return windows, plan if isinstance(plan, str) else None


def windows_from_headers(headers: Headers, now: float) -> list[Window]:
    """
    The windows in a Codex answer's ``x-codex-primary-*`` and
    ``x-codex-secondary-*`` headers.
    """
    windows = []
    for name in ("primary", "secondary"):
        prefix = f"x-codex-{name}-".encode()

        def value(suffix: bytes, prefix: bytes = prefix) -> float | None:
            raw = raw_values(headers, prefix + suffix)
            return _number(raw[0].strip()) if raw else None

        used = value(b"used-percent")
        if used is None:
            continue
        minutes = value(b"window-minutes")
        reset_after = value(b"reset-after-seconds")
        reset_at = value(b"reset-at")
        if reset_at is not None and reset_at > 0:
            reset_after = max(reset_at - now, 0.0)
        windows.append(
            Window(name, used, int(minutes * 60) if minutes else 0, reset_after or 0.0)
        )
    return windows


def _signal_in(value: object, depth: int = 0) -> bool:
    if depth > 4:
        return False
    if isinstance(value, str):
        return _usage_wording(value)
    if not isinstance(value, Mapping):
        return False
    for key in ("type", "code"):
        field = value.get(key)
        if isinstance(field, str) and field.lower() == "usage_limit_reached":
            return True
    message = value.get("message")
    if isinstance(message, str) and _usage_wording(message):
        return True
    for key in ("error", "response"):
        if key in value and _signal_in(value[key], depth + 1):
            return True
    return False


def is_usage_limit(document: object) -> bool:
    """
    Whether an error document says the account's usage limit is reached:
    ``type``/``code`` ``usage_limit_reached``, or a message about a usage
    limit being reached, hit or exceeded (looked for in ``error`` too).
    """
    return _signal_in(document)


def usage_limit_in_body(body: bytes) -> bool:
    """
    :func:`is_usage_limit` over a JSON body, or over every ``data:`` line of
    an SSE body.
    """
    if b"usage" not in body.lower():
        return False
    try:
        return is_usage_limit(json.loads(body))
    except ValueError:
        pass
    for line in body.splitlines():
        line = line.strip()
        if line.startswith(b"data:"):
            try:
                if is_usage_limit(json.loads(line[5:].strip())):
                    return True
            except ValueError:
                continue
    return False


def retry_after(headers: Headers) -> float | None:
    raw = raw_values(headers, b"retry-after")
    if not raw:
        return None
    return _number(raw[0].strip())


@attrs.define
class AccountUsage:
    windows: list[Window] = attrs.Factory(list)
    observed_at: float | None = None
    source: str | None = None
    plan: str | None = None
    error: str | None = None
    error_at: float | None = None
    exhausted_until: float | None = None
    exhausted_reason: str | None = None
    #: when the exhaustion mark was last set or cleared (for merging books)
    mark_at: float | None = None


class UsageBook:
    """
    Per-account rate-limit knowledge, turned into scheduler scores.
    """

    def __init__(self) -> None:
        self._accounts: dict[str, AccountUsage] = {}
        #: bumped whenever a score may have changed
        self.version = 0
        #: the recent history of every window, for forecasts
        self.meter = BurnMeter()
        # tokens each account has spent since start, from the token accounting
        self._tokens: dict[str, float] = {}
        #: accounts whose windows or mark changed here since a shared store
        #: last took them (see :meth:`export`)
        self.dirty: set[str] = set()

    def get(self, account_id: str) -> AccountUsage:
        usage = self._accounts.get(account_id)
        if usage is None:
            usage = self._accounts[account_id] = AccountUsage()
        return usage

    def record(
        self, account_id: str, windows: list[Window], now: float, source: str,
        plan: str | None = None,
    ) -> None:
        """
        New windows for an account. Full windows extend an exhaustion mark to
        their reset; windows with headroom clear it.
        """
        if not windows:
            return
        usage = self.get(account_id)
        if usage.windows and usage.observed_at is not None:
            windows = _carry_resets(windows, usage.windows, now - usage.observed_at)
        tokens = self._tokens.get(account_id)
        meter = self.meter
        for w in windows:
            meter.observe(account_id, w.name, w.used_percent,
                          now + w.reset_after if w.reset_after else None, now, tokens)
        if [(w.name, w.used_percent, w.window_seconds) for w in windows] != [
            (w.name, w.used_percent, w.window_seconds) for w in usage.windows
        ] or usage.error is not None:
            # the same numbers again (every answer repeats them) change no score
            # beyond what the ranking's one-second ageing already covers
            self.version += 1
            self.dirty.add(account_id)
        usage.windows = windows
        usage.observed_at = now
        usage.source = source
        usage.error = None
        if plan:
            usage.plan = plan
        score = score_windows(windows)
        if score.exhausted:
            resets = [w.reset_after for w in windows if w.used_percent >= 100 and w.reset_after > 0]
            self.mark_exhausted(
                account_id, now, min(resets) if resets else None, f"{source} shows no headroom"
            )
        elif usage.exhausted_until is not None:
            usage.exhausted_until = None
            usage.exhausted_reason = None
            usage.mark_at = now
            self.dirty.add(account_id)

    def add_tokens(self, account_id: str, tokens: float) -> None:
        """
        Count tokens an account spent (from the token accounting), so its
        forecasts can measure the burn in tokens between observations.
        """
        self._tokens[account_id] = self._tokens.get(account_id, 0.0) + tokens

    def forecasts(self, account_id: str, now: float) -> dict[str, Forecast]:
        """
        A forecast for each known window of an account, by window name.
        """
        tokens = self._tokens.get(account_id)
        return {
            w.name: self.meter.forecast(
                account_id, w.name, w.used_percent,
                now + w.reset_after if w.reset_after else None, now, tokens,
            )
            for w in self.current_windows(account_id, now)
            if w.name != "reached"
        }

    def record_failure(self, account_id: str, reason: str, now: float) -> None:
        self.version += 1
        usage = self.get(account_id)
        usage.error = reason
        usage.error_at = now

    def mark_exhausted(
        self, account_id: str, now: float, for_seconds: float | None, reason: str
    ) -> float:
        """
        Keep an account out of new placements until its window resets
        (:data:`DEFAULT_EXHAUSTED_FOR` when unknown).

        :return: when the mark expires.
        """
        self.version += 1
        seconds = DEFAULT_EXHAUSTED_FOR if not for_seconds or for_seconds <= 0 else for_seconds
        until = now + min(seconds, MAX_EXHAUSTED_FOR)
        usage = self.get(account_id)
        if usage.exhausted_until is None or until > usage.exhausted_until:
            usage.exhausted_until = until
        usage.exhausted_reason = reason
        usage.mark_at = now
        self.dirty.add(account_id)
        return usage.exhausted_until

    def exhausted_until(self, account_id: str, now: float) -> float | None:
        usage = self._accounts.get(account_id)
        if usage is None or usage.exhausted_until is None:
            return None
        if usage.exhausted_until <= now:
            usage.exhausted_until = None
            usage.exhausted_reason = None
            self.version += 1
            return None
        return usage.exhausted_until

    def current_windows(self, account_id: str, now: float) -> list[Window]:
        """
        The last known windows, aged to ``now``: resets count down, and a
        window whose reset has passed starts again at 0%.
        """
        usage = self._accounts.get(account_id)
        if usage is None or usage.observed_at is None:
            return []
        elapsed = max(now - usage.observed_at, 0.0)
        aged = []
        for window in usage.windows:
            if window.reset_after > 0 and elapsed >= window.reset_after:
                aged.append(Window(window.name, 0.0, window.window_seconds, 0.0))
            elif window.reset_after:
                aged.append(Window(window.name, window.used_percent, window.window_seconds,
                                   window.reset_after - elapsed))
            else:
                aged.append(window)
        return aged

    def score(self, account_id: str, oauth: bool, now: float) -> Score:
        if self.exhausted_until(account_id, now) is not None:
            return EXHAUSTED
        if not oauth:
            return API_KEY
        usage = self._accounts.get(account_id)
        if usage is None or usage.observed_at is None:
            if usage is not None and usage.error is not None:
                return UNKNOWN_RISKY
            return UNKNOWN
        return score_windows(self.current_windows(account_id, now))

    def exhaustion_marks(self) -> dict[str, dict[str, Any]]:
        return {
            account_id: {"until": u.exhausted_until, "reason": u.exhausted_reason}
            for account_id, u in self._accounts.items()
            if u.exhausted_until is not None
        }

    def load_marks(self, marks: Mapping[str, Any], now: float) -> None:
        for account_id, mark in marks.items():
            if not isinstance(mark, Mapping):
                continue
            until = _number(mark.get("until"))
            if until is not None and until > now:
                usage = self.get(str(account_id))
                usage.exhausted_until = until
                reason = mark.get("reason")
                usage.exhausted_reason = reason if isinstance(reason, str) else None

    def ids(self) -> Iterable[str]:
        return self._accounts.keys()

    def export(self, account_id: str) -> dict[str, dict[str, Any]]:
        """
        What a shared store keeps of an account: its windows (``w``) and its
        exhaustion mark (``x``), each stamped (``at``) with when it was learnt.
        """
        usage = self._accounts.get(account_id)
        out: dict[str, dict[str, Any]] = {}
        if usage is None:
            return out
        if usage.observed_at is not None:
            out["w"] = {
                "at": usage.observed_at,
                "windows": [[w.name, w.used_percent, w.window_seconds, w.reset_after]
                            for w in usage.windows],
                "source": usage.source,
                "plan": usage.plan,
            }
        if usage.mark_at is not None:
            out["x"] = {"at": usage.mark_at, "until": usage.exhausted_until,
                        "reason": usage.exhausted_reason}
        return out

    def merge(self, account_id: str, kind: str, doc: Mapping[str, Any]) -> bool:
        """
        Take what another instance learnt (from :meth:`export`) when it is
        newer than what this book has.

        :return: whether anything changed.
        """
        at = _number(doc.get("at"))
        if at is None:
            return False
        usage = self.get(account_id)
        if kind == "w":
            if usage.observed_at is not None and usage.observed_at >= at:
                return False
            windows = []
            for row in doc.get("windows") or []:
                try:
                    name, used, seconds, reset_after = row
                    windows.append(Window(str(name), float(used), int(seconds),
                                          float(reset_after)))
                except (TypeError, ValueError):
                    continue
            usage.windows = windows
            usage.observed_at = at
            for w in windows:  # another instance's observation feeds the forecast too
                self.meter.observe(account_id, w.name, w.used_percent,
                                   at + w.reset_after if w.reset_after else None, at)
            source, plan = doc.get("source"), doc.get("plan")
            usage.source = source if isinstance(source, str) else None
            if isinstance(plan, str) and plan:
                usage.plan = plan
            usage.error = None
        elif kind == "x":
            if usage.mark_at is not None and usage.mark_at >= at:
                return False
            usage.mark_at = at
            usage.exhausted_until = _number(doc.get("until"))
            reason = doc.get("reason")
            usage.exhausted_reason = reason if isinstance(reason, str) else None
        else:
            return False
        self.version += 1
        return True


def worth_waiting_out(status: int, body: bytes) -> bool:
    """
    Whether an error says the upstream (not the account) is overloaded right
    now, so the same request is worth sending again on the same account after
    a pause: Anthropic's 529 ``overloaded_error``, Codex's 503 "Selected model
    is at capacity" (``server_is_overloaded``). Moving the conversation would
    throw its prompt cache away for nothing.
    """
    if status == 529:
        return True
    if status < 500:
        return False
    lowered = body.lower()
    return (
        b"overloaded_error" in lowered
        or b"server_is_overloaded" in lowered
        or (status == 503 and b"at capacity" in lowered)
    )


def _carry_resets(new: list[Window], old: list[Window], elapsed: float) -> list[Window]:
    """
    Fill in what a new observation leaves out (answers whose headers carry the
    percent but no reset time) from the previous one of the same window, as
    long as that window has not reset since: an unknown reset must not look
    like a window that never resets.
    """
    if all(w.reset_after and w.window_seconds for w in new):
        return new
    previous = {w.name: w for w in old}
    out = []
    for window in new:
        before = previous.get(window.name)
        if before is not None and window.used_percent >= before.used_percent - 0.5:
            reset_after = window.reset_after
            if not reset_after and before.reset_after and before.reset_after > elapsed:
                reset_after = before.reset_after - elapsed
            seconds = window.window_seconds or before.window_seconds
            window = Window(window.name, window.used_percent, seconds, reset_after)
        out.append(window)
    return out


def is_overload(status: int, body: bytes) -> bool:
    """
    Whether an error is the upstream being overloaded (never exhaustion).
    """
    if status >= 500:
        return True
    lowered = body.lower()
    return b"at capacity" in lowered or any(t.encode() in lowered for t in _OVERLOAD_TYPES)
