"""
Routing simulation: days of work through the real placement code, on a
simulated clock, against round-robin and least-loaded placement.

Run from the repository root, in the project's virtualenv::

    python bench/routing_sim.py                      # 5 working days, seed 1
    python bench/routing_sim.py --days 3 --seed 7
    python bench/routing_sim.py --scenario no-reset-headers
    python bench/routing_sim.py --json out.json

What is real: :class:`~subrouter.sessions.placement.Placement` with the real
account store, session table, usage book (exhaustion marks, ageing, the
scheduler's scores), the real parsers of the usage endpoint's answer, of the
``x-codex-*`` headers and of usage-limit error bodies, and the proxy's retry
loop (mark the account, place the request anew, at most
``MAX_ACCOUNTS_PER_REQUEST`` accounts per request). The clock is a
``task.Clock``. What is simulated: the upstream (each login's true 5-hour and
weekly windows, each API key's daily budget), and the workload.

The workload (seeded; every number below is a parameter of :class:`Workload`):

- a pool of ChatGPT logins on two plans (``plus``: 4 M credits per 5 hours,
  20 M per week; ``pro``: 6.75x that), each with its own weekly reset phase
  and starting usage, and one pay-per-token API key with a daily budget;
- 6 people working 09:00-18:00 on weekdays (an hour off at lunch), each
  starting a burst of work about every 80 minutes; a burst opens 1 to 4
  conversations within a minute (a main agent and sub-agents);
- a conversation is 1-6 user turns of 3-40 model requests each ("turns" in
  the table: every model request is routed); requests come 3-20 s apart,
  user turns 1-10 minutes apart;
- each request sends the whole conversation so far (8-25 k tokens at first,
  0.3-4 k more per request, compacted to 30 k past 200 k) and gets 100-1500
  tokens back. The prompt cache of the account that served the previous
  request covers 95% of the shared prefix; a request on another account
  starts cold;
- a request costs ``uncached + 0.1 x cached + 8 x output`` credits (the API
  price ratios), against the login's windows or, on an API key, at $1.25 per
  million credits;
- the 5-hour window starts at a login's first request after the last one
  ended; the weekly window resets on its own phase; a login whose window is
  full answers 429 ``usage_limit_reached`` with its ``x-codex-*`` headers;
  an API key past its daily budget answers 429 ``insufficient_quota``;
- Subrouter learns usage only from polls every 10 minutes and from the
  ``x-codex-*`` headers of every answer (with ``--scenario
  no-reset-headers`` the headers carry no reset times, as seen in the
  field).

Reported per policy: conversations and turns served, turns that failed
(every account refused), turns that moved to another account, moves while the
old account still had headroom ("needless"), usage-limit answers met,
quota left unused at each reset, API-key spend, the cache hit ratio, and the
longest run of new conversations placed on one login in a row while another
login was usable too ("run": herding). The forecast is
checked against when each window actually filled.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
import statistics
import sys
from collections.abc import Callable, Collection
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.refresh import TokenRefresher
from subrouter.accounts.store import Account, AccountKind, AccountStore
from subrouter.proxy.resource import _out_of_quota
from subrouter.routing.exchange import Exchange, OutOfQuota, Sent, Verdict
from subrouter.sessions.identity import Identity
from subrouter.sessions.keys import SessionKey
from subrouter.sessions.placement import NoAccount, Placement
from subrouter.sessions.scheduler import Candidate, Choice, explain
from subrouter.sessions.table import SessionTable
from subrouter.sessions.usage import (
    UsageBook,
    retry_after,
    windows_from_headers,
    windows_from_usage,
)

#: these runs never refresh a token: no HTTP client is needed
_NEVER_REFRESHES: Any = None

HOUR = 3600.0
DAY = 86400.0
FIVE_HOURS = 5 * HOUR
WEEK = 7 * DAY
#: a Monday 00:00 UTC
EPOCH = 1_800_403_200.0
POLL_EVERY = 600.0
CACHE_HIT = 0.95
CACHE_TTL = HOUR
CACHED_WEIGHT = 0.1
OUTPUT_WEIGHT = 8.0
DOLLARS_PER_MILLION = 1.25
COMPACT_AT = 200_000
COMPACT_TO = 30_000


# -- the workload -------------------------------------------------------------


@attrs.frozen
class Plan:
    name: str
    five_hour: float
    weekly: float


PLANS = {
    "plus": Plan("plus", 4e6, 20e6),
    "pro": Plan("pro", 27e6, 135e6),
}


@attrs.frozen
class LoginSpec:
    id: str
    plan: str
    weekly_used: float  # percent at the start
    weekly_resets_in: float  # seconds after the start
    five_used: float = 0.0
    five_resets_in: float | None = None  # None: no 5-hour window running


@attrs.frozen
class Workload:
    seed: int = 1
    days: int = 5
    people: int = 6
    bursts_per_hour: float = 1.0
    logins: tuple[LoginSpec, ...] = (
        LoginSpec("ana@example.com", "plus", 55, 1.5 * DAY),
        LoginSpec("ben@example.com", "plus", 85, 0.6 * DAY, 30, 2 * HOUR),
        LoginSpec("cho@example.com", "plus", 20, 4.2 * DAY),
        LoginSpec("dev@example.com", "plus", 40, 6.1 * DAY),
        LoginSpec("eve@example.com", "pro", 30, 3.3 * DAY),
    )
    api_keys: tuple[str, ...] = ("apikey:team",)
    key_budget_per_day: float = 25.0
    reset_headers: bool = True

    def describe(self) -> str:
        logins = ", ".join(
            f"{s.id.split('@')[0]} ({s.plan}, week {s.weekly_used:.0f}% used, resets in "
            f"{s.weekly_resets_in / DAY:.1f}d)" for s in self.logins
        )
        return (
            f"seed {self.seed}: {self.days} working days, {self.people} people, "
            f"{self.bursts_per_hour}/h bursts each; logins: {logins}; "
            f"{len(self.api_keys)} API key(s) at ${self.key_budget_per_day:.0f}/day; "
            f"reset times in headers: {'yes' if self.reset_headers else 'no'}"
        )


@attrs.frozen
class Request:
    at_offset: float  # seconds after the previous request of its conversation
    growth: int
    output: int


@attrs.frozen
class Conversation:
    id: str
    start: float
    context: int
    requests: tuple[Request, ...]


def generate(workload: Workload) -> list[Conversation]:
    """
    Every conversation of the workload, in start order.
    """
    rng = random.Random(workload.seed)
    conversations = []
    counter = itertools.count()
    for day in range(workload.days):
        base = EPOCH + day * DAY
        for person in range(workload.people):
            start = base + 9 * HOUR + rng.uniform(-0.5, 0.5) * HOUR
            end = base + 18 * HOUR + rng.uniform(-0.5, 1.0) * HOUR
            lunch = base + 12.5 * HOUR + rng.uniform(-0.5, 0.5) * HOUR
            t = start + rng.expovariate(workload.bursts_per_hour / HOUR)
            while t < end:
                if not lunch <= t < lunch + HOUR:
                    size = rng.choices([1, 2, 3, 4], weights=[60, 18, 12, 10])[0]
                    for _ in range(size):
                        conversations.append(
                            _conversation(rng, f"p{person}-c{next(counter)}",
                                          t + rng.uniform(0, 60))
                        )
                t += rng.expovariate(workload.bursts_per_hour / HOUR)
    conversations.sort(key=lambda c: c.start)
    return conversations


def _conversation(rng: random.Random, name: str, start: float) -> Conversation:
    requests = []
    for turn in range(rng.randint(1, 4)):
        for index in range(rng.randint(2, 25)):
            if index == 0:
                gap = 0.0 if turn == 0 else rng.uniform(60, 600)
            else:
                gap = rng.uniform(3, 20)
            requests.append(Request(gap, rng.randint(300, 4000), rng.randint(100, 1500)))
    return Conversation(name, start, rng.randint(8000, 25000), tuple(requests))


# -- the upstream -----------------------------------------------------------


@attrs.define
class TrueWindow:
    name: str
    length: float
    capacity: float
    rolling: bool  # starts at the first request after it ended
    used: float = 0.0
    resets_at: float | None = None
    instance: int = 0

    def roll(self, now: float, leftovers: list[float]) -> None:
        while self.resets_at is not None and now >= self.resets_at:
            leftovers.append(max(0.0, 100.0 - self.percent))
            self.used = 0.0
            self.instance += 1
            self.resets_at = None if self.rolling else self.resets_at + self.length

    @property
    def percent(self) -> float:
        return min(100.0, self.used / self.capacity * 100.0)

    @property
    def full(self) -> bool:
        return self.used >= self.capacity

    def charge(self, credits: float, now: float) -> None:
        if self.resets_at is None:
            self.resets_at = now + self.length
        self.used += credits

    def reset_in(self, now: float) -> float:
        return self.resets_at - now if self.resets_at is not None else self.length

    def as_usage(self, now: float) -> dict[str, Any]:
        return {
            "used_percent": int(self.percent),
            "limit_window_seconds": int(self.length),
            "reset_after_seconds": int(self.reset_in(now)),
            "reset_at": int(now + self.reset_in(now)),
        }


@attrs.define
class Answer:
    status: int
    headers: Headers
    body: bytes = b""


class Upstream:
    """
    The truth: every login's windows and every key's budget.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.windows: dict[str, tuple[TrueWindow, TrueWindow]] = {}
        self.plans: dict[str, str] = {}
        self.leftovers: dict[str, list[float]] = {"primary": [], "secondary": []}
        self.fills: list[tuple[str, str, int, float]] = []  # login, window, instance, when
        for spec in workload.logins:
            plan = PLANS[spec.plan]
            five = TrueWindow("primary", FIVE_HOURS, plan.five_hour, True,
                              plan.five_hour * spec.five_used / 100)
            if spec.five_resets_in is not None:
                five.resets_at = EPOCH + spec.five_resets_in
            week = TrueWindow("secondary", WEEK, plan.weekly, False,
                              plan.weekly * spec.weekly_used / 100,
                              EPOCH + spec.weekly_resets_in)
            self.windows[spec.id] = (five, week)
            self.plans[spec.id] = spec.plan
        self.key_spent: dict[str, float] = dict.fromkeys(workload.api_keys, 0.0)
        self.key_day: dict[str, int] = dict.fromkeys(workload.api_keys, 0)
        self.dollars = 0.0

    def roll(self, now: float) -> None:
        for five, week in self.windows.values():
            five.roll(now, self.leftovers["primary"])
            week.roll(now, self.leftovers["secondary"])

    def has_headroom(self, login: str) -> bool:
        five, week = self.windows[login]
        return not five.full and not week.full

    def headers(self, login: str, now: float) -> Headers:
        headers = Headers()
        for window in self.windows[login]:
            prefix = f"x-codex-{window.name}-"
            headers.setRawHeaders(f"{prefix}used-percent", [str(int(window.percent))])
            headers.setRawHeaders(f"{prefix}window-minutes", [str(int(window.length // 60))])
            if self.workload.reset_headers:
                headers.setRawHeaders(f"{prefix}reset-after-seconds",
                                      [str(int(window.reset_in(now)))])
        return headers

    def usage_document(self, login: str, now: float) -> dict[str, Any]:
        five, week = self.windows[login]
        return {
            "plan_type": self.plans[login],
            "rate_limit": {
                "allowed": not (five.full or week.full),
                "limit_reached": five.full or week.full,
                "primary_window": five.as_usage(now),
                "secondary_window": week.as_usage(now),
            },
        }

    def answer(self, account: str, credits: float, now: float) -> Answer:
        if account in self.key_spent:
            return self._key_answer(account, credits, now)
        five, week = self.windows[account]
        headers = self.headers(account, now)
        if five.full or week.full:
            full = five if five.full else week
            body = {"error": {"type": "usage_limit_reached",
                              "message": "The usage limit has been reached",
                              "plan_type": self.plans[account],
                              "resets_in_seconds": int(full.reset_in(now))}}
            return Answer(429, headers, json.dumps(body).encode())
        for window in (five, week):
            was_full = window.full
            window.charge(credits, now)
            if window.full and not was_full:
                self.fills.append((account, window.name, window.instance, now))
        return Answer(200, headers)

    def _key_answer(self, key: str, credits: float, now: float) -> Answer:
        day = int((now - EPOCH) // DAY)
        if day != self.key_day[key]:
            self.key_day[key], self.key_spent[key] = day, 0.0
        if self.key_spent[key] >= self.workload.key_budget_per_day:
            body = {"error": {"type": "insufficient_quota", "code": "insufficient_quota",
                              "message": "You exceeded your current quota."}}
            return Answer(429, Headers(), json.dumps(body).encode())
        dollars = credits / 1e6 * DOLLARS_PER_MILLION
        self.key_spent[key] += dollars
        self.dollars += dollars
        return Answer(200, Headers())


# -- the policies -------------------------------------------------------------


class _Baseline(Placement):
    """
    The real placement (stickiness, exhaustion marks, retries) with another
    rule for new conversations. Logins come first, API keys only when no login
    is left, as any sane baseline would do.
    """

    def _usable(self, now: float, oauth_only: bool, exclude: Collection[str]
                ) -> list[Account]:
        out = []
        for account in self.pool.store.accounts():
            if account.id in exclude or (oauth_only and not account.is_oauth):
                continue
            if self.pool.why_unusable(account) is not None:
                continue
            if self.usage.exhausted_until(account.id, now) is not None:
                continue
            out.append(account)
        logins = [a for a in out if a.is_oauth]
        return logins or out

    def pick(self, now: float, provider: str = "openai", oauth_only: bool = False,
             exclude: Collection[str] = ()) -> Choice:
        usable = self._usable(now, oauth_only, exclude)
        if not usable:
            raise NoAccount(503, "usage_limit_reached", "nothing left")
        account = self._rule(usable, now)
        return explain(Candidate(account.id, account.is_oauth,
                                 self.usage.score(account.id, account.is_oauth, now)), None)

    def _rule(self, usable: list[Account], now: float) -> Account:
        raise NotImplementedError


class RoundRobin(_Baseline):
    _next = 0

    def _rule(self, usable: list[Account], now: float) -> Account:
        ids = [a.id for a in self.pool.store.accounts()]
        for step in range(len(ids)):
            candidate = ids[(self._next + step) % len(ids)]
            for account in usable:
                if account.id == candidate:
                    self._next = (self._next + step + 1) % len(ids)
                    return account
        return usable[0]


class LeastLoaded(_Baseline):
    def _rule(self, usable: list[Account], now: float) -> Account:
        counts = self.table.live_counts(now)
        return min(usable, key=lambda a: (counts.get(a.id, 0), a.id))


POLICIES: dict[str, type[Placement]] = {
    "subrouter": Placement,
    "round-robin": RoundRobin,
    "least-loaded": LeastLoaded,
}


# -- the run ------------------------------------------------------------------


@attrs.define
class Results:
    policy: str
    conversations: int = 0
    conversations_whole: int = 0
    turns: int = 0
    served: int = 0
    served_by_key: int = 0
    failed: int = 0
    moved: int = 0
    needless: int = 0
    limit_answers: int = 0
    dollars: float = 0.0
    cached_tokens: float = 0.0
    input_tokens: float = 0.0
    leftover_5h: list[float] = attrs.Factory(list)
    leftover_week: list[float] = attrs.Factory(list)
    longest_run: int = 0
    longest_run_account: str = ""
    forecast_errors: list[float] = attrs.Factory(list)  # minutes, predicted - actual
    fills: int = 0
    fills_forecast: int = 0

    def row(self) -> dict[str, Any]:
        def mean(values: list[float]) -> float | None:
            return round(statistics.fmean(values), 1) if values else None

        errors = [abs(e) for e in self.forecast_errors]
        return {
            "policy": self.policy,
            "conversations": self.conversations,
            "conversations_whole": self.conversations_whole,
            "turns": self.turns,
            "served": self.served,
            "served_by_api_key": self.served_by_key,
            "failed": self.failed,
            "moved": self.moved,
            "needless_moves": self.needless,
            "usage_limit_answers": self.limit_answers,
            "api_key_dollars": round(self.dollars, 2),
            "cache_hit": round(self.cached_tokens / self.input_tokens, 3)
            if self.input_tokens else None,
            "left_at_5h_reset_pct": mean(self.leftover_5h),
            "resets_5h": len(self.leftover_5h),
            "left_at_weekly_reset_pct": mean(self.leftover_week),
            "resets_weekly": len(self.leftover_week),
            "longest_run_new": self.longest_run,
            "longest_run_account": self.longest_run_account,
            "windows_filled": self.fills,
            "fills_with_forecast": self.fills_forecast,
            "forecast_median_abs_error_min": round(statistics.median(errors), 1)
            if errors else None,
            "forecast_median_error_min": round(statistics.median(self.forecast_errors), 1)
            if self.forecast_errors else None,
        }


def _build(workload: Workload, policy: str) -> tuple[Placement, Clock]:
    clock = Clock()
    clock.advance(EPOCH - 3 * HOUR)
    store = AccountStore("/nonexistent", lambda f: succeed(f()))
    for spec in workload.logins:
        store.replace(Account(id=spec.id, kind=AccountKind.OAUTH, source=f"/sim/{spec.id}",
                              secret="sim", plan=spec.plan))
    for key in workload.api_keys:
        store.replace(Account(id=key, kind=AccountKind.APIKEY, source=f"/sim/{key}",
                              secret="sim"))
    store.version += 1
    refresher = TokenRefresher(store=store, http=_NEVER_REFRESHES, token_url="https://unused.invalid",
                               clock=clock, run_blocking=lambda f: succeed(f()),
                               codex_auth="/nonexistent")
    placement = POLICIES[policy](AccountPool(store, refresher), SessionTable(1800.0),
                                 UsageBook(), clock)
    return placement, clock


@attrs.define
class _Live:
    conversation: Conversation
    index: int = 0
    context: int = 0
    account: str | None = None
    last_at: float = 0.0
    failed: bool = False


def run(workload: Workload, policy: str,
        observe: Callable[[Placement, float], None] | None = None) -> Results:
    """
    Run the workload through one policy.
    """
    placement, clock = _build(workload, policy)
    upstream = Upstream(workload)
    book = placement.usage
    results = Results(policy)
    logins = [s.id for s in workload.logins]
    conversations = generate(workload)
    results.conversations = len(conversations)
    events: list[tuple[float, int, str, Any]] = []
    seq = itertools.count()
    for conversation in conversations:
        heapq.heappush(events, (conversation.start, next(seq), "turn",
                                _Live(conversation, context=conversation.context)))
    end = EPOCH + workload.days * DAY
    t = EPOCH
    while t < end:
        heapq.heappush(events, (t, next(seq), "poll", None))
        t += POLL_EVERY
    forecasts: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    run_account, run_length = "", 0

    while events:
        at, _, kind, payload = heapq.heappop(events)
        clock.advance(max(at - clock.seconds(), 0.0))
        now = clock.seconds()
        upstream.roll(now)
        if kind == "poll":
            for login in logins:
                windows, plan = windows_from_usage(upstream.usage_document(login, now), now)
                book.record(login, windows, now, "poll", plan)
                for name, forecast in book.forecasts(login, now).items():
                    if forecast.empties_at is None:
                        continue
                    window = upstream.windows[login][0 if name == "primary" else 1]
                    forecasts.setdefault((login, name, window.instance), []).append(
                        (now, forecast.empties_at))
            if observe is not None:
                observe(placement, now)
            continue
        live: _Live = payload
        conversation = live.conversation
        request = conversation.requests[live.index]
        identity = Identity(SessionKey("codex", conversation.id, "header:session-id"))
        new = placement.table.get("codex", conversation.id) is None
        live.context += request.growth
        if live.context > COMPACT_AT:
            live.context = COMPACT_TO
            live.account = live.account and f"{live.account}#compacted"
        results.turns += 1
        served: list[str] = []

        async def attempt(account: Account, may_refresh: bool,
                          live: _Live = live, request: Request = request,
                          now: float = now, served: list[str] = served
                          ) -> Verdict[str, None]:
            # what the HTTP proxy does with an answer (resource.py)
            warm = account.id == live.account and now - live.last_at < CACHE_TTL
            cached = (live.context - request.growth) * CACHE_HIT if warm else 0.0
            credits = (live.context - cached) + CACHED_WEIGHT * cached \
                + OUTPUT_WEIGHT * request.output
            answer = upstream.answer(account.id, credits, now)
            if account.is_oauth:
                windows = windows_from_headers(answer.headers, now)
                if windows:
                    book.record(account.id, windows, now, "headers")
            if answer.status >= 400:
                if account.is_oauth:
                    results.limit_answers += 1
                if _out_of_quota(answer.status, answer.body):
                    return OutOfQuota(None, retry_after(answer.headers), f"HTTP {answer.status}")
                return Sent("")
            results.input_tokens += live.context
            results.cached_tokens += cached
            if account.is_oauth:
                book.add_tokens(account.id, live.context + request.output)
            served.append(account.id)
            return Sent(account.id)

        exchange: Exchange[str, None] = Exchange(
            placement=placement, refresher=placement.pool.refresher, identity=identity,
            clock=clock, gone=lambda: False,
        )
        outcome: list[object] = []
        Deferred.fromCoroutine(exchange.run(attempt)).addBoth(outcome.append)
        assert outcome, "the exchange must finish without waiting on anything"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        served_by = served[0] if served else None
        if served_by is None:
            results.failed += 1
            live.failed = True
        else:
            results.served += 1
            if served_by not in upstream.windows:
                results.served_by_key += 1
            previous = (live.account or "").split("#")[0] or None
            if previous is not None and previous != served_by:
                results.moved += 1
                if previous in upstream.windows and upstream.has_headroom(previous):
                    results.needless += 1
            # herding: new conversations in a row on one login while another
            # was usable too (at least 40% left, not marked exhausted)
            choices = sum(1 for login in logins
                          if login != served_by and book.exhausted_until(login, now) is None
                          and book.score(login, True, now).usable)
            if new and served_by in upstream.windows and not choices:
                run_account, run_length = "", 0  # nowhere else to go: not herding
            elif new and served_by in upstream.windows:
                if served_by == run_account:
                    run_length += 1
                else:
                    run_account, run_length = served_by, 1
                if run_length > results.longest_run:
                    results.longest_run, results.longest_run_account = run_length, served_by
            live.account, live.last_at = served_by, now
            live.context += request.output
        live.index += 1
        if live.index < len(conversation.requests):
            gap = conversation.requests[live.index].at_offset
            heapq.heappush(events, (now + gap, next(seq), "turn", live))
        elif not live.failed:
            results.conversations_whole += 1

    results.dollars = upstream.dollars
    results.leftover_5h = upstream.leftovers["primary"]
    results.leftover_week = upstream.leftovers["secondary"]
    results.fills = len(upstream.fills)
    for login, name, instance, when in upstream.fills:
        made = [
            (at, predicted) for at, predicted in forecasts.get((login, name, instance), [])
            if when - 3 * HOUR <= at <= when - 10 * 60
        ]
        if made:
            results.fills_forecast += 1
            # the forecast made closest to an hour before the window filled
            at, predicted = min(made, key=lambda m: abs(when - m[0] - HOUR))
            results.forecast_errors.append((predicted - when) / 60.0)
    return results


SCENARIOS = {
    "default": Workload(),
    "light": Workload(bursts_per_hour=0.75),
    "heavy": Workload(bursts_per_hour=1.3),
    # two days, four people, four logins and a small key budget: the test's
    "small": Workload(
        seed=2, days=2, people=4, bursts_per_hour=1.4, key_budget_per_day=15.0,
        logins=(
            LoginSpec("ana@example.com", "plus", 50, 1.2 * DAY),
            LoginSpec("ben@example.com", "plus", 80, 0.55 * DAY, 30, 2 * HOUR),
            LoginSpec("cho@example.com", "plus", 20, 4.0 * DAY),
            LoginSpec("eve@example.com", "pro", 70, 2.5 * DAY),
        ),
    ),
    "no-reset-headers": Workload(reset_headers=False),
    "fresh-equal": Workload(
        logins=tuple(LoginSpec(f"l{i}@example.com", "plus", 0, 7 * DAY) for i in range(4)),
        api_keys=(), days=1,
    ),
}


def table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("policy", "policy"), ("served", "turns served"), ("failed", "failed"),
        ("conversations_whole", "convs whole"), ("moved", "moved"),
        ("needless_moves", "needless"), ("usage_limit_answers", "429s met"),
        ("api_key_dollars", "API $"), ("cache_hit", "cache hit"),
        ("left_at_5h_reset_pct", "5h left %"), ("left_at_weekly_reset_pct", "week left %"),
        ("longest_run_new", "run"),
    ]
    lines = ["| " + " | ".join(title for _, title in columns) + " |",
             "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row[key]) for key, _ in columns) + " |")
    return "\n".join(lines)


def compare(workload: Workload) -> list[dict[str, Any]]:
    return [run(workload, policy).row() for policy in POLICIES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="default")
    parser.add_argument("--days", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    workload = SCENARIOS[args.scenario]
    if args.days is not None:
        workload = attrs.evolve(workload, days=args.days)
    if args.seed is not None:
        workload = attrs.evolve(workload, seed=args.seed)
    print(workload.describe())
    rows = compare(workload)
    ours = rows[0]
    print(f"{ours['conversations']} conversations, {ours['turns']} turns\n")
    print(table(rows))
    print()
    others = rows[1:]
    aims = {
        "more turns served than both baselines":
            all(ours["served"] > r["served"] for r in others),
        "... or at least as many": all(ours["served"] >= r["served"] for r in others),
        "0 needless moves": ours["needless_moves"] == 0,
        "fewer moves than both": all(ours["moved"] < r["moved"] for r in others),
        "less API-key spend than both":
            all(ours["api_key_dollars"] < r["api_key_dollars"] for r in others),
        "... or no more": all(ours["api_key_dollars"] <= r["api_key_dollars"] for r in others),
    }
    for aim, met in aims.items():
        print(f"{'PASS' if met else 'MISS'}  {aim}")
    print(
        f"\nforecast (subrouter run): {ours['windows_filled']} windows filled, "
        f"{ours['fills_with_forecast']} had a forecast 10 min-3 h before; error of the one "
        f"made closest to an hour before: median |error| "
        f"{ours['forecast_median_abs_error_min']} min, median {ours['forecast_median_error_min']}"
        " min (positive: predicted late)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": workload.describe(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

