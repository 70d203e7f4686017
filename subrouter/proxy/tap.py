# -*- test-case-name: tests.test_transcripts -*-
"""
What one proxied HTTP request hands the transcript recorder: cheap calls
only (the recorder's writer thread does the encoding and the disk).
"""

from __future__ import annotations

from twisted.web.server import Request

from subrouter.accounts.store import Account
from subrouter.proxy.bodies import body_bytes
from subrouter.transcripts.events import redact_headers
from subrouter.transcripts.recorder import Conversation, Recorder


class Tap:
    """
    What one exchange hands the transcript recorder: cheap calls only.
    """

    def __init__(self, recorder: Recorder, conversation: Conversation) -> None:
        self.recorder = recorder
        self.conversation = conversation
        self.request_id = recorder.new_id("req")
        self.response_stream: str | None = None
        self.request_recorded = False

    def meta(self, request: Request, account: Account, upstream: bytes) -> None:
        self.conversation.account = account.id
        self.recorder.event(self.conversation, self.request_id, "subrouter_meta", {
            "transport": "http",
            "user": self.conversation.user,
            "account": account.id,
            "method": request.method.decode("ascii", "replace"),
            "path": request.uri.decode("ascii", "replace").partition("?")[0],
            "upstream": upstream.decode("ascii", "replace"),
            "headers": redact_headers(request.requestHeaders.getAllRawHeaders()),
        })
        if not self.request_recorded:
            self.request_recorded = True
            data = body_bytes(request, self.recorder.max_body)
            stream = self.recorder.new_id("body")
            self.recorder.body(self.conversation, self.request_id, stream,
                               "client_to_upstream", data)
            self.recorder.body_end(self.conversation, self.request_id, stream)

    def response(self, data: bytes, status: int | None) -> None:
        if self.response_stream is None:
            self.response_stream = self.recorder.new_id("body")
        self.recorder.body(self.conversation, self.request_id, self.response_stream,
                           "upstream_to_client", data, status)

    def response_end(self, status: int | None) -> None:
        if self.response_stream is None:
            self.response(b"", status)
        assert self.response_stream is not None
        self.recorder.body_end(self.conversation, self.request_id, self.response_stream)
