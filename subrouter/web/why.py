# -*- test-case-name: tests.test_why -*-
"""
Why a conversation is where it is, and where a new one would go:

- ``GET /_subrouter/sessions/<agent>/<id>`` (or ``/_subrouter/sessions/<id>``
  when only one agent has that id): the conversation's assignment, the reason
  it was placed there (new: the ranking that chose it and the runner-up; moved:
  from which account and why; forced), since when it has been sticky, and
  whether its next request would stay;
- ``GET /_subrouter/placement/next``: the account a new conversation would get
  right now, why, and every account's standing.

``GET /_subrouter/sessions`` itself lists the assignments, most recent
first: the newest :data:`~subrouter.web.admin.SESSIONS_PAGE` unless
``limit=N`` (up to :data:`~subrouter.web.admin.SESSIONS_MAX_PAGE`) or
``limit=all`` asks for more, after ``offset=N``; ``X-Total-Count`` says how
many there are.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from twisted.web.resource import Resource
from twisted.web.server import Request

from subrouter.errors import error_body, method_not_allowed
from subrouter.sessions.placement import NoAccount, Placement
from subrouter.sessions.scheduler import candidate_json
from subrouter.sessions.table import Assignment
from subrouter.timefmt import rfc3339
from subrouter.web.admin import (
    SESSIONS_MAX_PAGE,
    SESSIONS_PAGE,
    JSONEndpoint,
    NotFound,
    json_answer,
    sessions_json,
)


def _age(seconds: float) -> str:
    minutes = int(max(seconds, 0) // 60)
    hours, minutes = divmod(minutes, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24}h"
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def session_json(placement: Placement, assignment: Assignment) -> dict[str, Any]:
    """
    One conversation, with the reason for its placement.
    """
    now = placement.clock.seconds()
    reason = assignment.reason
    leaving = placement.why_not_stay(assignment, now)
    account = assignment.account_id
    stored = placement.pool.store.get(account)
    oauth = stored is not None and stored.is_oauth
    score = placement.usage.score(account, True, now) if oauth else None
    lines = [
        f"{assignment.agent}:{assignment.key} is on {account}, sticky since "
        f"{rfc3339(assignment.placed_at)} ({_age(now - assignment.placed_at)} ago; "
        f"{assignment.requests} requests, {assignment.moves} moves)",
        "placed: " + (reason.describe() if reason is not None
                      else "before this daemon recorded reasons"),
        "next request: " + (f"moves ({leaving})" if leaving else "stays on it (sticky)"),
    ]
    return {
        "agent": assignment.agent,
        "session": assignment.key,
        "account": account,
        "user_email": assignment.user_email,
        "first_seen": rfc3339(assignment.first_seen),
        "last_seen": rfc3339(assignment.last_seen),
        "sticky_since": rfc3339(assignment.placed_at),
        "requests": assignment.requests,
        "moves": assignment.moves,
        "fallback": assignment.fallback,
        "placement": reason.as_json() if reason is not None else None,
        "next_request": {"stays": leaving is None, "why_not": leaving},
        "account_now": {
            "headroom": round(score.headroom, 4) if score else None,
            "short_headroom": round(score.short_headroom, 4) if score else None,
            "live": placement.table.live_counts(now).get(account, 0),
            "exhausted_until": placement.usage.exhausted_until(account, now),
        },
        "text": "\n".join(lines),
    }


def next_json(placement: Placement) -> dict[str, Any]:
    """
    What a new conversation would get right now, and why.
    """
    now = placement.clock.seconds()
    ranking = [
        {**candidate_json(candidate), "unusable": why}
        for candidate, why in placement.standings(now)
    ]
    try:
        choice = placement.pick(now)
    except NoAccount as e:
        return {"account": None, "error": e.message, "reason": None, "ranking": ranking,
                "text": f"a new conversation would get no account: {e.message}"}
    return {
        "account": choice.chosen.id,
        "error": None,
        "reason": choice.as_json(),
        "ranking": ranking,
        "text": f"a new conversation would go to {choice.describe()}",
    }


def find(placement: Placement, segments: list[str]) -> Assignment | str:
    """
    The assignment ``segments`` name (``[agent, id]``, or ``[id]`` when one
    agent only has it), or the reason there is none.
    """
    table = placement.table
    if len(segments) >= 2:
        found = table.get(segments[0], "/".join(segments[1:]))
        if found is not None:
            return found
    key = "/".join(segments)
    matches = [a for a in table if a.key == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        agents = ", ".join(sorted(a.agent for a in matches))
        return f"several agents have a conversation {key} ({agents}): name the agent"
    if len(segments) >= 2:
        rest = "/".join(segments[1:])
        return f"no conversation {rest} of agent {segments[0]} is known to this daemon"
    return f"no conversation {key} is known to this daemon"


class SessionsResource(Resource):
    """
    ``/_subrouter/sessions`` (the list) and ``/_subrouter/sessions/...`` (one).
    """

    isLeaf = True

    def __init__(self, placement: Placement) -> None:
        super().__init__()
        self._placement = placement

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return method_not_allowed(request, b"GET, HEAD")
        segments = [unquote(s.decode("utf-8", "replace")) for s in request.postpath or () if s]
        if not segments:
            return self._listing(request)
        found = find(self._placement, segments)
        if isinstance(found, str):
            json_answer(request, None, 404)
            return error_body("unknown_session", found)
        return json_answer(request, session_json(self._placement, found))

    def _listing(self, request: Request) -> bytes:
        try:
            limit = _page_arg(request, b"limit", SESSIONS_PAGE, SESSIONS_MAX_PAGE, 1)
            offset = _page_arg(request, b"offset", 0, None, 0)
        except ValueError as e:
            json_answer(request, None, 400)
            return error_body("invalid_query", str(e))
        table = self._placement.table
        request.responseHeaders.setRawHeaders(b"x-total-count", [b"%d" % len(table)])
        return json_answer(request, sessions_json(self._placement, limit, offset or 0))


def _page_arg(request: Request, name: bytes, default: int, most: int | None,
              least: int) -> int | None:
    """
    A paging number from the query: ``default`` when absent; None for
    ``limit=all``.

    :raises ValueError: with a reason for anything else.
    """
    values = (request.args or {}).get(name)
    if not values:
        return default
    text = values[-1].decode("ascii", "replace").strip()
    label = name.decode()
    if name == b"limit" and text == "all":
        return None
    if not text.isdigit() or int(text) < least or (most is not None and int(text) > most):
        upper = f" to {most}" if most is not None else " or more"
        also = " (or all)" if name == b"limit" else ""
        raise ValueError(f"{label} must be a whole number from {least}{upper}{also}, "
                         f"not {text[:40]!r}")
    return int(text)


def placement_resource(placement: Placement) -> Resource:
    """
    ``/_subrouter/placement/`` with its ``next`` endpoint.
    """
    tree = _Tree()
    tree.putChild(b"next", JSONEndpoint(lambda: next_json(placement)))
    return tree


class _Tree(Resource):
    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()

    def render(self, request: Request) -> bytes:
        return NotFound().render(request)
