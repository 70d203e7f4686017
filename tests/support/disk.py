"""
A disk that fills up, for the tests of what Subrouter writes line by line.
"""

from __future__ import annotations

import errno
import os
from typing import Any


class FillingDisk:
    """
    ``os.write`` until ``full`` is set; then each write puts down at most
    ``room`` bytes (a short write, as a nearly full disk does) and the next
    one fails with ENOSPC.
    """

    def __init__(self) -> None:
        self.full = False
        self.room = 10
        self.failures = 0

    def __call__(self, fd: int, data: Any) -> int:
        if not self.full:
            return os.write(fd, data)
        if self.room > 0:
            written = os.write(fd, bytes(data[: self.room]))
            self.room -= written
            return written
        self.failures += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
