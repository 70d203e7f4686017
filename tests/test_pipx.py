"""
The recommended install: the wheel installed with pipx into a temporary
``PIPX_HOME`` gives ``subrouter``, ``sr`` and ``cx`` on its bin dir, each
working from that venv alone, and ``install-daemon --dry-run`` from there names
that venv's interpreter. The dependencies come from the package index as in a
real install (pip's cache and a kept shared pip make repeated runs quicker;
nothing is byte-compiled ahead).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import subrouter

ROOT = Path(__file__).resolve().parent.parent
#: pipx's shared pip, kept between runs: building it is half of pipx's time
SHARED_LIBS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
    "subrouter/pipx-shared-libs")


@pytest.fixture(scope="module")
def pipx_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """
    Build the wheel, ``pipx install`` it; return the pipx bin dir and an
    environment whose HOME is a fresh folder and whose PATH does not lead to
    the test venv.
    """
    top = tmp_path_factory.mktemp("pipx")
    dist = top / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
         str(ROOT)],
        check=True, capture_output=True, timeout=240,
    )
    (wheel,) = dist.glob("subrouter-*.whl")
    home = top / "home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PIPX_HOME": str(top / "pipx"),
        "PIPX_BIN_DIR": str(top / "bin"),
        "PIPX_MAN_DIR": str(top / "man"),
        "PIPX_SHARED_LIBS": str(SHARED_LIBS),
        # pip's own settings (indexes, cache) as this machine has them
        **{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "XDG_CACHE"))},
    }
    if "XDG_CACHE_HOME" not in env:
        env["XDG_CACHE_HOME"] = str(Path.home() / ".cache")  # keep pip's cache warm
    result = subprocess.run(
        # --no-compile: byte-compiling Twisted and friends was most of the time
        [sys.executable, "-m", "pipx", "install", "--pip-args=--no-compile", str(wheel)],
        env=env, cwd=top, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return top / "bin", env


def _run(bin_dir: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], env=env, cwd=env["HOME"],
                          capture_output=True, text=True, timeout=120)


def test_pipx_puts_subrouter_sr_and_cx_on_its_bin_dir(
    pipx_install: tuple[Path, dict[str, str]],
) -> None:
    bin_dir, env = pipx_install
    for name in ("subrouter", "sr"):
        result = _run(bin_dir, env, name, "--version")
        assert (result.returncode, result.stdout) == (0, f"subrouter {subrouter.__version__}\n")
    result = _run(bin_dir, env, "subrouter", "serve", "--version")
    assert result.stdout == f"subrouter {subrouter.__version__}\n"
    result = _run(bin_dir, env, "cx", "--accounts-dir", env["HOME"] + "/store", "list", "--json")
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr


def test_install_daemon_from_pipx_names_the_pipx_venvs_interpreter(
    pipx_install: tuple[Path, dict[str, str]],
) -> None:
    bin_dir, env = pipx_install
    venv = Path(env["PIPX_HOME"]) / "venvs" / "subrouter"
    result = _run(bin_dir, env, "subrouter", "install-daemon", "--dry-run")
    assert result.returncode == 0, result.stderr
    (exec_start,) = [line for line in result.stdout.splitlines() if "ExecStart=" in line]
    python = exec_start.split("ExecStart=")[1].split()[0]
    assert Path(python).parent == venv / "bin"
    assert exec_start.split("ExecStart=")[1].split()[1:4] == ["-m", "subrouter", "serve"]
    for name in ("subrouter", "sr", "cx"):
        assert f"would link {env['HOME']}/bin/{name} -> {venv}/bin/{name}" in result.stdout
    # nothing was written or run
    assert os.listdir(env["HOME"]) == []
    # and what the service would run works from that venv alone
    ran = subprocess.run([python, "-m", "subrouter", "--version"], env=env, cwd=env["HOME"],
                         capture_output=True, text=True, timeout=120)
    assert ran.stdout == f"subrouter {subrouter.__version__}\n", ran.stderr
