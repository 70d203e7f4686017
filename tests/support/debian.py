"""
Programs from Debian's packages that some tests run for real (``redis-server``,
Chromium and its driver, ``systemd-analyze``), installed with ``apt-get`` the
first time a test needs them and they are missing, so the README's test
command passes on a fresh machine with nothing installed by hand (as root, or
with password-less sudo). One install runs at a time, across processes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Sequence

#: how long ``apt-get update`` plus one install may take
INSTALL_TIMEOUT = 900.0
_LOCK = "/tmp/subrouter-tests-apt.lock"
_updated = False


def _apt(arguments: Sequence[str]) -> subprocess.CompletedProcess[str]:
    command = ["apt-get", *arguments]
    if os.geteuid() != 0:
        command = ["sudo", "-n", *command]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=INSTALL_TIMEOUT, check=False)


def ensure(command: str, packages: Sequence[str], also: Sequence[str] = ()) -> str | None:
    """
    The path of ``command``, installing ``packages`` with apt-get first when
    it (or one of the commands in ``also``) is not on ``PATH``.

    :return: the path, or None when it could not be installed (the caller
        fails with its own hint).
    """
    global _updated

    def found() -> str | None:
        if any(shutil.which(other) is None for other in also):
            return None
        return shutil.which(command) or next(
            (p for p in (f"/usr/bin/{command}", f"/usr/sbin/{command}") if os.access(p, os.X_OK)),
            None,
        )

    path = found()
    if path is not None or shutil.which("apt-get") is None:
        return path
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = found()  # another test run may have installed it meanwhile
        if path is not None:
            return path
        if not _updated:
            _apt(["update", "-qq"])
            _updated = True
        _apt(["install", "-y", "-qq", "--no-install-recommends", *packages])
        return found()
