# -*- test-case-name: tests.test_shared_live -*-
"""
The service that keeps an instance in step with the others through Redis:
connects at start, synchronises the rate-limit book four times a second and
token sets and the instance registry once a second, and says goodbye at stop.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime

from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import AccountStore
from subrouter.state.link import RedisLink
from subrouter.state.redis import (
    ASSIGNMENT_KEEP,
    TOKEN_SYNC_INTERVAL,
    USAGE_SYNC_INTERVAL,
    Registry,
    SharedSessions,
    SharedTokenSets,
    UsageBook,
    UsageSync,
)
from subrouter.state.settings import RedisURL


@attrs.define
class SharedState:
    """
    Everything one instance shares through Redis.
    """

    link: RedisLink
    sessions: SharedSessions
    tokens: SharedTokenSets
    usage: UsageSync
    registry: Registry

    @classmethod
    def create(
        cls, url: RedisURL, key: bytes, clock: IReactorTime, book: UsageBook,
        idle_ttl: float, info: dict[str, Any], retention: float = ASSIGNMENT_KEEP,
    ) -> SharedState:
        """
        :param retention: how long an assignment outlives its conversation's
            last request (``--session-retention``; 0: for ever).
        """
        link = RedisLink(url, clock)
        return cls(
            link=link,
            sessions=SharedSessions(link, idle_ttl, retention),
            tokens=SharedTokenSets(link, key, clock),
            usage=UsageSync(link, book),
            registry=Registry(link, clock, info),
        )

    def describe(self) -> dict[str, Any]:
        """
        For ``/_subrouter/health``: the backend and who else is serving.
        """
        return {
            "backend": "redis",
            "url": self.link.url.display(),
            "reachable": self.link.up,
            "outages": self.link.outages,
            "refreshes_under_local_lock_only": self.tokens.local_fallbacks,
            "instances": sorted(self.registry.seen.values(),
                                key=lambda i: (i.get("host", ""), i.get("worker") or 0,
                                               i.get("pid", 0))),
        }


class _Link(MultiService):
    def __init__(self, state: SharedState) -> None:
        super().__init__()
        self._state = state
        self.state = state  # for tests and introspection

    def startService(self) -> None:
        self._state.link.start()
        super().startService()

    def stopService(self) -> Deferred[Any]:
        d: Deferred[Any] = super().stopService()

        async def leave() -> None:
            await self._state.registry.leave()
            stopped = self._state.link.stop()
            if stopped is not None:
                await stopped

        return d.addCallback(lambda _: Deferred.fromCoroutine(leave()))


def shared_state_service(
    state: SharedState, store: AccountStore, refresher: TokenRefresher, clock: IReactorTime
) -> MultiService:
    """
    The link and its timers, as one service.
    """
    top = _Link(state)
    top.setName("shared-state")

    def usage() -> Deferred[Any] | None:
        return state.usage.tick()

    def tokens_and_registry() -> Deferred[Any]:
        work = [state.registry.beat()]
        synced = state.tokens.sync(store, refresher)
        if synced is not None:
            work.append(synced)
        return DeferredList(work, consumeErrors=True)

    for name, interval, job in (
        ("state-usage-sync", USAGE_SYNC_INTERVAL, usage),
        ("state-token-sync", TOKEN_SYNC_INTERVAL, tokens_and_registry),
    ):
        timer = TimerService(interval, job)
        timer.clock = clock
        timer.setName(name)
        timer.setServiceParent(top)
    return top
