"""
A slow ``wss://`` Responses WebSocket upstream, trusted through the test CA:
:class:`SlowBackend` answers ``response.create`` with one delta at once and
``response.completed`` after the message's ``finish_after`` seconds, for
tests of the drain.
"""

from __future__ import annotations

import json
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.web.resource import Resource

from tests.support.daemon import reactor
from tests.support.tlsca import TestCA, listen_tls


class SlowResponsesWS(WebSocketServerProtocol):
    """
    A Responses WebSocket whose answer to ``response.create`` is one delta
    at once and ``response.completed`` after ``finish_after`` seconds.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        backend: SlowBackend = self.factory.backend
        self.sendMessage(json.dumps({"type": "response.output_text.delta"}).encode())
        backend.timers.append(reactor.callLater(
            message.get("finish_after", 0), self._finish))

    def _finish(self) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps({"type": "response.completed"}).encode())

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.backend.closed.append(code)


class SlowBackend:
    """
    A ``wss://`` upstream speaking :class:`SlowResponsesWS`.
    """

    def __init__(self, ca: TestCA) -> None:
        self.ca = ca
        self.closed: list[int | None] = []
        self.timers: list[Any] = []
        self.connections: list[SlowResponsesWS] = []

    async def start(self) -> None:
        factory = WebSocketServerFactory(reactor=reactor)
        factory.protocol = SlowResponsesWS
        factory.backend = self
        ws = WebSocketResource(factory)

        class Root(Resource):
            def getChildWithDefault(self, name: bytes, request: Any) -> Any:
                return ws

        self.port = await listen_tls(reactor, self.ca.server_options(), Root())

    @property
    def codex_url(self) -> str:
        return f"https://localhost:{self.port.getHost().port}/backend-api/codex"

    async def stop(self) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        await self.port.stopListening()
