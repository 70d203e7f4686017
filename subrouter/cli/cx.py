# -*- test-case-name: tests.test_cx -*-
"""
The ``cx`` command tree: one dispatch table for ``cx <cmd>``,
``sr``/``subrouter cx <cmd>`` and ``twistd subrouter cx <cmd>``, each
command declared once with its aliases and its handler (which lives in the
module of its concern: :mod:`~subrouter.cli.accounts`,
:mod:`~subrouter.cli.switch`, :mod:`~subrouter.cli.status`,
:mod:`~subrouter.cli.spend`, :mod:`~subrouter.cli.claude`,
:mod:`~subrouter.cli.gemini`).

A ``cx`` process runs its command under one ``task.react``
(:func:`cx_process`), so a command that fetches usage and then refreshes a
token uses one reactor throughout.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.python import usage

import subrouter
from subrouter.accounts.activate import StoreError
from subrouter.cli import accounts, spend, status, switch, why
from subrouter.cli.claude import ClaudeOptions
from subrouter.cli.console import Context, Streams
from subrouter.cli.dispatch import Command, Group, chosen, leaf
from subrouter.cli.entry import CommandFailed, react
from subrouter.cli.gemini import GeminiOptions
from subrouter.cli.tokens import ClientTokenOptions
from subrouter.config import DEFAULT_ACCOUNTS_DIR, DEFAULT_STATE_DIR, expand_path
from subrouter.files import not_a_folder

__all__ = ["CxOptions", "Streams", "cx_process", "execute", "run_cx"]


def _client_token(ctx: Context, options: Any) -> int:
    from subrouter.cli import tokens

    return tokens.run(ctx.state_dir, options, ctx.streams)


class CxOptions(Group):
    """
    ``cx``: the account manager.
    """

    prog = "cx"
    summary = ("Manage the accounts Subrouter routes across: ChatGPT logins (`cx add`) and "
               "OpenAI API keys (`cx add-key`), which one Codex uses, and their usage.")
    version = f"cx (subrouter) {subrouter.__version__}"
    optParameters = [
        ["accounts-dir", None, DEFAULT_ACCOUNTS_DIR, "The cx account store."],
        ["state-dir", None, DEFAULT_STATE_DIR,
         "The daemon's state folder (exhaustion marks, the switch pin)."],
    ]
    default = status.DEFAULT
    commands = (
        *status.COMMANDS,
        *accounts.COMMANDS,
        *switch.COMMANDS,
        *spend.COMMANDS,
        *why.COMMANDS,
        Command("claude", ClaudeOptions, "Claude Code profiles (CLAUDE_CONFIG_DIR)."),
        Command("gemini", GeminiOptions, "Gemini profiles (a scaffold: list only)."),
        Command("client-token", ClientTokenOptions,
                "Client tokens for a shared (--expose) server: make, list, revoke.",
                run=_client_token),
    )


    def postOptions(self) -> None:
        super().postOptions()
        # as the daemon says: "no accounts yet, cx add" would mislead
        problem = not_a_folder(expand_path(self["accounts-dir"]))
        if problem:
            raise usage.UsageError(f"--accounts-dir: {problem}")


def _context(options: CxOptions, streams: Streams, reactor: Any) -> Context:
    return Context(prog=options.prog, store=expand_path(options["accounts-dir"]),
                   state_dir=expand_path(options["state-dir"]), streams=streams,
                   reactor=reactor)


async def execute(options: CxOptions, streams: Streams, reactor: Any) -> int:
    """
    Run the parsed command; return its exit status. Errors propagate (see
    :func:`subrouter.cli.entry.guarded`).
    """
    command = chosen(options)[-1]
    assert command.run is not None, command.name
    result = command.run(_context(options, streams, reactor), leaf(options))
    if inspect.isawaitable(result):
        result = await result
    return int(result or 0)


def cx_process(options: CxOptions) -> int:
    """
    Run the parsed command as this process's work, under its one reactor.
    """
    return react(lambda reactor: execute(options, Streams(), reactor))


def run_cx(options: CxOptions, streams: Streams | None = None) -> int:
    """
    Run a command that never waits on the network without a reactor (for
    tests); a failure prints ``cx: <reason>`` and gives its status.
    """
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    streams = streams or Streams()
    outcome: list[Any] = []
    Deferred.fromCoroutine(execute(options, streams, None)).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("this command waits on the network: run it with cx_process")
    result = outcome[0]
    if isinstance(result, Failure):
        if result.check(StoreError):
            streams.stderr.write(f"{options.prog}: {result.value}\n")
            value = result.value
            return value.code if isinstance(value, CommandFailed) else 1
        result.raiseException()
    return int(result)
