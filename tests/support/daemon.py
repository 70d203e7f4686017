"""
Helpers for tests that run the real daemon on a loopback port: start it from a
config, talk to it with treq, wait for it to see its accounts, and stop
everything afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import treq
from treq.client import HTTPClient
from twisted.application.service import MultiService
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

from subrouter.config import Config
from subrouter.tap import build_service

from .tlsca import TestCA
from .upstream import FakeUpstream

reactor: Any = _reactor


@attrs.define
class Daemon:
    """
    A running Subrouter service and a client for it.
    """

    service: MultiService
    port: int
    client: HTTPClient
    pool: HTTPConnectionPool
    accounts_dir: Path
    codex_auth: Path
    log: list[dict[str, Any]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, **kwargs: Any) -> Deferred[Any]:
        """
        Send a request now; the Deferred fires with the (unbuffered) response.
        """
        kwargs.setdefault("unbuffered", True)
        d: Deferred[Any] = self.client.request(method, self.url + path, **kwargs)
        return d

    async def get_json(self, path: str) -> Any:
        response = await self.client.get(self.url + path)
        return await response.json()

    async def accounts_by_id(self) -> dict[str, dict[str, Any]]:
        """
        ``/_subrouter/accounts``, each account's row by its id.
        """
        listing = await self.get_json("/_subrouter/accounts")
        return {row["id"]: row for row in listing["accounts"]}

    async def wait_for_accounts(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """
        Poll ``/_subrouter/accounts`` until it lists exactly ``count``
        accounts (the daemon rescans its store on a timer, so a file a test
        writes or removes shows a moment later); return them.

        :raise AssertionError: when it does not within ``timeout`` seconds.
        """
        deadline = reactor.seconds() + timeout
        while True:
            listing = await self.get_json("/_subrouter/accounts")
            accounts: list[dict[str, Any]] = listing["accounts"]
            if len(accounts) == count:
                return accounts
            if reactor.seconds() > deadline:
                raise AssertionError(
                    f"the daemon lists {len(accounts)} accounts after {timeout:g}s, "
                    f"not {count}: {listing}"
                )
            await sleep(0.02)

    async def stop(self) -> None:
        globalLogPublisher.removeObserver(self.log.append)
        await self.pool.closeCachedConnections()
        await self.service.stopService()
        await _quiet(0.5)


def make_config(
    tmp_path: Path,
    upstream: FakeUpstream | None,
    ca: TestCA | None,
    **overrides: Any,
) -> Config:
    settings: dict[str, Any] = {
        "endpoint": "tcp:0:interface=127.0.0.1",
        "addr": "127.0.0.1:0",
        "expose": False,
        "accounts_dir": str(tmp_path / "accounts-store"),
        "codex_upstream": upstream.codex_url if upstream else "https://127.0.0.1:9/x",
        "openai_upstream": upstream.openai_url if upstream else "https://127.0.0.1:9",
        "token_url": upstream.token_url if upstream else "https://127.0.0.1:9/t",
        "ca_bundles": (ca.ca_pem_path,) if ca else (),
        "idle_timeout": 10.0,
        "codex_auth": str(tmp_path / "codex-home" / "auth.json"),
        "account_rescan_interval": 0.05,
        # never the real endpoint: the fake upstream, and off unless a test wants it
        "usage_url": (upstream.base_url if upstream else "https://127.0.0.1:9")
        + "/backend-api/wham/usage",
        "fetch_usage": False,
        "usage_score_ttl": 0.0,
        "state_dir": str(tmp_path / "state"),
        # never Anthropic's real hosts either
        "anthropic_upstream": "https://127.0.0.1:9",
        "anthropic_token_url": "https://127.0.0.1:9/v1/oauth/token",
        "anthropic_usage_url": "https://127.0.0.1:9/api/oauth/usage",
        # a test that stops the daemon with work in flight should not wait long
        "drain_timeout": 1.0,
    }
    settings.update(overrides)
    return Config(**settings)


async def start_daemon(config: Config) -> Daemon:
    log: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(log.append)
    service = build_service(config, reactor)
    service.startService()
    listener = service.getServiceNamed("listener")
    port = await _listening_port(listener)
    # one connection per request: nothing outlives the test
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool))
    return Daemon(
        service=service,
        port=port,
        client=client,
        pool=pool,
        accounts_dir=Path(config.accounts_dir),
        codex_auth=Path(config.codex_auth),
        log=log,
    )


async def _listening_port(listener: Any) -> int:
    # the Listener binds when it starts, so the port is there already
    return int(listener.port.getHost().port)


async def _quiet(limit: float) -> None:
    """
    Wait (a little) until no connection timer of a test Site or client is
    pending: closed connections finish closing on the next reactor turns.
    """
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + limit
    while reactor.seconds() < deadline:
        pending = [
            call for call in reactor.getDelayedCalls()
            if "TimeoutMixin" in repr(call) or "_removeConnection" in repr(call)
        ]
        if not pending:
            return
        await deferLater(reactor, 0.01, lambda: None)


def closed_port() -> int:
    """
    A port of 127.0.0.1 on which nothing listens (just now): a fixed one such
    as 1 or 9 may be taken by another program on a shared machine.
    """
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def read_all(response: Any) -> bytes:
    return bytes(await treq.content(response))


def sleep(seconds: float) -> Deferred[None]:
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """
    Return once ``predicate()`` is true, polling every 10 ms.

    :raise AssertionError: when it is not within ``timeout`` seconds.
    """
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"condition not reached in {timeout:g}s")
        await sleep(0.01)
