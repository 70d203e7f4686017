# -*- test-case-name: tests.test_admin -*-
"""
Subrouter's own endpoints under ``/_subrouter/``: health and accounts.

They answer JSON, never show a secret, and send ``Cache-Control: no-store``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

import subrouter
from subrouter.accounts.pool import AccountPool
from subrouter.errors import error_body
from subrouter.sessions.placement import Placement


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
            json_answer(request, None, 405)
            request.responseHeaders.setRawHeaders(b"allow", [b"GET, HEAD"])
            method = request.method.decode("ascii", "replace")
            return error_body("method_not_allowed", f"{method} is not allowed here")
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


class AdminResource(Resource):
    """
    The ``/_subrouter/`` tree.
    """

    def __init__(self, pool: AccountPool, placement: Placement) -> None:
        super().__init__()
        self.putChild(
            b"health",
            JSONEndpoint(lambda: {"ok": True, "version": subrouter.__version__}),
        )
        self.putChild(b"accounts", JSONEndpoint(placement.describe_accounts))
        self.putChild(b"sessions", JSONEndpoint(placement.describe_sessions))

    def getChild(self, path: bytes, request: Request) -> Resource:
        return NotFound()

    def render(self, request: Request) -> bytes:
        return NotFound().render(request)
