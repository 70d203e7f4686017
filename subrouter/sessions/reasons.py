# -*- test-case-name: tests.test_reasons -*-
"""
Why a conversation is on its account: the recorded reason of a placement.

A conversation is placed when it is new, moved when its account cannot take
it any more, or forced by ``X-Subrouter-Account-ID``; every later request of
it is sticky. Each placement keeps one small frozen :class:`Reason` (built
from references the scheduler already holds; the words are made only when
someone asks), shown in the request log line, at
``/_subrouter/sessions/<agent>/<id>`` and by ``cx why``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import attrs

from subrouter.sessions.scheduler import Choice

NEW = "new"
MOVED = "moved"
FORCED = "forced"
STICKY = "sticky"


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class Reason:
    """
    :ivar kind: ``new``, ``moved`` or ``forced``.
    :ivar at: when the placement was made.
    :ivar choice: the scheduler's ranking for ``new`` and ``moved``.
    :ivar moved_from: the account a moved conversation left.
    :ivar cause: why it left it (``usage limit reached ...``, the reason
        the account is unusable, ``removed from the store``).
    :ivar selector: what ``X-Subrouter-Account-ID`` said, for ``forced``.
    :ivar saved: the words of a reason restored from the state file (its
        ranking is not kept across restarts).
    """

    kind: str
    at: float
    account: str
    choice: Choice | None = None
    moved_from: str | None = None
    cause: str | None = None
    selector: str | None = None
    saved: str | None = None

    def short(self) -> str:
        """
        The request log's form: ``new:pressure>b@x.com``,
        ``moved:a@x.com(usage-limit)``, ``forced``.
        """
        if self.kind == FORCED:
            return FORCED
        choice = f":{self.choice.short()}" if self.choice is not None else ""
        if self.kind == MOVED:
            return f"moved<{self.moved_from}{choice}"
        return f"{self.kind}{choice}"

    def describe(self) -> str:
        """
        The whole reason, for people.
        """
        if self.saved is not None:
            return self.saved
        if self.kind == FORCED:
            return f"forced onto {self.account} by X-Subrouter-Account-ID: {self.selector}"
        ranking = self.choice.describe() if self.choice is not None else self.account
        if self.kind == MOVED:
            return f"moved from {self.moved_from} ({self.cause}); chose {ranking}"
        return f"new conversation; chose {ranking}"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "at": iso(self.at),
            "account": self.account,
            "moved_from": self.moved_from,
            "cause": self.cause,
            "short": self.short(),
            "text": self.describe(),
            "ranking": self.choice.as_json() if self.choice is not None else None,
        }

    def dump(self) -> dict[str, Any]:
        """
        What the state file keeps.
        """
        return {
            "kind": self.kind, "at": self.at, "account": self.account,
            "moved_from": self.moved_from, "cause": self.cause, "text": self.describe(),
        }

    @classmethod
    def load(cls, row: object) -> Reason | None:
        if not isinstance(row, Mapping):
            return None
        try:
            return cls(
                kind=str(row["kind"]), at=float(row["at"]), account=str(row["account"]),
                moved_from=_optional(row.get("moved_from")), cause=_optional(row.get("cause")),
                saved=_optional(row.get("text")),
            )
        except (KeyError, TypeError, ValueError):
            return None


def _optional(value: object) -> str | None:
    return value if isinstance(value, str) else None
