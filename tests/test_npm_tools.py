"""
The pinned npm CLIs the tests run are installed into the cache on first use,
so the README's test command passes on a fresh machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.npm_tools import CODEX, NpmTool

TOOL = NpmTool(name="demo", package="@example/demo", version="1.2.3", bin="demo",
               env_var="SUBROUTER_DEMO_BIN")


def fake_npm(folder: Path, *, fails: bool = False) -> Path:
    """
    An ``npm`` that "installs" by writing the package's executable, and
    counts its runs.
    """
    folder.mkdir()
    npm = folder / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        f'echo run >> "{folder}/runs"\n'
        + ("echo 'E404 no such package' >&2; exit 1\n" if fails else "")
        + 'prefix="$3"\nmkdir -p "$prefix/node_modules/.bin"\n'
        'printf "#!/bin/sh\\necho %s\\n" "$@" > "$prefix/node_modules/.bin/demo"\n'
        'chmod +x "$prefix/node_modules/.bin/demo"\n'
    )
    npm.chmod(0o755)
    return npm


def test_a_missing_tool_is_installed_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    npm = fake_npm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{npm.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SUBROUTER_DEMO_BIN", raising=False)
    path = TOOL.executable()
    assert path == str(tmp_path / "cache" / "subrouter" / "demo-1.2.3" / "node_modules" / ".bin"
                       / "demo")
    assert os.access(path, os.X_OK)
    assert "@example/demo@1.2.3" in Path(path).read_text()
    assert TOOL.executable() == path
    assert (tmp_path / "bin" / "runs").read_text() == "run\n"  # installed once
    # nothing half-made is left beside it
    assert sorted(p.name for p in (tmp_path / "cache" / "subrouter").iterdir()) == ["demo-1.2.3"]


def test_a_failed_install_fails_the_test_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    npm = fake_npm(tmp_path / "bin", fails=True)
    monkeypatch.setenv("PATH", f"{npm.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SUBROUTER_DEMO_BIN", raising=False)
    with pytest.raises(AssertionError, match="E404") as failure:
        TOOL.executable()
    assert "npm install --prefix" in str(failure.value)
    assert "SUBROUTER_DEMO_BIN" in str(failure.value)
    assert list((tmp_path / "cache" / "subrouter").iterdir()) == []


def test_the_variable_points_at_another_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUBROUTER_DEMO_BIN", "/bin/true")
    assert TOOL.executable() == "/bin/true"
    monkeypatch.setenv("SUBROUTER_DEMO_BIN", str(tmp_path / "missing"))
    with pytest.raises(AssertionError, match="not an executable"):
        TOOL.executable()


def test_the_codex_pin_is_the_one_the_end_to_end_tests_use() -> None:
    from tests.support.codex_cli import CODEX_VERSION

    assert (CODEX.package, CODEX.version) == ("@openai/codex", CODEX_VERSION)
    assert CODEX.installed.parts[-4:] == ("codex-0.169.0", "node_modules", ".bin", "codex")
