# -*- test-case-name: tests.test_cli -*-
"""
What every console script shares around its work: one ``task.react`` per
process, and one top-level handler that turns what a user can cause into one
line and an exit status, never a traceback:

- help (``-h``, ``help``, ``--version``): printed on stdout, exit 0;
- a usage error: the usage line, the error and a hint, exit 2;
- a command that cannot do what was asked: ``<prog>: <why>``, exit 1;
- Ctrl-C: a quiet exit 130; a closed pipe (``cx status | head -1``): a
  quiet exit 141, as for a process killed by SIGPIPE.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from twisted.internet.error import CannotListenError
from twisted.python import usage

from subrouter.accounts.activate import StoreError
from subrouter.cli.dispatch import CommandLineError, HelpRequested

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141


class CommandFailed(StoreError):
    """
    A command cannot do what was asked; the message says why (and what to do).

    :ivar code: the exit status.
    """

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _listen_error(error: CannotListenError) -> str:
    where = f"{error.interface or '*'}:{error.port}"
    reason = error.socketError
    text = getattr(reason, "strerror", None) or str(reason)
    return f"cannot listen on {where}: {text}"


def _quiet_stdout() -> None:
    # the reader went away: nothing more can be written, and Python must
    # not complain while flushing at exit
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def guarded(prog: str, body: Callable[[], int | None]) -> NoReturn:
    """
    Run a console script's body and exit with its status, handling what a
    user can cause.
    """
    try:
        code = body() or 0
        sys.stdout.flush()
    except HelpRequested as e:
        try:
            sys.stdout.write(e.text if e.text.endswith("\n") else e.text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
        code = 0
    except CommandLineError as e:
        sys.stderr.write(f"{e.usage_line}\n{prog}: {e.message}\n{e.hint}\n")
        code = EXIT_USAGE
    except usage.UsageError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        code = EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        code = EXIT_PIPE_CLOSED
    except CommandFailed as e:
        sys.stderr.write(f"{prog}: {e}\n")
        code = e.code
    except StoreError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        code = EXIT_FAILED
    except CannotListenError as e:
        sys.stderr.write(f"{prog}: {_listen_error(e)}\n")
        code = EXIT_FAILED
    raise SystemExit(code)


def react(main: Callable[[Any], Awaitable[int | None]], *, interruptible: bool = True) -> int:
    """
    Run ``main(reactor)`` under the process's one ``task.react`` and return
    its exit status. An exception it raises comes out of here unchanged (for
    :func:`guarded`), not logged as a failure.

    :param interruptible: Ctrl-C raises ``KeyboardInterrupt`` wherever the
        command is (a prompt, a fetch), instead of stopping the reactor
        gracefully as a daemon wants.
    """
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    carried: list[BaseException] = []

    async def wrapped(reactor: Any) -> int:
        try:
            if interruptible:
                # once the reactor has installed its own handlers (after startup)
                await task.deferLater(reactor, 0, lambda: None)
                signal.signal(signal.SIGINT, signal.default_int_handler)
            return int(await main(reactor) or 0)
        except BaseException as e:  # re-raised below, outside the reactor
            carried.append(e)
            return EXIT_FAILED

    def start(reactor: Any) -> Deferred[None]:
        def finish(code: int) -> None:
            raise SystemExit(code)

        return Deferred.fromCoroutine(wrapped(reactor)).addCallback(finish)

    try:
        task.react(start)
    except SystemExit as e:
        if carried:
            raise carried[0] from None
        return int(e.code or 0)
    return 0  # pragma: no cover (react always exits)
