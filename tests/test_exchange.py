"""
The exchange the proxy and the relay share, driven in memory: which accounts
it tries, in what order, what it marks, and what it gives back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import RefreshFailed
from subrouter.accounts.store import Account, AccountKind, AccountStore
from subrouter.routing.exchange import (
    AUTH_REJECTED,
    GONE,
    MAX_ACCOUNTS_PER_REQUEST,
    Exchange,
    OutOfQuota,
    Sent,
)
from subrouter.sessions.identity import Identity
from subrouter.sessions.keys import SessionKey
from subrouter.sessions.placement import NoAccount, Placement
from subrouter.sessions.table import SessionTable
from subrouter.sessions.usage import UsageBook


class FakeRefresher:
    """
    Hands accounts back as they are; can refuse some, and counts refreshes.
    """

    def __init__(self, broken: frozenset[str] = frozenset()) -> None:
        self.broken = broken
        self.rejected: list[str] = []

    def needs_refresh(self, account: Account) -> bool:
        return account.id in self.broken

    def ensure_fresh(self, account: Account) -> Deferred[Account]:
        if account.id in self.broken:
            raise RefreshFailed(account.id, "the refresh token was rejected", terminal=True)
        return succeed(account)

    def refresh_rejected(self, account: Account) -> Deferred[Account]:
        self.rejected.append(account.id)
        return succeed(account)

    def why_unusable(self, account: Account) -> str | None:
        return None

    def describe(self, account: Account) -> dict[str, Any]:
        return {}


def build(ids: list[str], refresher: FakeRefresher | None = None) -> tuple[Placement, Any]:
    clock = Clock()
    clock.advance(1_000_000)
    store = AccountStore("/nonexistent", lambda f: succeed(f()))
    for account_id in ids:
        store.replace(Account(id=account_id, kind=AccountKind.OAUTH, source="/x", secret="t"))
    refresher = refresher or FakeRefresher()
    pool = AccountPool(store, refresher)  # type: ignore[arg-type]
    return Placement(pool, SessionTable(1800), UsageBook(), clock), refresher


def exchange(
    placement: Placement, refresher: Any, forced: str | None = None, gone: bool = False
) -> Exchange[str, str]:
    identity = Identity(SessionKey("codex", "conv-1", "header:session-id"), None, forced)
    return Exchange(placement=placement, refresher=refresher, identity=identity,
                    clock=placement.clock, gone=lambda: gone)


def run(ex: Exchange[str, str], attempt: Any) -> Any:
    results: list[Any] = []
    Deferred.fromCoroutine(ex.run(attempt)).addBoth(results.append)
    assert results, "the exchange did not finish"
    return results[0]


def test_the_first_answer_is_the_answer() -> None:
    placement, refresher = build(["a@x", "b@x"])
    ex = exchange(placement, refresher)
    calls: list[tuple[str, bool]] = []

    async def attempt(account: Account, may_refresh: bool) -> Any:
        calls.append((account.id, may_refresh))
        return Sent("answer")

    assert run(ex, attempt) == Sent("answer")
    assert len(calls) == 1 and calls[0][1] is True


def test_out_of_quota_marks_the_account_and_moves_the_conversation() -> None:
    placement, refresher = build(["a@x", "b@x"])
    ex = exchange(placement, refresher)
    seen: list[str] = []

    async def attempt(account: Account, may_refresh: bool) -> Any:
        seen.append(account.id)
        if len(seen) == 1:
            return OutOfQuota("429 body", 120.0, "HTTP 429")
        return Sent(account.id)

    result = run(ex, attempt)
    first, second = seen
    assert result == Sent(second) and first != second
    now = placement.clock.seconds()
    assert placement.usage.exhausted_until(first, now) == now + 120.0
    # the conversation now lives on the account that answered
    again = exchange(placement, refresher)
    assert run(again, attempt) == Sent(second)


def test_when_every_account_is_out_the_last_answer_is_given_back() -> None:
    placement, refresher = build(["a@x", "b@x", "c@x"])
    ex = exchange(placement, refresher)

    async def attempt(account: Account, may_refresh: bool) -> Any:
        return OutOfQuota(f"held from {account.id}", None, "HTTP 429")

    result = run(ex, attempt)
    assert isinstance(result, OutOfQuota)
    assert result.held == f"held from {ex.tried[-1]}"
    assert sorted(ex.tried) == ["a@x", "b@x", "c@x"]


def test_no_more_than_the_limit_of_accounts_is_tried() -> None:
    ids = [f"{n}@x" for n in range(MAX_ACCOUNTS_PER_REQUEST + 3)]
    placement, refresher = build(ids)
    ex = exchange(placement, refresher)

    async def attempt(account: Account, may_refresh: bool) -> Any:
        return OutOfQuota(None, None, "error event in the stream")

    assert isinstance(run(ex, attempt), OutOfQuota)
    assert len(ex.tried) == MAX_ACCOUNTS_PER_REQUEST


def test_a_forced_account_is_never_replaced() -> None:
    placement, refresher = build(["a@x", "b@x"])
    ex = exchange(placement, refresher, forced="b@x")

    async def attempt(account: Account, may_refresh: bool) -> Any:
        return OutOfQuota("held", None, "HTTP 429")

    result = run(ex, attempt)
    assert isinstance(result, OutOfQuota) and ex.tried == ["b@x"]


def test_a_401_refreshes_once_and_sends_once_more_on_the_same_account() -> None:
    placement, refresher = build(["a@x"])
    ex = exchange(placement, refresher)
    calls: list[tuple[str, bool]] = []

    async def attempt(account: Account, may_refresh: bool) -> Any:
        calls.append((account.id, may_refresh))
        return AUTH_REJECTED if may_refresh else Sent("401 passed on")

    assert run(ex, attempt) == Sent("401 passed on")
    assert calls == [("a@x", True), ("a@x", False)]
    assert refresher.rejected == ["a@x"]


def test_an_account_whose_token_cannot_be_refreshed_is_skipped() -> None:
    placement, _ = build(["a@x", "b@x"])
    refresher = FakeRefresher(broken=frozenset({"a@x"}))
    ex = exchange(placement, refresher)
    seen: list[str] = []

    async def attempt(account: Account, may_refresh: bool) -> Any:
        seen.append(account.id)
        return Sent(account.id)

    assert run(ex, attempt) == Sent("b@x")
    assert seen == ["b@x"]


def test_a_client_that_left_ends_the_exchange() -> None:
    placement, refresher = build(["a@x"])
    ex = exchange(placement, refresher, gone=True)

    async def attempt(account: Account, may_refresh: bool) -> Any:
        raise AssertionError("nothing is sent for a client that left")

    assert run(ex, attempt) is GONE


def test_no_account_at_all_says_so() -> None:
    placement, refresher = build([])
    ex = exchange(placement, refresher)

    async def attempt(account: Account, may_refresh: bool) -> Any:
        raise AssertionError("unreachable")

    result = run(ex, attempt)
    assert isinstance(result, NoAccount) and result.status == 503


# -- a first attempt sent without the coroutine (place_now) ---------------------------


def test_place_now_chooses_the_account_run_would() -> None:
    placement, refresher = build(["a@x", "b@x"])
    ex = exchange(placement, refresher)
    account = ex.place_now()
    assert account is not None
    assert ex.tried == [account.id] and ex.why.startswith("new")
    # a second look places nothing: the exchange is under way
    assert ex.place_now() is None


def test_place_now_leaves_a_token_to_refresh_to_run() -> None:
    placement, refresher = build(["a@x"], FakeRefresher(broken=frozenset({"a@x"})))
    ex = exchange(placement, refresher)
    assert ex.place_now() is None and ex.tried == []
    # run() then does it all: the account cannot be refreshed, none is left
    assert isinstance(run(ex, _never), NoAccount)


def test_place_now_leaves_no_account_to_run() -> None:
    placement, refresher = build(["a@x"])
    ex = exchange(placement, refresher, forced="nobody@x")
    assert ex.place_now() is None
    assert isinstance(run(ex, _never), NoAccount)


async def _never(account: Account, may_refresh: bool) -> Any:
    raise AssertionError("no attempt expected")


def test_a_first_verdict_goes_on_like_any_other() -> None:
    """
    The first attempt's verdict, handed to run(), is judged as run()'s own:
    an account out of quota is marked and the request moves on.
    """
    placement, refresher = build(["a@x", "b@x"])
    ex = exchange(placement, refresher)
    first = ex.place_now()
    assert first is not None
    seen: list[str] = []

    async def attempt(account: Account, may_refresh: bool) -> Any:
        seen.append(account.id)
        return Sent(account.id)

    async def verdict() -> Any:
        return OutOfQuota("429 body", 60.0, "HTTP 429")

    results: list[Any] = []
    Deferred.fromCoroutine(ex.run(attempt, verdict())).addBoth(results.append)
    (other,) = seen
    assert results == [Sent(other)] and other != first.id
    now = placement.clock.seconds()
    assert placement.usage.exhausted_until(first.id, now) == now + 60.0
    assert ex.tried == [first.id, other]


def test_a_first_verdict_without_place_now_is_a_bug() -> None:
    placement, refresher = build(["a@x"])
    ex = exchange(placement, refresher)

    async def verdict() -> Any:
        return Sent("x")

    results: list[Any] = []
    first = verdict()
    Deferred.fromCoroutine(ex.run(_never, first)).addBoth(results.append)
    first.close()
    assert isinstance(results[0], Failure) and results[0].check(AssertionError)
