"""
Running the daemon's commands as real processes: :data:`BIN` (the directory
of this virtualenv's scripts, ``twistd`` and ``subrouter``), :class:`Collect`
(a process protocol gathering its output and exit status) and
:func:`free_port` (a free TCP port on 127.0.0.1).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred

BIN = os.path.dirname(sys.executable)


class Collect(protocol.ProcessProtocol):
    """
    Gathers a process's stdout and stderr in :attr:`output`; :attr:`ended`
    fires with ``(exit code, signal)``.
    """

    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[tuple[int | None, int | None]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
