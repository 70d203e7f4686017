"""
The suite's own guards (``conftest.py``), proved on small tests run in a
separate pytest: a test that leaves a timer or a listening port in the
reactor fails, naming what it left; one that cleans up passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

INNER_CONFTEST = """
from tests.conftest import leave_nothing_behind, observe_errors  # noqa: F401
"""

INNER_TESTS = """
from twisted.internet import reactor
from twisted.internet.protocol import Factory


def test_leaves_a_timer_and_a_listening_port():
    reactor.callLater(30, lambda: None)
    reactor.listenTCP(0, Factory(), interface="127.0.0.1")


def test_cleans_up_after_itself():
    reactor.callLater(30, lambda: None).cancel()
    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    port.stopListening()


def test_the_next_test_starts_clean():
    pass
"""


def test_a_test_that_leaves_a_timer_or_a_connection_behind_fails_naming_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rE",
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    out = done.stdout
    assert done.returncode == 1, out + done.stderr
    assert "3 passed, 1 error" in out, out
    assert "ERROR test_inner.py::test_leaves_a_timer_and_a_listening_port" in out, out
    assert "timer: <DelayedCall" in out and "<lambda>" in out, out
    assert "connection: <<class 'twisted.internet.tcp.Port'>" in out, out
