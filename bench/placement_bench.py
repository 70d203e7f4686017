"""
Placement cost: choosing an account for a new conversation, and finding the
account of a known one, with 100 accounts and 10,000 live conversations.

Run from the repository root, in the project's virtualenv::

    python bench/placement_bench.py

It builds the real placement objects in memory (no sockets, no files) with
random but fixed usage, then times ``Placement.choose`` for new and for known
conversations and prints p50/p99 per call. Aim: new at most 50 us, known at
most 5 us.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import Account, AccountKind, AccountStore
from subrouter.sessions.identity import Identity
from subrouter.sessions.keys import SessionKey
from subrouter.sessions.placement import Placement
from subrouter.sessions.scheduler import Window
from subrouter.sessions.table import SessionTable
from subrouter.sessions.usage import UsageBook

#: these runs never refresh a token: no HTTP client is needed
_NEVER_REFRESHES: Any = None

ACCOUNTS = 100
SESSIONS = 10_000
SAMPLES = 20_000


def build(rng: random.Random) -> tuple[Placement, Clock]:
    clock = Clock()
    clock.advance(1_800_000_000)
    store = AccountStore("/nonexistent", lambda f: succeed(f()))
    for i in range(ACCOUNTS):
        kind = AccountKind.OAUTH if i < ACCOUNTS - 5 else AccountKind.APIKEY
        store.replace(Account(id=f"acct-{i:03d}@example.com", kind=kind, source=f"/x/{i}",
                              secret="t"))
    refresher = TokenRefresher(store=store, http=_NEVER_REFRESHES, token_url="https://t",
                               clock=clock, run_blocking=lambda f: succeed(f()),
                               codex_auth="/nonexistent")
    usage = UsageBook()
    now = clock.seconds()
    for account in store.accounts():
        if account.is_oauth:
            usage.record(account.id, [
                Window("primary", rng.uniform(0, 100), 18000, rng.uniform(60, 18000)),
                Window("secondary", rng.uniform(0, 100), 604800, rng.uniform(3600, 604800)),
            ], now, "poll")
    table = SessionTable(idle_ttl=1800)
    placement = Placement(AccountPool(store, refresher), table, usage, clock)
    for i in range(SESSIONS):
        placement.choose(Identity(SessionKey("codex", f"live-{i}", "header:session-id")))
    return placement, clock


def measure(calls: list[Any]) -> list[float]:
    out = []
    for call in calls:
        start = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - start) / 1000)
    return out


def report(name: str, samples: list[float], aim: float) -> None:
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99)]
    verdict = "PASS" if p50 <= aim else "MISS"
    print(f"| {name} | {p50:.2f} | {p99:.2f} | {aim:g} | {verdict} |")


def main() -> None:
    rng = random.Random(7)
    placement, clock = build(rng)
    new = [
        (lambda i=i: placement.choose(Identity(SessionKey("codex", f"new-{i}", "header:x"))))
        for i in range(SAMPLES)
    ]
    known = [
        (lambda i=i: placement.choose(
            Identity(SessionKey("codex", f"live-{i % SESSIONS}", "header:x"))))
        for i in range(SAMPLES)
    ]
    measure(new[:1000])  # warm up
    print(f"{ACCOUNTS} accounts, {SESSIONS} live conversations, {SAMPLES} calls each (us)")
    print("| call | p50 | p99 | aim (p50) | |")
    print("|---|---:|---:|---:|---|")
    report("place a new conversation", measure(new[1000:]), 50)
    report("look up a known conversation", measure(known), 5)

    def rerank() -> None:
        clock.advance(2.0)  # past the ranking's one-second validity
        placement.ranking(clock.seconds())

    samples = measure([rerank] * 2000)
    samples.sort()
    print(f"re-ranking all {ACCOUNTS} accounts (at most once a second, or when usage "
          f"changes): p50 {statistics.median(samples):.1f} us")


if __name__ == "__main__":
    main()
