"""
Shared fixtures: every test fails if it logs an unhandled error (the way
trial does), unless it declares it expects some, and if it leaves a timer
(``DelayedCall``) or a connection (a reader or writer of the reactor) behind.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import settings
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream

# property tests judge behaviour, not speed: a loaded machine must not fail them
settings.register_profile("subrouter", deadline=None)
settings.load_profile("subrouter")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "logged_failures_expected: the test logs failures on purpose"
    )


@pytest.fixture(autouse=True)
def observe_errors(request: pytest.FixtureRequest) -> Iterator[list[dict[str, Any]]]:
    """
    Collect logged failures (unhandled errors in Deferreds, failures logged
    with ``log.failure``) and fail the test if any appear.
    """
    failures: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield failures
        gc.collect()  # surfaces "Unhandled error in Deferred" from garbage
        # what survived is not this test's garbage: leave it out of the next
        # full collection, which then only walks what the next test made
        # (a full walk of the whole heap after every test cost minutes)
        gc.freeze()
    finally:
        globalLogPublisher.removeObserver(observer)
    if failures and request.node.get_closest_marker("logged_failures_expected") is None:
        texts = [str(e["log_failure"].getTraceback()) for e in failures]
        pytest.fail("unexpected logged failures:\n" + "\n".join(texts))


#: How long a test's cleanup may take to finish after the test (connections
#: closing need a few reactor turns) before what is left counts as leaked.
SETTLE_LIMIT = 1.0


def _twisted_internal(selectable: object) -> bool:
    """
    Whether a reader/writer is the reactor's own: its waker and the SIGCHLD
    waker it installs while running (neither is a connection). The reactor's
    thread pool needs no exception: it keeps no reader, writer or timer (its
    results come back through the waker).
    """
    return type(selectable).__module__ == "twisted.internet._signals"


def _left_behind(
    reactor: Any, calls_before: set[DelayedCall], selectables_before: set[object]
) -> tuple[list[DelayedCall], list[object]]:
    calls = [
        call for call in reactor.getDelayedCalls()
        if call.active() and call not in calls_before
    ]
    selectables = [
        s for s in {*reactor.getReaders(), *reactor.getWriters()}
        if s not in selectables_before and not _twisted_internal(s)
    ]
    return calls, selectables


async def _settle(
    reactor: Any, calls_before: set[DelayedCall], selectables_before: set[object]
) -> tuple[list[DelayedCall], list[object]]:
    """
    Let the reactor run until the test's cleanup has finished (nothing new is
    left) or :data:`SETTLE_LIMIT` has passed; return what is still left.
    """
    # a few turns first: an aborted connection closes on the next one
    for _ in range(3):
        await deferLater(reactor, 0, lambda: None)
    deadline = reactor.seconds() + SETTLE_LIMIT
    while True:
        calls, selectables = _left_behind(reactor, calls_before, selectables_before)
        if not (calls or selectables) or reactor.seconds() > deadline:
            return calls, selectables
        await deferLater(reactor, 0.01, lambda: None)


def _batched(call: DelayedCall) -> str:
    """
    What a txaio batched-timer bucket (autobahn's WebSocket timeouts) will
    call: the bucket's own ``DelayedCall`` only names the bucket.
    """
    timer = getattr(call.func, "__self__", None)
    buckets = getattr(timer, "_buckets", None)
    if not isinstance(buckets, dict) or not call.args:
        return ""
    _, pending = buckets.get(call.args[0], (None, []))
    names = []
    for batched in pending:
        cells = getattr(getattr(batched, "_call", None), "__closure__", None) or ()
        names += [repr(cell.cell_contents) for cell in cells
                  if callable(cell.cell_contents)]
    return f" -> {', '.join(names)}" if names else ""


def _describe(calls: Iterable[DelayedCall], selectables: Iterable[object]) -> str:
    lines = [f"  timer: {call!r}{_batched(call)}" for call in calls]
    for selectable in selectables:
        where = ""
        with contextlib.suppress(Exception):
            where = f" {selectable.getHost()} -> {selectable.getPeer()}"  # type: ignore[attr-defined]
        protocol = getattr(selectable, "protocol", None)
        lines.append(f"  connection: {selectable!r}{where}"
                     + (f" (protocol {protocol!r})" if protocol is not None else ""))
    return "\n".join(lines)


def _clean_up(calls: Iterable[DelayedCall], selectables: Iterable[object]) -> None:
    """
    Cancel and close what a failed test left, so the next test starts clean.
    """
    for call in calls:
        with contextlib.suppress(Exception):
            call.cancel()
    for selectable in selectables:
        for how in ("abortConnection", "stopListening", "loseConnection"):
            method = getattr(selectable, how, None)
            if method is not None:
                with contextlib.suppress(Exception):
                    method()
                break


@pytest.fixture(autouse=True)
def leave_nothing_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    Fail the test if, once its fixtures are torn down and the reactor has
    had a moment, a timer or a connection (any reader or writer of the
    reactor, listening ports included) that was not there before the test
    is still there. The reactor's own wakers are not connections.
    """
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    calls_before = set(reactor.getDelayedCalls())
    selectables_before = {*reactor.getReaders(), *reactor.getWriters()}
    yield
    calls, selectables = pytest_twisted.blockon(
        Deferred.fromCoroutine(_settle(reactor, calls_before, selectables_before))
    )
    if calls or selectables:
        report = _describe(calls, selectables)
        _clean_up(calls, selectables)
        pytest.fail(f"the test left these behind in the reactor:\n{report}", pytrace=False)


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    """
    A test certificate authority, new for each test.
    """
    (tmp_path / "ca").mkdir()
    return TestCA(tmp_path / "ca")


@pytest_twisted.async_yield_fixture
async def upstream(ca: TestCA) -> AsyncIterator[FakeUpstream]:
    """
    A fake HTTPS Codex backend / OpenAI API / token endpoint on 127.0.0.1.
    """
    from twisted.internet import reactor

    fake = FakeUpstream(reactor, ca)
    await fake.start()
    yield fake
    await fake.stop()
