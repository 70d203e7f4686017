# -*- test-case-name: tests.test_placement -*-
"""
The identity of a twisted.web request (see :mod:`subrouter.sessions.identity`).
"""

from __future__ import annotations

import io

from twisted.web.server import Request

from subrouter.sessions import keys
from subrouter.sessions.identity import Identity, identify_headers


def identify(request: Request, path: bytes, query: bytes) -> Identity:
    """
    The identity of a request; the body is scanned only when no header or
    query parameter names the conversation.

    :raises keys.BadAccountSelector: for an unusable ``X-Subrouter-Account-ID``.
    """
    headers = request.requestHeaders
    body: bytes | None = None
    found = keys.key_from_headers(headers) or keys.key_from_query(query)
    if found is None:
        content = request.content
        if isinstance(content, io.BytesIO):
            body = content.getvalue()
    client = request.getClientAddress()
    return identify_headers(
        headers, query, path, str(getattr(client, "host", "")), request.method, body,
        found=found, looked=True,
    )
