"""
Why, end to end: the request log line, ``/_subrouter/sessions/<agent>/<id>``,
``/_subrouter/placement/next``, forecasts in ``/_subrouter/accounts``, and
``cx why`` / ``cx status`` talking to the running daemon.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from subrouter.cli import why
from subrouter.cli.console import Streams
from subrouter.cli.cx import CxOptions, execute
from subrouter.cli.entry import CommandFailed
from tests.support.daemon import reactor
from tests.support.sessions import Backend, start, turn, workspace_of
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream


async def cx(url: str, *args: str) -> tuple[int, str, str]:
    options = CxOptions()
    options.parseOptions(["why", *args, "--url", url])
    out = io.StringIO()
    try:
        code = await Deferred.fromCoroutine(
            execute(options, Streams(out, io.StringIO(), io.StringIO(), {}), reactor))
    except CommandFailed as e:
        return e.code, out.getvalue(), str(e)
    return code, out.getvalue(), ""


@pytest_twisted.ensureDeferred
async def test_every_request_says_why_and_the_daemon_explains_a_conversation(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    backend = Backend(upstream)
    daemon = await start(tmp_path, upstream, ca)
    try:
        code, body = await turn(daemon, "conv-1")
        assert code == 200
        first = workspace_of(body)
        await turn(daemon, "conv-1")
        lines = [e for e in daemon.log if e.get("log_category") == "request"]
        assert lines[0]["why"].startswith("new:"), lines[0]["why"]
        assert " why=new:" in lines[0]["request_line"]
        assert lines[1]["why"] == "sticky"

        detail = await daemon.get_json("/_subrouter/sessions/codex/conv-1")
        assert detail["session"] == "conv-1" and detail["requests"] == 2
        assert detail["placement"]["kind"] == "new"
        ranking = detail["placement"]["ranking"]
        assert ranking["chosen"]["account"] == detail["account"]
        assert ranking["runner_up"]["account"] != detail["account"]
        assert detail["next_request"] == {"stays": True, "why_not": None}
        assert "sticky since" in detail["text"]
        # the agent may be left out when only one agent has the id
        assert (await daemon.get_json("/_subrouter/sessions/conv-1"))["session"] == "conv-1"
        missing = await daemon.request("GET", "/_subrouter/sessions/codex/nope")
        assert missing.code == 404
        assert b"no conversation nope" in await missing.content()

        # the login runs out: the next turn moves, and says from where and why
        busy = {"fresh@example.com": "ws-fresh", "spare@example.com": "ws-spare"}
        account = next(a for a, ws in busy.items() if ws == first)
        backend.exhausted.add(first)
        code, body = await turn(daemon, "conv-1")
        assert code == 200 and workspace_of(body) != first
        moved = await daemon.get_json("/_subrouter/sessions/codex/conv-1")
        assert moved["placement"]["kind"] == "moved"
        assert moved["placement"]["moved_from"] == account
        assert "usage limit" in moved["placement"]["cause"]
        assert moved["moves"] == 1
        line = [e for e in daemon.log if e.get("log_category") == "request"][-1]
        assert line["why"].startswith(f"moved<{account}")

        upcoming = await daemon.get_json("/_subrouter/placement/next")
        assert upcoming["account"] not in (None, account)
        assert upcoming["reason"]["chosen"]["account"] == upcoming["account"]
        states = {row["account"]: row for row in upcoming["ranking"]}
        assert states[account]["unusable"] is not None  # it is marked exhausted
        assert upcoming["text"].startswith("a new conversation would go to")

        code, out, err = await cx(daemon.url, "conv-1")
        assert code == 0, err
        assert f"moved from {account}" in out
        assert "a new conversation would go to" in out
        assert "headroom" in out and "busy@example.com" in out
        code, out, _ = await cx(daemon.url, "codex/conv-1", "--json")
        assert code == 0 and json.loads(out)["conversation"]["session"] == "conv-1"
        code, _, err = await cx(daemon.url, "unknown-conversation")
        assert code != 0 and "no conversation unknown-conversation" in err
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_accounts_carry_a_forecast_per_window(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    Backend(upstream)
    daemon = await start(tmp_path, upstream, ca)
    try:
        listing = await daemon.get_json("/_subrouter/accounts")
        windows = [w for row in listing["accounts"] for w in row["windows"]]
        assert windows
        for window in windows:
            forecast = window["forecast"]
            assert forecast["reason"] == "not enough data"  # one poll so far
            assert forecast["empties_at"] is None and forecast["hours_left"] is None
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_cx_why_without_a_daemon_says_how_to_start_one() -> None:
    code, _, err = await cx("http://127.0.0.1:9")
    assert code != 0
    assert "cannot reach the Subrouter daemon at http://127.0.0.1:9" in err
    assert "subrouter serve" in err


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("url", ["nonsense", "http://", "ftp://127.0.0.1:31415",
                                 "http://127.0.0.1:99999", "http://[::1"])
async def test_cx_why_with_a_malformed_address_names_the_option(url: str) -> None:
    code, _, err = await cx(url)
    assert code != 0
    assert err.startswith(f"--url: {url!r} is not the daemon's address")
    assert "cannot reach" not in err


def test_forecast_words() -> None:
    assert why.forecast_words({"reason": "not enough data"}) == "not enough data"
    assert why.forecast_words({"reason": None, "percent_per_hour": 12.0, "hours_left": 2.5,
                               "resets_first": False}) == "empties in 2h 30m (12.0%/h)"
    assert why.forecast_words(None) == "-"
    assert why.forecast_words({"reason": None, "percent_per_hour": 2.0, "hours_left": 30,
                               "resets_first": True}).startswith("resets first")


def _listing(query: dict[bytes, list[bytes]], count: int = 5) -> tuple[int, Any, Any]:
    """
    ``GET /_subrouter/sessions`` with ``query``, over a table of ``count``
    conversations seen one second apart (conv-0 the most recent).
    """
    from twisted.web.test.requesthelper import DummyRequest

    from subrouter.sessions.table import SessionTable
    from subrouter.web.why import SessionsResource

    table = SessionTable(3600)
    for i in range(count):
        table.adopt("codex", f"conv-{i}", "acct", 1000.0, first_seen=900.0 - i,
                    last_seen=1000.0 - i, requests=1, fallback=False, user_email=None)

    class _Placement:
        pass

    placement = _Placement()
    placement.table = table  # type: ignore[attr-defined]
    request = DummyRequest([])
    request.method = b"GET"
    request.args = query
    body = SessionsResource(placement).render(request)  # type: ignore[arg-type]
    return request.responseCode or 200, json.loads(body), request.responseHeaders


def test_the_session_list_pages_most_recent_first_and_counts_them_all() -> None:
    status, rows, headers = _listing({b"limit": [b"2"]})
    assert status == 200
    assert [r["session"] for r in rows] == ["conv-0", "conv-1"]
    assert headers.getRawHeaders(b"x-total-count") == [b"5"]
    _, rows, _ = _listing({b"limit": [b"2"], b"offset": [b"2"]})
    assert [r["session"] for r in rows] == ["conv-2", "conv-3"]
    _, rows, _ = _listing({b"offset": [b"4"]})
    assert [r["session"] for r in rows] == ["conv-4"]
    _, rows, _ = _listing({b"limit": [b"all"]})
    assert len(rows) == 5
    _, rows, _ = _listing({b"offset": [b"9"]})
    assert rows == []


def test_the_session_list_lists_a_page_unless_asked_for_all() -> None:
    from subrouter.web.admin import SESSIONS_PAGE

    _, rows, headers = _listing({}, count=SESSIONS_PAGE + 3)
    assert len(rows) == SESSIONS_PAGE
    assert rows[0]["session"] == "conv-0"
    assert headers.getRawHeaders(b"x-total-count") == [b"%d" % (SESSIONS_PAGE + 3)]
    _, rows, _ = _listing({b"limit": [b"all"]}, count=SESSIONS_PAGE + 3)
    assert len(rows) == SESSIONS_PAGE + 3


@pytest.mark.parametrize("query", [
    {b"limit": [b"0"]}, {b"limit": [b"-1"]}, {b"limit": [b"ten"]}, {b"limit": [b"100001"]},
    {b"offset": [b"-3"]}, {b"offset": [b"all"]}, {b"limit": [b"1e3"]},
])
def test_a_bad_paging_number_is_a_400_with_a_reason(query: dict[bytes, list[bytes]]) -> None:
    status, body, _ = _listing(query)
    assert status == 400
    assert body["error"]["type"] == "invalid_query"
    name = next(iter(query)).decode()
    assert body["error"]["message"].startswith(f"{name} must be a whole number")


@pytest.mark.parametrize("postpath", [[], [b"codex", b"conv-1"]])
def test_the_sessions_endpoints_answer_other_methods_with_a_405(postpath: list[bytes]) -> None:
    from twisted.web.test.requesthelper import DummyRequest

    from subrouter.sessions.table import SessionTable
    from subrouter.web.why import SessionsResource

    class _Placement:
        table = SessionTable(3600)

    request = DummyRequest(postpath)
    request.method = b"POST"
    body = SessionsResource(_Placement()).render(request)  # type: ignore[arg-type]
    assert request.responseCode == 405
    assert request.responseHeaders.getRawHeaders(b"allow") == [b"GET, HEAD"]
    assert json.loads(body)["error"]["type"] == "method_not_allowed"
