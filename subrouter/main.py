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
from subrouter.cli.cx import CxOptions, cx_process
from subrouter.cli.daemon import InstallDaemonOptions, UninstallDaemonOptions
from subrouter.cli.dispatch import Group
from subrouter.cli.entry import guarded, react
from subrouter.tap import Options as ServeOptions

SubCommand = tuple[str, Any, type[Any], str]


class _CodexHelp(usage.Options):
    synopsis = "[codex arguments...]"
    longdesc = (
        "Runs codex with -c openai_base_url pointing at Subrouter "
        "($SUBROUTER_CODEX_BASE_URL, default http://127.0.0.1:31415/v1), or with a "
        "custom provider carrying X-Subrouter-User-Email / X-Subrouter-Account-ID when "
        "SUBROUTER_CODEX_USER_EMAIL or SUBROUTER_CODEX_ACCOUNT_ID is set. It checks first "
        "that Subrouter answers (SUBROUTER_CODEX_SKIP_CHECK=1 skips that)."
    )


class _ClaudeHelp(usage.Options):
    synopsis = "[claude arguments...]"
    longdesc = (
        "Runs claude with ANTHROPIC_BASE_URL pointing at Subrouter "
        "($SUBROUTER_CLAUDE_BASE_URL, default http://127.0.0.1:31415); Claude profiles "
        "are managed with `cx claude ...`."
    )


class SubrouterOptions(Group):
    """
    ``subrouter`` / ``sr``.
    """

    prog = "subrouter"
    summary = ("A local proxy for AI coding agents: `subrouter serve` runs it, `cx` (or "
               "`subrouter cx`) manages its accounts, `subrouter codex` runs Codex through it.")
    version = f"subrouter {subrouter.__version__}"
    subCommands: list[SubCommand] = [
        ("serve", None, ServeOptions, "Run the proxy in the foreground."),
        ("cx", None, CxOptions, "Manage accounts (same as the cx command)."),
        ("codex", None, _CodexHelp, "Run codex through Subrouter: subrouter codex [args...]."),
        ("claude", None, _ClaudeHelp,
         "Run Claude Code through Subrouter: subrouter claude [args...]."),
        ("install-daemon", None, InstallDaemonOptions,
         "Run Subrouter as a login service (launchd or systemd --user)."),
        ("uninstall-daemon", None, UninstallDaemonOptions,
         "Stop that service and remove what install-daemon wrote."),
    ]
    optParameters = [
        ["log-format", None, "text", "Log format for serve: text or json."],
        ["log-file", None, None,
         "Append serve's log to this file (reopened on SIGHUP) instead of stdout."],
    ]

    def check(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format: must be text or json")


_CX_COMMANDS = frozenset(name for c in CxOptions.commands for name in c.names())


def _serve(reactor: Any, options: ServeOptions, log_format: str, log_file: str | None) -> Any:
    from twisted.internet.defer import Deferred
    from twisted.logger import globalLogBeginner

    from subrouter.logs import ReopenableFile, json_observer, text_observer
    from subrouter.loop import settle_collector
    from subrouter.tap import build_service

    # workers started by --workers log the way their parent does
    os.environ.setdefault("SUBROUTER_LOG_FORMAT", log_format)
    try:
        stream = ReopenableFile(log_file) if log_file else None
    except OSError as e:
        sys.stderr.write(f"subrouter: --log-file: cannot open {log_file}: {e.strerror or e}\n")
        raise SystemExit(1) from None
    observer = json_observer(stream) if log_format == "json" else text_observer(stream)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    service = build_service(options.config, reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.callWhenRunning(service.install_signal_handlers, reactor)
    settle_collector(reactor)
    return Deferred()  # runs until SIGINT/SIGTERM stops the reactor (after a drain)


def _main(args: list[str], prog: str) -> int:
    if args[:1] == ["codex"]:
        # everything after `codex` is Codex's own: never parse it here
        from subrouter.cli.codex import WrapperError, run

        try:
            run(args[1:])
        except WrapperError as e:
            sys.stderr.write(f"{prog} codex: {e}\n")
            return e.code
        return 0
    if args[:1] == ["claude"]:
        # everything after `claude` is Claude's own (profiles: `cx claude ...`)
        from subrouter.cli import claude_code

        try:
            claude_code.run(args[1:])
        except claude_code.WrapperError as e:
            sys.stderr.write(f"{prog} claude: {e}\n")
            return e.code
        return 0
    if prog == "sr" and (not args or args[0].split("=")[0] in ("--accounts-dir",
                                                               "--state-dir")):
        # `sr` alone is the interactive account view, like `cx`
        args = ["cx", *args]
    if args and args[0] in _CX_COMMANDS:
        # the direct aliases: `subrouter list` is `subrouter cx list`
        args = ["cx", *args]
    options = SubrouterOptions()
    options.prog = prog
    options.parseOptions(args)
    if options.subCommand == "serve":
        serve: Any = options.subOptions
        return react(
            lambda reactor: _serve(reactor, serve, options["log-format"], options["log-file"]),
            interruptible=False,
        )
    if options.subCommand == "cx":
        return cx_process(options.subOptions)
    if options.subCommand in ("install-daemon", "uninstall-daemon"):
        return _daemon_command(options.subCommand, options.subOptions)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """
    ``subrouter`` and ``sr``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) or "subrouter"
    if prog not in ("subrouter", "sr"):
        prog = "subrouter"
    guarded(prog, lambda: _main(args, prog))


def _daemon_command(command: str, options: usage.Options) -> int:
    from subrouter.cli import daemon

    if command == "uninstall-daemon":
        return daemon.run_uninstall(options)

    def check_serve_args(args: list[str]) -> None:
        ServeOptions().parseOptions(args)

    return daemon.run_install(options, check_serve_args=check_serve_args)


def cx_main(argv: Sequence[str] | None = None) -> None:
    """
    ``cx``.
    """
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        options = CxOptions()
        options.parseOptions(args)
        return cx_process(options)

    guarded("cx", body)
