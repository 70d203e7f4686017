# -*- test-case-name: tests.test_cli_tty -*-
"""
Where a command reads and writes (swapped in tests), and its prompts: plain,
hidden (for secrets: nothing is echoed on a terminal) and yes/no.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import IO


class Streams:
    """
    A command's standard streams and environment.
    """

    def __init__(self, stdout: IO[str] | None = None, stderr: IO[str] | None = None,
                 stdin: IO[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.stdin = stdin or sys.stdin
        self.environ = os.environ if environ is None else environ

    def interactive(self) -> bool:
        """
        Whether a person can answer questions: stdin is a terminal.
        """
        isatty = getattr(self.stdin, "isatty", None)
        return bool(isatty and isatty())

    def say(self, text: str) -> None:
        self.stdout.write(text)

    def warn(self, text: str) -> None:
        self.stderr.write(text)


def prompt(streams: Streams, question: str) -> str:
    """
    Ask; an empty answer (or end of input) is ``""``.
    """
    streams.stdout.write(question)
    streams.stdout.flush()
    return streams.stdin.readline().strip()


def prompt_secret(streams: Streams, question: str) -> str:
    """
    Ask for a secret: on a terminal, echo is off while it is typed (and back
    on afterwards, even after Ctrl-C); from a pipe, one line is read.
    """
    fileno = getattr(streams.stdin, "fileno", None)
    try:
        fd = fileno() if fileno else -1
    except (OSError, ValueError):
        fd = -1
    if fd < 0 or not os.isatty(fd):
        streams.stderr.write(question)
        streams.stderr.flush()
        return streams.stdin.readline().strip()
    import termios

    before = termios.tcgetattr(fd)
    quiet = list(before)
    quiet[3] = quiet[3] & ~termios.ECHO
    # echo goes off before the question shows, so nothing typed is ever echoed;
    # TCSANOW: waiting for output to drain could block on a terminal not read
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        streams.stderr.write(question)
        streams.stderr.flush()
        answer = streams.stdin.readline()
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, before)
        streams.stderr.write("\n")
    return answer.strip()


def confirm(streams: Streams, question: str) -> bool:
    """
    A yes/no question; only ``y``/``yes`` is yes.
    """
    return prompt(streams, f"{question} [y/N] ").lower() in ("y", "yes")


class Context:
    """
    What every ``cx`` command is given: the program name (for messages and
    hints), the store, the daemon's state folder, the streams, and the
    reactor of the process (``None`` when a command is driven without one,
    in tests of commands that never wait on the network).
    """

    def __init__(self, *, prog: str, store: str, state_dir: str, streams: Streams,
                 reactor: object = None) -> None:
        self.prog = prog
        self.store = store
        self.state_dir = state_dir
        self.streams = streams
        self.reactor = reactor

    @property
    def environ(self) -> Mapping[str, str]:
        return self.streams.environ
