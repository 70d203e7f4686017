"""
Overloads are waited out on the same account, deterministically (task.Clock):
the pauses, Retry-After, the budget, and no exhaustion mark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import Account, AccountStore
from subrouter.routing.exchange import Exchange, Overloaded, Sent, overload_pause
from subrouter.sessions.identity import Identity
from subrouter.sessions.keys import SessionKey
from subrouter.sessions.placement import Placement
from subrouter.sessions.table import SessionTable
from subrouter.sessions.usage import UsageBook
from tests.support.anthropic_backend import write_claude_profile

NOW = 1_900_000_000.0


def test_pauses_double_within_the_budget_and_honour_retry_after() -> None:
    assert [overload_pause(n, None, 120.0) for n in range(7)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert overload_pause(3, None, 5.0) == 5.0  # the last pause fills the budget
    assert overload_pause(3, None, 0.2) is None  # too little left to be worth it
    assert overload_pause(0, 7.0, 120.0) == 7.0
    assert overload_pause(0, 0.0, 120.0) == 0.5  # never a busy loop
    assert overload_pause(0, 200.0, 120.0) is None  # asked to wait past the budget


def placement(tmp_path: Path, clock: Clock) -> Placement:
    write_claude_profile(tmp_path, "alpha", "sk-ant-oat01-a", expires_at=NOW + 86400)
    write_claude_profile(tmp_path, "beta", "sk-ant-oat01-b", expires_at=NOW + 86400)

    def sync(f: Any) -> Deferred[Any]:
        return succeed(f())

    store = AccountStore(str(tmp_path), sync)
    store.scan_now()
    refresher = TokenRefresher(store=store, http=None, token_url="https://127.0.0.1:9/t",
                               clock=clock, run_blocking=sync, codex_auth=str(tmp_path / "a"))
    return Placement(AccountPool(store, refresher), SessionTable(1800.0), UsageBook(), clock)


def exchange(tmp_path: Path, budget: float) -> tuple[Exchange[str, str], Clock, list[str]]:
    clock = Clock()
    clock.advance(NOW)
    where = placement(tmp_path, clock)
    identity = Identity(SessionKey("claude", "s-1", "header"))
    run: Exchange[str, str] = Exchange(
        placement=where, refresher=where.pool.refresher, identity=identity, clock=clock,
        gone=lambda: False, overload_wait=budget,
    )
    return run, clock, []


def test_an_overload_is_sent_again_on_the_same_account_after_each_pause(
    tmp_path: Path,
) -> None:
    run, clock, sent = exchange(tmp_path, 120.0)
    dropped: list[str] = []

    async def attempt(account: Account, may_refresh: bool) -> Any:
        sent.append(account.id)
        if len(sent) <= 3:
            return Overloaded("529", None, "HTTP 529", drop=lambda: dropped.append("x"))
        return Sent("ok")

    result = Deferred.fromCoroutine(run.run(attempt))
    assert len(sent) == 1 and not result.called
    for pause in (1.0, 2.0, 4.0):
        clock.advance(pause - 0.01)
        assert not result.called
        clock.advance(0.01)
    assert result.result == Sent("ok")  # type: ignore[attr-defined]
    assert len(set(sent)) == 1 and len(sent) == 4
    assert dropped == ["x", "x", "x"]
    assert run.placement.usage.exhaustion_marks() == {}


def test_after_the_budget_the_upstreams_error_is_the_answer(tmp_path: Path) -> None:
    run, clock, sent = exchange(tmp_path, 10.0)

    async def attempt(account: Account, may_refresh: bool) -> Any:
        sent.append(account.id)
        return Overloaded(f"529 #{len(sent)}", None, "HTTP 529")

    result = Deferred.fromCoroutine(run.run(attempt))
    clock.pump([1.0] * 20)
    outcome = result.result  # type: ignore[attr-defined]
    # sent again after pauses of 1, 2, 4 and 3 s
    assert isinstance(outcome, Overloaded) and outcome.held == "529 #5"
    assert len(set(sent)) == 1 and run.waited == 10.0
    assert run.placement.usage.exhaustion_marks() == {}


def test_no_budget_means_no_wait(tmp_path: Path) -> None:
    run, _, sent = exchange(tmp_path, 0.0)

    async def attempt(account: Account, may_refresh: bool) -> Any:
        sent.append(account.id)
        return Overloaded("529", 1.0, "HTTP 529")

    result = Deferred.fromCoroutine(run.run(attempt))
    assert isinstance(result.result, Overloaded) and len(sent) == 1  # type: ignore[attr-defined]
