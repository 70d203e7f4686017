# -*- test-case-name: tests.test_sessions_live -*-
"""
Subrouter's own endpoints under ``/_subrouter/``: health, readiness,
accounts and sessions.

They answer JSON, never show a secret, and send ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from operator import attrgetter
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

import subrouter
from subrouter.accounts.pool import AccountPool
from subrouter.errors import error_body, method_not_allowed
from subrouter.routing.inflight import InFlight
from subrouter.sessions.placement import Placement
from subrouter.timefmt import rfc3339


def json_answer(request: Request, value: Any, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    return json.dumps(value, indent=1).encode() + b"\n"


class JSONEndpoint(Resource):
    """
    A GET-only leaf that answers the JSON its callable returns.
    """

    isLeaf = True

    def __init__(self, produce: Callable[[], Any]) -> None:
        super().__init__()
        self._produce = produce

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, b"GET, HEAD")
        return json_answer(request, self._produce())


class NotFound(Resource):
    """
    A JSON 404 for every unknown ``/_subrouter/...`` path.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        json_answer(request, None, 404)
        return error_body(
            "not_found", f"no Subrouter endpoint at {request.path.decode('ascii', 'replace')}"
        )


def accounts_json(placement: Placement) -> dict[str, Any]:
    """
    ``/_subrouter/accounts``: the pool's view plus usage, headroom, live
    conversations and exhaustion per account. Never holds a secret.
    """
    now = placement.clock.seconds()
    listing = placement.pool.describe()
    counts = placement.table.live_counts(now)
    for row in listing["accounts"]:
        account_id = row["id"]
        oauth = row["kind"] == "oauth"
        usage = placement.usage.get(account_id) if account_id in placement.usage.ids() else None
        score = placement.usage.score(account_id, oauth, now)
        until = placement.usage.exhausted_until(account_id, now)
        forecasts = placement.usage.forecasts(account_id, now)
        row["windows"] = [
            {
                "name": w.name,
                "used_percent": w.used_percent,
                "window_minutes": w.window_seconds // 60 if w.window_seconds else None,
                "resets_in": int(w.reset_after) if w.reset_after else None,
                "resets_at": int(now + w.reset_after) if w.reset_after else None,
                "forecast": forecasts[w.name].as_json() if w.name in forecasts else None,
            }
            for w in placement.usage.current_windows(account_id, now)
        ]
        row["headroom"] = round(score.headroom, 4)
        row["short_headroom"] = round(score.short_headroom, 4)
        row["usable_for_new_sessions"] = bool(
            row["usable"] and (score.usable or not oauth) and until is None
        )
        row["live_sessions"] = counts.get(account_id, 0)
        row["exhausted_until"] = until
        row["exhausted_reason"] = usage.exhausted_reason if usage and until else None
        row["usage_source"] = usage.source if usage else None
        row["usage_age"] = (
            round(now - usage.observed_at, 1) if usage and usage.observed_at else None
        )
        row["usage_error"] = usage.error if usage else None
        if usage and usage.plan and not row.get("plan"):
            row["plan"] = usage.plan
    return listing

#: conversations ``/_subrouter/sessions`` lists when not asked for a number
SESSIONS_PAGE = 1000
#: the most it lists at once (``limit=all`` lists every one)
SESSIONS_MAX_PAGE = 100_000
_LAST_SEEN = attrgetter("last_seen")


def sessions_json(placement: Placement, limit: int | None = None,
                  offset: int = 0) -> list[dict[str, Any]]:
    """
    ``/_subrouter/sessions``: the sticky assignments, most recent first:
    ``limit`` of them (None: every one) after the first ``offset``. Only
    those listed are built: a team's table holds tens of thousands, and this
    runs on the reactor (sorting 50,000 takes a few ms, building and
    encoding them all most of a second).
    """
    ordered = sorted(placement.table, key=_LAST_SEEN, reverse=True)
    chosen = ordered[offset:] if limit is None else ordered[offset:offset + limit]
    rows = []
    for a in chosen:
        rows.append(
            {
                "agent": a.agent,
                "session": a.key,
                "account": a.account_id,
                "user_email": a.user_email,
                "first_seen": rfc3339(a.first_seen),
                "last_seen": rfc3339(a.last_seen),
                "requests": a.requests,
                "fallback": a.fallback,
            }
        )
    return rows


def health_json(inflight: InFlight | None) -> dict[str, Any]:
    """
    ``/_subrouter/health``: alive, which version, for how long, what is in
    flight and whether a stop is draining it.
    """
    answer: dict[str, Any] = {"ok": True, "version": subrouter.__version__}
    if inflight is not None:
        answer["uptime_s"] = round(inflight.uptime(), 3)
        answer["in_flight"] = inflight.counts()
        answer["draining"] = inflight.draining
    return answer


class ReadyEndpoint(Resource):
    """
    ``/_subrouter/ready``: 200 when the daemon takes new work, 503 while it
    starts (before its first usage poll is done) or drains.
    """

    isLeaf = True

    def __init__(self, inflight: InFlight) -> None:
        super().__init__()
        self._inflight = inflight

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return JSONEndpoint(dict).render(request)
        reason = self._inflight.not_ready_because()
        if reason is None:
            return json_answer(request, {"ready": True})
        return json_answer(request, {"ready": False, "reason": reason}, 503)


class AdminResource(Resource):
    """
    The ``/_subrouter/`` tree.
    """

    def __init__(self, pool: AccountPool, placement: Placement,
                 inflight: InFlight | None = None,
                 health_extra: Callable[[], dict[str, Any]] | None = None) -> None:
        super().__init__()

        def health() -> dict[str, Any]:
            answer: dict[str, Any] = health_json(inflight)
            if health_extra is not None:
                # the shared state and the workers, when there are any
                answer.update(health_extra())
            return answer

        self.putChild(b"health", JSONEndpoint(health))
        if inflight is not None:
            self.putChild(b"ready", ReadyEndpoint(inflight))
        self.putChild(b"accounts", JSONEndpoint(lambda: accounts_json(placement)))
        self.putChild(b"sessions", JSONEndpoint(lambda: sessions_json(placement)))

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()

    def render(self, request: Request) -> bytes:
        return NotFound().render(request)
