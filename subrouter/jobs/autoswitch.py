# -*- test-case-name: tests.test_autoswitch -*-
"""
The daemon's auto-switch (``--cx-switch-interval``): every interval, after a
usage poll, make the best ChatGPT login the active one for the local agents
(Codex's ``auth.json``, and OpenCode and pi when installed) with the same
:func:`~subrouter.accounts.activate.activate` as ``cx switch``. Proxy routing
stays per conversation; this only changes what tools used directly see.

A ``cx switch`` pins its choice (``<state-dir>/pin.json``): while the pinned
account is usable and not exhausted, auto-switch leaves the active login
alone; once it runs out, auto-switch moves on and drops the pin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from subrouter.accounts import activate as manage
from subrouter.accounts.store import AccountKind, BlockingRunner
from subrouter.routing.usage import UsagePoller
from subrouter.sessions.placement import Placement
from subrouter.sessions.scheduler import rank

_log = Logger()


class AutoSwitch:
    """
    :param codex_auth: the active Codex ``auth.json``.
    :param environ: for the OpenCode and pi paths.
    :param state_dir: where ``cx switch`` leaves its pin ("" for none).
    """

    def __init__(self, *, placement: Placement, poller: UsagePoller, codex_auth: str,
                 environ: Mapping[str, str], run_blocking: BlockingRunner,
                 state_dir: str = "") -> None:
        self._placement = placement
        self._poller = poller
        self._codex_auth = codex_auth
        self._environ = dict(environ)
        self._run_blocking = run_blocking
        self._state_dir = state_dir
        self._stuck = False
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

    def _healthy(self, account_id: str, now: float) -> bool:
        placement = self._placement
        account = placement.pool.store.get(account_id)
        if account is None or placement.pool.why_unusable(account) is not None:
            return False
        if not account.is_codex_login:
            return False  # Claude profiles are not Codex's to use
        if placement.usage.exhausted_until(account_id, now) is not None:
            return False
        return not (account.is_oauth
                    and placement.usage.score(account_id, True, now).exhausted)

    async def _round(self) -> None:
        await self._poller.run_once()
        placement = self._placement
        store = placement.pool.store
        if not any(a.is_oauth for a in store.accounts()):
            return  # nothing to switch between; the start-up line said what to do
        now = placement.clock.seconds()
        pinned = None
        if self._state_dir:
            pinned = await self._run_blocking(lambda: manage.read_pin(self._state_dir))
        if pinned is not None and self._healthy(pinned, now):
            return  # the user's choice stands
        candidates = [c for c in rank(placement.ranking(now))
                      if c.oauth and self._healthy(c.id, now)]
        if not candidates:
            if not self._stuck:
                _log.warn("auto-switch: every login is exhausted or unusable; the active "
                          "login stays as it is until one recovers")
            self._stuck = True
            return
        self._stuck = False
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
        keys = [a.secret for a in accounts if a.kind is AccountKind.APIKEY and a.secret]

        def switch() -> manage.Activation:
            if pinned is not None:
                manage.clear_pin(self._state_dir)
            return manage.activate(account, self._codex_auth, self._environ, our_keys=keys)

        done: manage.Activation = await self._run_blocking(switch)
        self.switches += 1
        notes = [f"{tool}: {path}" for tool, path in done.synced]
        notes += [f"{tool} sync failed: {why}" for tool, why in done.failed]
        if pinned is not None:
            notes.insert(0, f"the pinned {pinned} is exhausted or unusable; pin dropped")
        _log.info(
            "auto-switch: {account} is now active for local agents (was {previous}; "
            "headroom {headroom:.0%}){notes}",
            account=best.id, previous=active or "-", headroom=best.score.headroom,
            notes="".join(f"; {n}" for n in notes),
        )


def environ_for_agents() -> dict[str, str]:
    return dict(os.environ)
