"""
The agent CLIs the end-to-end tests run, installed from the npm registry on
first use into ``~/.cache/subrouter/<name>-<version>`` (``$XDG_CACHE_HOME``
honoured), so the README's test command works on a fresh machine without a
manual install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "subrouter"


def npm_tool(package: str, version: str, binary: str, folder: str) -> str:
    """
    The path of ``binary`` from ``package@version``, installing it into
    ``<cache>/<folder>`` first when it is not there yet. Blocking: call it
    from a fixture, before the reactor is busy.

    :raises AssertionError: (failing the test) when it cannot be installed,
        saying how to install it by hand.
    """
    prefix = cache_root() / folder
    path = prefix / "node_modules" / ".bin" / binary
    if os.access(path, os.X_OK):
        return str(path)
    npm = shutil.which("npm")
    hint = f"npm install --prefix {prefix} {package}@{version}"
    if npm is None:
        raise AssertionError(f"npm is not installed, so {package} cannot be; run\n    {hint}")
    prefix.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error", f"{package}@{version}"],
        cwd=prefix, capture_output=True, text=True, timeout=900, check=False,
    )
    if done.returncode != 0 or not os.access(path, os.X_OK):
        raise AssertionError(
            f"installing {package}@{version} failed:\n{done.stderr[-2000:]}\nrun\n    {hint}"
        )
    return str(path)
