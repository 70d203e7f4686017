# -*- test-case-name: tests.test_cx -*-
"""
Fetching usage for ``cx status``, with the daemon's own code: the token
refresher and the usage poller, run on a reactor for the length of the
command, every account at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from subrouter.accounts.store import Account


def fetch_all(
    store_dir: str,
    logins: list[Account],
    usage_url: str,
    token_url: str,
    environ: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    """
    Each login's windows, headroom and plan (or error), by account id.
    Blocking: runs the reactor until every fetch ended.
    """
    if not logins:
        return {}
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import Deferred, DeferredList
    from twisted.internet.threads import deferToThread

    from subrouter.accounts.refresh import TokenRefresher, codex_auth_path
    from subrouter.accounts.store import AccountStore
    from subrouter.routing.usage import UsagePoller
    from subrouter.sessions.scheduler import score_windows
    from subrouter.sessions.usage import UsageBook

    reactor: Any = _reactor
    http, pool = command_http(environ)
    store = AccountStore(store_dir, deferToThread)
    store.scan_now()
    refresher = TokenRefresher(store=store, http=http, token_url=token_url, clock=reactor,
                               run_blocking=deferToThread,
                               codex_auth=codex_auth_path(dict(environ)))
    book = UsageBook()
    poller = UsagePoller(store=store, refresher=refresher, http=http, usage_url=usage_url,
                         usage=book, clock=reactor, score_ttl=0)
    results: dict[str, dict[str, Any]] = {}

    async def everything() -> None:
        await DeferredList([Deferred.fromCoroutine(poller.fetch(a)) for a in logins],
                           consumeErrors=True)
        await pool.closeCachedConnections()
        now = reactor.seconds()
        for account in logins:
            usage = book.get(account.id)
            windows = book.current_windows(account.id, now)
            row: dict[str, Any] = {
                "windows": [
                    {"name": w.name, "used_percent": w.used_percent,
                     "window_minutes": w.window_seconds // 60 or None,
                     "resets_in": int(w.reset_after) or None}
                    for w in windows
                ],
                "headroom": round(score_windows(windows).headroom, 4) if windows else None,
                "error": usage.error,
            }
            if usage.plan:
                row["plan"] = usage.plan
            refresh_problem = refresher.why_unusable(account)
            if refresh_problem:
                row["error"] = refresh_problem
            results[account.id] = row

    failure: list[BaseException] = []

    def failed(reason: Any) -> None:
        failure.append(reason.value)

    def run() -> None:
        d = Deferred.fromCoroutine(everything())
        d.addErrback(failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run(installSignalHandlers=False)
    if failure:
        raise failure[0]
    return results



def run_async(make: Any) -> Any:
    """
    Run ``make()`` (a coroutine) on the reactor until it ends, for a
    command-line process that does one thing. Blocking.
    """
    from twisted.internet import reactor as _reactor
    from twisted.internet.defer import Deferred

    reactor: Any = _reactor
    outcome: list[Any] = []

    def run() -> None:
        d = Deferred.fromCoroutine(make())
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run(installSignalHandlers=False)
    result = outcome[0] if outcome else None
    from twisted.python.failure import Failure

    if isinstance(result, Failure):
        result.raiseException()
    return result


def validate_admin_key(base_url: str, key: str, environ: Mapping[str, str]) -> str | None:
    """
    Whether OpenAI accepts an admin key: the projects list, or (when that is
    forbidden) the costs endpoint. None when accepted, else why not.
    """
    import time as _time

    import treq

    from subrouter.errors import describe_failure_reason
    from subrouter.redact import scrub_text

    async def check() -> str | None:
        http, pool = command_http(environ)
        headers: Any = {"Authorization": [f"Bearer {key}"], "Accept": ["application/json"]}
        base = base_url.rstrip("/")
        urls = [
            f"{base}/v1/organization/projects?limit=1",
            f"{base}/v1/organization/costs?start_time={int(_time.time()) - 86400}"
            "&bucket_width=1d&limit=1",
        ]
        try:
            for url in urls:
                try:
                    response = await http.get(url, headers=headers, timeout=30)
                    body = await treq.content(response)
                except Exception as e:
                    return describe_failure_reason(e)
                if 200 <= response.code < 300:
                    return None
                if response.code != 403:
                    text = scrub_text(body.decode("utf-8", "replace"), [key])[:200]
                    return f"OpenAI answered HTTP {response.code}: {text}"
            return "OpenAI answered HTTP 403 to both the projects and the costs endpoints"
        finally:
            await pool.closeCachedConnections()

    result: str | None = run_async(check)
    return result


def command_http(environ: Mapping[str, str]) -> tuple[Any, Any]:
    """
    A treq client for one command's requests, and its pool (close it when
    done): the platform's trust roots plus ``SUBROUTER_CA_BUNDLE``.
    """
    from twisted.internet import reactor

    from subrouter.upstream.client import make_agent, make_http_client, make_pool, make_tls_policy

    bundle = environ.get("SUBROUTER_CA_BUNDLE")
    pool = make_pool(reactor)
    http = make_http_client(make_agent(reactor, pool, make_tls_policy([bundle] if bundle else [])))
    return http, pool
