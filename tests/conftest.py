"""
Shared fixtures: every test fails if it logs an unhandled error (the way
trial does), unless it declares it expects some.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import settings
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
    finally:
        globalLogPublisher.removeObserver(observer)
    if failures and request.node.get_closest_marker("logged_failures_expected") is None:
        texts = [str(e["log_failure"].getTraceback()) for e in failures]
        pytest.fail("unexpected logged failures:\n" + "\n".join(texts))


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
