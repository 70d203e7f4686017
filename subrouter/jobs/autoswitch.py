# -*- test-case-name: tests.test_autoswitch -*-
"""
The daemon's auto-switch (``--cx-switch-interval``): every interval, after a
usage poll, make the best ChatGPT login the active one for the local agents
(Codex's ``auth.json``, OpenCode, pi), as ``cx switch`` would. Proxy routing
stays per conversation; this only changes what tools used directly see.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from subrouter.accounts import activate as manage
from subrouter.accounts.refresh import lock_path_for
from subrouter.accounts.store import BlockingRunner
from subrouter.files import locked
from subrouter.routing.usage import UsagePoller
from subrouter.sessions.placement import Placement
from subrouter.sessions.scheduler import rank

_log = Logger()


class AutoSwitch:
    """
    :param codex_auth: the active Codex ``auth.json``.
    :param environ: for the OpenCode and pi paths.
    """

    def __init__(self, *, placement: Placement, poller: UsagePoller, codex_auth: str,
                 environ: Mapping[str, str], run_blocking: BlockingRunner) -> None:
        self._placement = placement
        self._poller = poller
        self._codex_auth = codex_auth
        self._environ = dict(environ)
        self._run_blocking = run_blocking
        self.switches = 0

    def run_once(self) -> Deferred[None]:
        """
        One round; never fails (a TimerService stops on a failure).
        """
        return Deferred.fromCoroutine(self._safe())

    async def _safe(self) -> None:
        try:
            await self._round()
        except Exception:
            _log.failure("auto-switch failed; trying again next interval")

    async def _round(self) -> None:
        await self._poller.run_once()
        placement = self._placement
        store = placement.pool.store
        now = placement.clock.seconds()
        candidates = [
            c for c in rank(placement.ranking(now))
            if c.oauth and not c.score.exhausted
            and (account := store.get(c.id)) is not None
            and account.is_codex_login  # Claude profiles are not Codex's to use
            and placement.pool.why_unusable(account) is None
        ]
        if not candidates:
            _log.warn("auto-switch: every login is exhausted or unusable; nothing changed")
            return
        best = candidates[0]
        if not best.score.usable:
            _log.warn("auto-switch: the best login, {account}, is below 40% headroom",
                      account=best.id)
        account = store.get(best.id)
        assert account is not None
        accounts = store.accounts()
        active = await self._run_blocking(
            lambda: manage.active_account_id(self._codex_auth, accounts)
        )
        if active == best.id:
            return

        def switch() -> list[str]:
            # under the account's lock, like `cx switch`: never the tokens a
            # concurrent refresh is replacing
            with locked(lock_path_for(account.source)):
                manage.write_codex_auth(self._codex_auth, manage.codex_auth_for(account))
                notes = []
                for tool, sync in (("OpenCode", manage.sync_opencode), ("pi", manage.sync_pi)):
                    try:
                        notes.append(f"{tool}: {sync(account, self._environ)}")
                    except (manage.StoreError, OSError) as e:
                        notes.append(f"{tool} sync failed: {e}")
                return notes

        notes: Any = await self._run_blocking(switch)
        self.switches += 1
        _log.info(
            "auto-switch: {account} is now active for local agents (was {previous}; "
            "headroom {headroom:.0%}); {notes}",
            account=best.id, previous=active, headroom=best.score.headroom,
            notes="; ".join(notes),
        )


def environ_for_agents() -> dict[str, str]:
    return dict(os.environ)
