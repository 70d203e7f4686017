"""
The proxy's decisions about an upstream answer, driven in memory: the
client and the upstream are ``twisted.web`` resources joined by treq's
in-memory agents, time is a ``task.Clock``. Which answer moves a request to
another account, which is passed through, when a token is refreshed, and
when the upstream has been silent too long. (``test_proxy_live.py`` proves
the same path over real sockets and TLS.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from treq.testing import RequestTraversalAgent, StubTreq
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from subrouter.accounts.pool import AccountPool
from subrouter.accounts.store import Account, AccountKind, AccountStore
from subrouter.proxy.resource import ProxyResource, _ProxiedRequest
from subrouter.sessions.placement import Placement
from subrouter.sessions.scheduler import Window
from subrouter.sessions.table import SessionTable
from subrouter.sessions.usage import UsageBook
from subrouter.upstream.routing import Upstreams

IDLE_TIMEOUT = 30.0
USAGE_LIMIT = json.dumps(
    {"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached"}}
).encode()
ACCOUNTS = {"a@example.com": "ws-a", "b@example.com": "ws-b"}

#: how the fake upstream answers one request
Answer = Callable[[Request], bytes | int]


def answer(status: int, body: bytes, content_type: bytes = b"application/json") -> Answer:
    def render(request: Request) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", content_type)
        return body

    return render


def silence(request: Request) -> int:
    return NOT_DONE_YET  # never a byte


class FakeRefresher:
    """
    Tokens stay as they are; a rejected one is "refreshed" (counted).
    """

    def __init__(self) -> None:
        self.rejected: list[str] = []

    def needs_refresh(self, account: Account) -> bool:
        return False

    def ensure_fresh(self, account: Account) -> Deferred[Account]:
        return succeed(account)

    def refresh_rejected(self, account: Account) -> Deferred[Account]:
        self.rejected.append(account.id)
        return succeed(account)

    def why_unusable(self, account: Account) -> str | None:
        return None

    def describe(self, account: Account) -> dict[str, Any]:
        return {}


class Upstream(Resource):
    """
    Answers each request with the next scripted answer (200 ``ok`` when the
    script has run out) and notes the account each one came as.
    """

    isLeaf = True

    def __init__(self, *answers: Answer) -> None:
        super().__init__()
        self.answers = list(answers)
        self.accounts: list[str] = []

    def render(self, request: Request) -> bytes | int:
        self.accounts.append((request.getHeader(b"chatgpt-account-id") or b"-").decode())
        script = self.answers.pop(0) if self.answers else answer(200, b"ok")
        return script(request)


@attrs.define
class Rig:
    clock: Clock
    placement: Placement
    refresher: FakeRefresher
    upstream: Upstream
    agent: RequestTraversalAgent
    client: StubTreq

    def send(self, session: str = "conv-1") -> tuple[int, bytes]:
        """
        POST a turn through the proxy; the status and body the client got.
        """
        got: list[Any] = []
        d = self.client.post(
            "http://proxy.invalid/v1/responses", data=b'{"input":[]}',
            headers={"session-id": session, "content-type": "application/json"},
        )
        d.addCallback(lambda response: self.client.content(response).addCallback(
            lambda body: got.append((response.code, body))))
        d.addErrback(got.append)
        self.flush()
        assert got, "the client got no answer"
        assert not isinstance(got[0], BaseException), got[0]
        result: tuple[int, bytes] = got[0]
        return result

    def flush(self) -> None:
        # the client's request reaches the proxy, the proxy's the upstream,
        # and the answers come back: a few rounds in memory
        for _ in range(6):
            self.client.flush()
            self.agent.flush()

    def exhausted(self, account_id: str) -> bool:
        return self.placement.usage.exhausted_until(account_id, self.clock.seconds()) is not None


def rig(*answers: Answer) -> Rig:
    clock = Clock()
    clock.advance(1_800_000_000)
    store = AccountStore("/nonexistent", lambda f: succeed(f()))
    for email, workspace in ACCOUNTS.items():
        store.replace(Account(id=email, kind=AccountKind.OAUTH, source="/x", secret="t-" + email,
                              chatgpt_account_id=workspace))
    refresher = FakeRefresher()
    placement = Placement(AccountPool(store, refresher),  # type: ignore[arg-type]
                          SessionTable(1800), UsageBook(), clock)
    upstream = Upstream(*answers)
    agent = RequestTraversalAgent(upstream)
    proxy = ProxyResource(
        placement=placement, refresher=refresher,  # type: ignore[arg-type]
        agent=agent,
        upstreams=Upstreams.from_text("https://chatgpt.invalid/backend-api/codex",
                                      "https://api.invalid"),
        clock=clock, idle_timeout=IDLE_TIMEOUT,
    )
    return Rig(clock, placement, refresher, upstream, agent, StubTreq(proxy))


def test_a_usage_limit_answer_moves_the_request_to_another_account() -> None:
    r = rig(answer(429, USAGE_LIMIT))
    assert r.send() == (200, b"ok")
    first, second = r.upstream.accounts
    assert first != second
    account = {v: k for k, v in ACCOUNTS.items()}
    assert r.exhausted(account[first]) and not r.exhausted(account[second])


def test_an_overloaded_upstream_is_passed_through_and_no_account_is_marked() -> None:
    overloaded = json.dumps({"error": {"message": "Model is at capacity"}}).encode()
    r = rig(answer(429, overloaded))
    assert r.send() == (429, overloaded)
    assert len(r.upstream.accounts) == 1
    assert not any(r.exhausted(email) for email in ACCOUNTS)


def test_a_server_error_is_never_exhaustion_even_if_it_mentions_a_usage_limit() -> None:
    r = rig(answer(503, USAGE_LIMIT))
    assert r.send() == (503, USAGE_LIMIT)
    assert len(r.upstream.accounts) == 1
    assert not any(r.exhausted(email) for email in ACCOUNTS)


def test_a_rejected_token_is_refreshed_once_and_the_request_sent_again() -> None:
    r = rig(answer(401, b'{"error":"token_expired"}'))
    assert r.send() == (200, b"ok")
    first, second = r.upstream.accounts
    assert first == second
    assert len(r.refresher.rejected) == 1


def test_a_token_rejected_again_after_the_refresh_reaches_the_client() -> None:
    rejected = b'{"error":"token_expired"}'
    r = rig(answer(401, rejected), answer(401, rejected))
    assert r.send() == (401, rejected)
    assert len(r.upstream.accounts) == 2 and len(r.refresher.rejected) == 1


def test_an_upstream_silent_for_the_idle_timeout_gives_504() -> None:
    r = rig(silence)
    got: list[Any] = []
    d = r.client.post("http://proxy.invalid/v1/responses", data=b"{}",
                      headers={"session-id": "quiet"})
    d.addCallback(lambda response: r.client.json_content(response).addCallback(
        lambda body: got.append((response.code, body))))
    r.flush()
    r.clock.advance(IDLE_TIMEOUT - 1)
    r.flush()
    assert got == [] and len(r.upstream.accounts) == 1
    r.clock.advance(1)
    r.flush()
    ((status, body),) = got
    assert status == 504 and body["error"]["type"] == "upstream_timeout"


def test_a_stream_of_an_account_near_its_limit_is_looked_at_before_it_is_relayed() -> None:
    # an account with little headroom left: its stream's first event is read
    # before anything reaches the client, so a usage-limit error moves it
    event = b"data: " + USAGE_LIMIT + b"\n\n"
    r = rig(answer(200, event, b"text/event-stream"))
    now = r.clock.seconds()
    for email in ACCOUNTS:
        r.placement.usage.record(email, [Window("primary", 95.0, 18000, 600)], now, "poll")
    status, body = r.send()
    assert (status, body) == (200, b"ok")
    assert len(set(r.upstream.accounts)) == 2


def test_the_log_names_a_conversation_by_its_keys_sha256_and_remembers_only_so_many() -> None:
    import hashlib

    from subrouter.proxy import resource

    resource._SHORT.clear()
    for n in range(resource._SHORT_MAX + 10):
        key = f"conversation-{n}"
        assert resource._short_hash(key) == hashlib.sha256(key.encode()).hexdigest()[:8]
    assert len(resource._SHORT) <= resource._SHORT_MAX
    assert resource._short_hash("caf\udce9") == hashlib.sha256(
        "caf\udce9".encode("utf-8", "replace")).hexdigest()[:8]


@pytest.mark.logged_failures_expected
def test_a_fault_relaying_a_first_answer_is_a_500_and_logged(
    monkeypatch: pytest.MonkeyPatch, observe_errors: list[dict[str, Any]]
) -> None:
    """
    The first attempt's plain success is relayed outside the exchange's
    coroutine; a bug there still ends in one 500 and a logged failure,
    never a request left hanging.
    """
    def broken(self: Any, response: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(_ProxiedRequest, "_answer_streaming", broken)
    r = rig()
    status, body = r.send()
    assert status == 500 and json.loads(body)["error"]["type"] == "internal_error"
    assert [str(e["log_failure"].value) for e in observe_errors] == ["boom"]



def test_a_finished_request_is_freed_without_the_cyclic_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    Nothing of a finished request waits for the cyclic garbage collector:
    a request and its exchange used to hold each other, and some 35 objects
    per request were left for the collector to walk and free.
    """
    import gc
    import weakref

    made: list[weakref.ref[_ProxiedRequest]] = []
    start = _ProxiedRequest.start

    def recorded(self: _ProxiedRequest) -> None:
        made.append(weakref.ref(self))
        start(self)

    monkeypatch.setattr(_ProxiedRequest, "start", recorded)
    r = rig()
    gc.collect()
    gc.disable()
    try:
        assert r.send() == (200, b"ok")
        r.flush()
        assert len(made) == 1
        assert made[0]() is None, gc.get_referrers(made[0]())
    finally:
        gc.enable()
