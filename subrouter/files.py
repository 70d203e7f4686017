# -*- test-case-name: tests.test_files -*-
"""
Durable, private file writes and advisory locks for credential files.

Every file Subrouter writes that holds a credential or state goes through
:func:`atomic_write`: a temporary sibling created ``0600`` with ``O_EXCL``,
written, fsynced, renamed over the target, and the directory fsynced. A reader
never sees a half-written file and a crash never leaves a world-readable one.

Line files (transcripts, token usage) are appended to with
:func:`append_whole`, whole lines or nothing, and opened with
:func:`cut_partial_line`, which removes what a crash left half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from twisted.logger import Logger

_log = Logger()

#: writes some bytes to a file descriptor, returning how many (``os.write``)
Writer = Callable[[int, Any], int]


def atomic_write(path: str, data: bytes, mode: int = 0o600) -> None:
    """
    Replace ``path`` with ``data`` atomically.

    :param path: the file to replace; its directory must exist.
    :param data: the new contents.
    :param mode: the permission bits of the new file.
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow it
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str) -> None:
    """
    Flush a directory entry change (a rename) to disk, where the OS allows it.
    """
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename stands
    finally:
        os.close(dfd)


def dump_json(value: Any) -> bytes:
    """
    Serialise ``value`` the way the ``cx`` store does: two-space indent and a
    trailing newline.
    """
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def not_a_folder(path: str) -> str | None:
    """
    Why ``path`` cannot be used as a folder because a file is in its place
    (``"<path> is a file, not a folder"``), or None.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    return None


def ensure_private_directory(path: str) -> None:
    """
    Create ``path`` (and parents) with mode ``0700`` when missing.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)


@contextlib.contextmanager
def locked(lock_path: str) -> Iterator[None]:
    """
    Hold an exclusive ``flock`` on ``lock_path`` (created ``0600``) for the
    duration of the block. This blocks: call it off the reactor thread.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        # closing the descriptor releases the lock
        os.close(fd)


def append_whole(fd: int, data: bytes, write: Writer = os.write) -> None:
    """
    Append ``data`` to ``fd`` (opened ``O_APPEND``) completely, or not at all:
    after a write that fails part-way (a full disk), the file is cut back to
    where it ended before, so it never holds half a line.

    :param write: how to write (tests inject a disk that fills up).
    :raises OSError: the write's error, once the file is cut back.
    """
    start = os.fstat(fd).st_size
    view = memoryview(data)
    done = 0
    try:
        while done < len(data):
            done += write(fd, view[done:])
    except OSError:
        if done:
            try:
                os.ftruncate(fd, start)
            except OSError as e:
                _log.error("could not cut a half-written line back: {error}",
                           error=e.strerror or str(e))
        raise


def _last_line_end(fd: int, size: int) -> int:
    """
    The offset just after the last newline in the first ``size`` bytes of
    ``fd``, or 0 when there is none.
    """
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        found = block.rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def cut_partial_line(fd: int) -> int:
    """
    Cut a partial last line (one a crash left without its newline) from the
    end of ``fd``, so the next line appended starts whole.

    :return: how many bytes were cut.
    """
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    keep = _last_line_end(fd, size)
    os.ftruncate(fd, keep)
    return size - keep
