"""
The package as users install it: the wheel's contents and the twistd plugin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
         str(ROOT)],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (built,) = out.glob("subrouter-*.whl")
    return built


def test_wheel_carries_the_dropin_and_nothing_else_under_twisted(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    under_twisted = sorted(n for n in names if n.startswith("twisted/"))
    assert under_twisted == ["twisted/plugins/subrouter_plugin.py"]


def test_wheel_carries_every_module_of_the_source_tree(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        str(path.relative_to(ROOT))
        for path in (ROOT / "subrouter").rglob("*.py")
    }
    assert sources, "no sources found"
    assert sources - names == set()


def test_wheel_carries_the_packages_and_scripts(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    for module in (
        "subrouter/__init__.py",
        "subrouter/tap.py",
        "subrouter/proxy/resource.py",
        "subrouter/accounts/store.py",
        "subrouter/web/admin.py",
        "subrouter/py.typed",
    ):
        assert module in names, module
    assert not any(n.startswith("tests/") for n in names)
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = archive.read(entry_points).decode()
    for script in ("subrouter = subrouter.main:main", "sr = subrouter.main:main",
                   "cx = subrouter.main:cx_main"):
        assert script in text


def _twistd() -> str:
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def test_twistd_lists_the_subrouter_plugin(tmp_path: Path) -> None:
    # run outside the checkout, so only the installed package can be found
    result = subprocess.run(
        [_twistd(), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "subrouter" in result.stdout


def test_twistd_rejects_a_bad_option_naming_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [_twistd(), "-n", "--pidfile=", "subrouter", "--addr", "0.0.0.0:1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert "--addr" in result.stdout + result.stderr
    assert "--expose" in result.stdout + result.stderr
    assert not (tmp_path / "twistd.pid").exists()
