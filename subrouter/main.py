# -*- test-case-name: tests.test_cli -*-
"""
The console scripts ``subrouter``, ``sr`` and ``cx``.

One ``usage.Options`` tree serves them all: ``subrouter serve`` runs the
daemon in the foreground (as ``twistd -n subrouter`` does), ``cx <command>``
and ``subrouter cx <command>`` manage the account store.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.python import usage

import subrouter
from subrouter.cli.cx import CxOptions, run_cx
from subrouter.tap import Options as ServeOptions

SubCommand = tuple[str, None, type[usage.Options], str]


class _CodexHelp(usage.Options):
    synopsis = "[codex arguments...]"
    longdesc = (
        "Runs codex with -c openai_base_url pointing at Subrouter "
        "($SUBROUTER_CODEX_BASE_URL, default http://127.0.0.1:31415/v1), or with a "
        "custom provider carrying X-Subrouter-User-Email / X-Subrouter-Account-ID when "
        "SUBROUTER_CODEX_USER_EMAIL or SUBROUTER_CODEX_ACCOUNT_ID is set."
    )


class _ClaudeHelp(usage.Options):
    synopsis = "[claude arguments...]"
    longdesc = (
        "Runs claude with ANTHROPIC_BASE_URL pointing at Subrouter "
        "($SUBROUTER_CLAUDE_BASE_URL, default http://127.0.0.1:31415); Claude profiles "
        "are managed with `cx claude ...`."
    )


class SubrouterOptions(usage.Options):
    """
    ``subrouter`` / ``sr``.
    """

    synopsis = "<command> [options]"
    subCommands: list[SubCommand] = [
        ("serve", None, ServeOptions, "Run the proxy in the foreground."),
        ("cx", None, CxOptions, "Manage Codex accounts (same as the cx command)."),
        ("codex", None, _CodexHelp, "Run codex through Subrouter: subrouter codex [args...]."),
        ("claude", None, _ClaudeHelp,
         "Run Claude Code through Subrouter: subrouter claude [args...]."),
    ]
    optFlags = [["version", None, "Print the version and exit."]]
    optParameters = [
        ["log-format", None, "text", "Log format for serve: text or json."],
    ]

    def opt_version(self) -> None:
        print(f"subrouter {subrouter.__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format: must be text or json")
        if self.subCommand is None:
            raise usage.UsageError("name a command; see --help")


_CX_COMMANDS = frozenset(name for name, _, _, _ in CxOptions.subCommands)


def _serve(reactor: Any, options: ServeOptions, log_format: str) -> Any:
    from twisted.internet.defer import Deferred
    from twisted.logger import globalLogBeginner

    from subrouter.logs import json_observer, text_observer
    from subrouter.tap import build_service

    observer = json_observer() if log_format == "json" else text_observer()
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    service = build_service(options.config, reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    return Deferred()  # runs until SIGINT/SIGTERM stops the reactor


def _parse(options: usage.Options, argv: Sequence[str], prog: str) -> None:
    try:
        options.parseOptions(list(argv))
    except usage.UsageError as e:
        # print the usage of the deepest command reached
        target: usage.Options = options
        while getattr(target, "subOptions", None) is not None:
            target = target.subOptions
        sys.stderr.write(f"{target}\n{prog}: {e}\n")
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> None:
    """
    ``subrouter`` and ``sr``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) or "subrouter"
    if args[:1] == ["codex"]:
        # everything after `codex` is Codex's own: never parse it here
        from subrouter.cli.codex import WrapperError, run

        try:
            run(args[1:])
        except WrapperError as e:
            sys.stderr.write(f"{prog} codex: {e}\n")
            raise SystemExit(2) from None
        return
    if args[:1] == ["claude"]:
        # everything after `claude` is Claude's own (profiles: `cx claude ...`)
        from subrouter.cli import claude_code

        try:
            claude_code.run(args[1:])
        except claude_code.WrapperError as e:
            sys.stderr.write(f"{prog} claude: {e}\n")
            raise SystemExit(e.code) from None
        return
    if not args and prog == "sr":
        # `sr` alone is the interactive account view, like `cx`
        args = ["cx"]
    if args and args[0] in _CX_COMMANDS:
        # the direct aliases: `subrouter list` is `subrouter cx list`
        args = ["cx", *args]
    options = SubrouterOptions()
    _parse(options, args, prog)
    if options.subCommand == "serve":
        from twisted.internet import task

        task.react(_serve, (options.subOptions, options["log-format"]))
    elif options.subCommand == "cx":
        raise SystemExit(run_cx(options.subOptions))


def cx_main(argv: Sequence[str] | None = None) -> None:
    """
    ``cx``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    options = CxOptions()
    _parse(options, args, "cx")
    raise SystemExit(run_cx(options))
