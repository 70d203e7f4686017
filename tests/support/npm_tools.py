"""
Command-line tools the tests run for real (the Codex CLI, Claude Code),
pinned to one version each and installed from the npm registry into a cache
outside the repository when they are missing, so the README's test command
passes on a fresh machine with nothing installed by hand.

A tool's executable is ``$<env_var>`` when set, else
``$XDG_CACHE_HOME/subrouter/<name>-<version>/node_modules/.bin/<bin>``
(``~/.cache`` by default), installed there on first use. The install goes
into a temporary sibling folder that is renamed into place, so two test runs
installing at once never see half a package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import attrs

#: how long one ``npm install`` may take
INSTALL_TIMEOUT = 600.0


def cache_root() -> Path:
    """
    Where pinned tools are installed: ``$XDG_CACHE_HOME/subrouter``.
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "subrouter"


@attrs.frozen
class NpmTool:
    """
    One pinned npm package that provides an executable.

    :ivar name: the cache folder's prefix (``codex`` → ``codex-0.169.0``).
    :ivar package: the npm package (``@openai/codex``).
    :ivar version: the exact version installed.
    :ivar bin: the executable's name under ``node_modules/.bin``.
    :ivar env_var: the variable that points at an executable instead.
    """

    name: str
    package: str
    version: str
    bin: str
    env_var: str

    @property
    def folder(self) -> Path:
        return cache_root() / f"{self.name}-{self.version}"

    @property
    def installed(self) -> Path:
        return self.folder / "node_modules" / ".bin" / self.bin

    def install_command(self) -> str:
        return f"npm install --prefix {self.folder} {self.package}@{self.version}"

    def executable(self) -> str:
        """
        The tool to run, installing it first when it is missing.

        :raises AssertionError: (failing the test, never skipping it) when the
            variable names no executable or the install failed, with what to do.
        """
        configured = os.environ.get(self.env_var, "").strip()
        if configured:
            if not os.access(configured, os.X_OK):
                raise AssertionError(f"{self.env_var}={configured!r} is not an executable")
            return configured
        if not os.access(self.installed, os.X_OK):
            self._install()
        return str(self.installed)

    def _install(self) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise AssertionError(
                f"{self.package}@{self.version} is needed and npm is not on PATH: install "
                f"Node.js, or run `{self.install_command()}` elsewhere and set {self.env_var}"
            )
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.folder.name}.", dir=self.folder.parent))
        try:
            result = subprocess.run(
                [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund",
                 "--loglevel=error", f"{self.package}@{self.version}"],
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False,
            )
            if result.returncode != 0:
                raise AssertionError(
                    f"could not install {self.package}@{self.version} from the npm registry "
                    f"(exit {result.returncode}): {result.stderr.strip()[-2000:]}\n"
                    f"run `{self.install_command()}` or set {self.env_var}"
                )
            try:
                os.rename(staging, self.folder)
            except OSError:
                if not os.access(self.installed, os.X_OK):  # not another run's install
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not os.access(self.installed, os.X_OK):
            raise AssertionError(f"{self.package}@{self.version} installed no {self.bin}")


#: the Codex CLI the end-to-end tests were worked out against
CODEX = NpmTool(name="codex", package="@openai/codex", version="0.169.0", bin="codex",
                env_var="SUBROUTER_CODEX_BIN")
