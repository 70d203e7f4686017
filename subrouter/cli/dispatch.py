# -*- test-case-name: tests.test_cli -*-
"""
The command-line grammar every console script shares: a command group is a
dispatch table of :class:`Command` entries (each alias declared once, beside
its command), parsed the way users of ``gh``, ``uv`` or ``kubectl`` expect:

- ``-h``/``--help`` on every command and group, and ``<prog> help
  [command...]``;
- a typo gets the group's usage line, the error and "did you mean";
- usage lines name the program (``Usage: cx remove <account>``);
- the group's global options are accepted after the command as well
  (``cx list --accounts-dir X``);
- options may follow positional arguments, and a missing argument is named
  (``missing <account>``).

Everything here is ``usage.Options``, so ``twistd subrouter cx ...`` parses
the same tree.
"""

from __future__ import annotations

import difflib
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs
from twisted.python import usage

#: what a command's handler is given: the parsed options; it returns an exit
#: status (or an awaitable of one)
Handler = Callable[..., Any]


class HelpRequested(Exception):
    """
    ``-h``, ``--help`` or ``help``: print this text (on stdout) and exit 0.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class CommandLineError(usage.UsageError):
    """
    A usage error, with the usage line of the command it happened in and a
    hint for more help.
    """

    def __init__(self, message: str, usage_line: str, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.usage_line = usage_line
        self.hint = hint


@attrs.frozen
class Command:
    """
    One entry of a dispatch table.

    :ivar name: what users type.
    :ivar options: its ``usage.Options`` class (a :class:`Group` for a
        command with subcommands).
    :ivar summary: one line for the group's help.
    :ivar aliases: other names, shown beside the name.
    :ivar run: the handler (``None`` when the caller dispatches itself).
    :ivar passthrough: everything after the command is its own (not parsed
        for the group's global options).
    """

    name: str
    options: type[usage.Options]
    summary: str
    aliases: tuple[str, ...] = ()
    run: Handler | None = None
    passthrough: bool = False

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def label(self) -> str:
        return f"{self.name} ({', '.join(self.aliases)})" if self.aliases else self.name


def _option_rows(options: usage.Options, version: bool = False) -> list[tuple[str, str]]:
    """
    ``(--name VALUE, doc)`` for each option, ``-h`` included.
    """
    rows: list[tuple[str, str]] = []
    for long in options.longOpt:
        takes_value = long.endswith("=")
        name = long.rstrip("=")
        if name in ("help", "version", "h"):
            continue
        doc = options.docs.get(name) or ""
        default = options.defaults.get(name)
        metavar = " " + name.split("-")[-1].upper() if takes_value else ""
        if takes_value and default not in (None, "", []):
            doc = f"{doc} (default {default})" if doc else f"default {default}"
        rows.append((f"--{name}{metavar}", doc))
    rows.append(("-h, --help", "Show this help."))
    if version:
        rows.append(("--version", "Show the version."))
    return rows


def _columns(rows: Sequence[tuple[str, str]], width: int = 100) -> str:
    if not rows:
        return ""
    left = min(max(len(r[0]) for r in rows), 28)
    lines = []
    for name, doc in rows:
        wrapped = textwrap.wrap(doc, max(30, width - left - 4), break_on_hyphens=False) or [""]
        if len(name) > left:
            lines.append(f"  {name}")
            lines.extend(f"  {'':<{left}}  {w}" for w in wrapped)
        else:
            lines.append(f"  {name:<{left}}  {wrapped[0]}")
            lines.extend(f"  {'':<{left}}  {w}" for w in wrapped[1:])
    return "\n".join(lines) + "\n"


def _split_interspersed(options: usage.Options, args: Sequence[str]) -> list[str]:
    """
    The options first, then the arguments, as getopt wants them (it stops at
    the first argument; people type ``cx usage 7 --openai-url X``).
    """
    takes_value = {f"--{o.rstrip('=')}" for o in options.longOpt if o.endswith("=")}
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if arg.startswith("-") and arg != "-":
            front.append(arg)
            if name in takes_value and "=" not in arg and i + 1 < len(args):
                front.append(args[i + 1])
                i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


class CommandOptions(usage.Options):
    """
    A leaf command's options: ``-h``, options anywhere, named arguments.

    :cvar arguments: the positional arguments, as shown in the usage line:
        ``<required>``, ``[optional]``, ``[rest...]``; parsed into
        ``self[name]``.
    :cvar summary: what the command does (its help's first line).
    :cvar interspersed: options may follow arguments (off for commands that
        pass their arguments on to another program).
    """

    arguments: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    interspersed: ClassVar[bool] = True
    prog: str = ""

    def opt_help(self) -> None:
        """
        Show this help.
        """
        raise HelpRequested(self.help_text())

    opt_h = opt_help

    def opt_version(self) -> None:
        """
        (Only the program has a version.)
        """
        raise usage.UsageError("no such option --version")

    def usage_line(self) -> str:
        options = " [options]" if _option_rows(self)[:-1] else ""
        arguments = f" {self.arguments}" if self.arguments else ""
        return f"Usage: {self.prog or 'command'}{options}{arguments}"

    def help_text(self) -> str:
        parts = [self.usage_line(), ""]
        description = getattr(self, "longdesc", None) or self.summary
        if description:
            parts += [textwrap.fill(description, 100, break_on_hyphens=False), ""]
        parts += ["Options:", _columns(_option_rows(self)).rstrip("\n")]
        return "\n".join(parts) + "\n"

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        args = list(options or [])
        if self.interspersed:
            args = _split_interspersed(self, args)
        elif any(a in ("-h", "--help") for a in args[:1]):
            raise HelpRequested(self.help_text())
        super().parseOptions(args)

    def parseArgs(self, *args: str) -> None:
        specs = self.arguments.split()
        given = list(args)
        for spec in specs:
            name = spec.strip("<>[].")
            if spec.endswith("...]"):
                self[name] = given
                given = []
            elif spec.startswith("<"):
                if not given:
                    raise usage.UsageError(f"missing {spec}")
                self[name] = given.pop(0)
            else:
                self[name] = given.pop(0) if given else None
        if given:
            raise usage.UsageError(f"unexpected argument {given[0]!r}")


class Group(usage.Options):
    """
    A command with subcommands, from its :attr:`commands` table.

    :cvar commands: the dispatch table.
    :cvar default: the command run when none is named (else naming none is
        an error); not part of the table.
    :cvar summary: what the group is for (its help's first line).
    :cvar version: printed by ``--version`` when set.
    :ivar command: the chosen :class:`Command` after parsing.
    """

    commands: ClassVar[Sequence[Command]] = ()
    default: ClassVar[Command | None] = None
    summary: ClassVar[str] = ""
    version: ClassVar[str | None] = None
    prog: str = ""
    command: Command | None = None

    def table(self) -> Sequence[Command]:
        if self.commands:
            return self.commands
        # a plain Twisted subCommands list works too
        return [Command(name, parser, doc, aliases=(short,) if short else ())
                for name, short, parser, doc in getattr(self, "subCommands", [])]

    def check(self) -> None:
        """
        Called once the whole command line is parsed (``postOptions`` is
        taken: Twisted calls it for the group's own options alone).
        """

    def postOptions(self) -> None:
        pass

    def getSynopsis(self) -> str:
        # what Twisted prints for a plain usage.Options command under us
        return f"Usage: {self.prog}"

    def lookup(self, name: str) -> Command | None:
        for command in self.table():
            if name in command.names():
                return command
        return None

    def opt_help(self) -> None:
        """
        Show this help.
        """
        raise HelpRequested(self.help_text())

    opt_h = opt_help

    def opt_version(self) -> None:
        """
        Show the version.
        """
        if self.version is None:
            raise usage.UsageError("no such option --version")
        raise HelpRequested(self.version)

    def usage_line(self) -> str:
        options = " [options]" if _option_rows(self)[:-1] else ""
        command = "[command]" if self.default else "<command>"
        return f"Usage: {self.prog}{options} {command} [arguments]"

    def help_text(self) -> str:
        parts = [self.usage_line(), ""]
        if self.summary:
            parts += [textwrap.fill(self.summary, 100, break_on_hyphens=False), ""]
        rows = [(c.label(), c.summary) for c in self.table()]
        if self.default is not None:
            rows.insert(0, ("(none)", self.default.summary))
        parts += ["Commands:", _columns(rows).rstrip("\n"), ""]
        parts += ["Options:", _columns(_option_rows(self, self.version is not None)).rstrip("\n"),
                  ""]
        parts.append(f"Run `{self.prog} help <command>` for a command's options.")
        return "\n".join(parts) + "\n"

    def _global_names(self) -> tuple[set[str], set[str]]:
        flags: set[str] = set()
        values: set[str] = set()
        for long in self.longOpt:
            name = long.rstrip("=")
            if name in ("help", "version", "h"):
                continue
            (values if long.endswith("=") else flags).add(f"--{name}")
        return flags, values

    def _error(self, message: str, options: Any = None) -> CommandLineError:
        target = options if options is not None else self
        prog = getattr(target, "prog", self.prog) or self.prog
        line = (target.usage_line() if hasattr(target, "usage_line")
                else f"Usage: {prog} [options]")
        hint = f"Run `{self.prog} help{prog[len(self.prog):]}` for more."
        return CommandLineError(message, line, hint)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        args = list(options or [])
        flags, values = self._global_names()
        front: list[str] = []
        while args and args[0].startswith("-") and args[0] != "-":
            arg = args.pop(0)
            front.append(arg)
            if arg.split("=", 1)[0] in values and "=" not in arg and args:
                front.append(args.pop(0))
        if args and args[0] == "help":
            self._help(args[1:])
        try:
            super().parseOptions(front)
        except HelpRequested:
            raise
        except usage.UsageError as e:
            raise self._error(str(e)) from None
        if not args:
            if self.default is None:
                raise self._error("name a command")
            command: Command = self.default
            rest: list[str] = []
        else:
            name, rest = args[0], args[1:]
            found = self.lookup(name)
            if found is None:
                raise self._unknown(name)
            command = found
        if not command.passthrough:
            rest, late = _extract(rest, flags, values)
            if late:
                try:
                    super().parseOptions(front + late)
                except usage.UsageError as e:
                    raise self._error(str(e)) from None
        self.command = command
        self.subCommand = command.name
        sub: Any = command.options()
        sub.parent = self
        sub.prog = self.prog if command is self.default else f"{self.prog} {command.name}"
        self.subOptions = sub
        if not isinstance(sub, (CommandOptions, Group)):
            # a plain Twisted command: give it -h too
            rest = ["--help" if a == "-h" else a for a in rest]
        try:
            sub.parseOptions(rest)
        except (HelpRequested, CommandLineError):
            raise
        except usage.UsageError as e:
            raise self._error(str(e), sub) from None
        try:
            self.check()
        except usage.UsageError as e:
            raise self._error(str(e)) from None

    def _unknown(self, name: str) -> CommandLineError:
        known = [n for c in self.table() for n in c.names()]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        message = f'unknown command "{name}"'
        if close:
            found = self.lookup(close[0])
            message += f"; did you mean `{found.name if found else close[0]}`?"
        error = self._error(message)
        error.hint = f"Run `{self.prog} help` for every command."
        return error

    def _help(self, path: list[str]) -> None:
        if not path:
            raise HelpRequested(self.help_text())
        command = self.lookup(path[0])
        if command is None:
            raise self._unknown(path[0])
        sub: Any = command.options()
        sub.parent = self
        sub.prog = f"{self.prog} {command.name}"
        self.subCommand = command.name
        if isinstance(sub, Group):
            sub._help(path[1:])
        raise HelpRequested(sub.help_text() if hasattr(sub, "help_text") else str(sub))


def _extract(args: list[str], flags: set[str], values: set[str]
             ) -> tuple[list[str], list[str]]:
    """
    Split a group's global options out of a command's arguments.
    """
    kept: list[str] = []
    found: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            kept.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if name in values:
            found.append(arg)
            if "=" not in arg and i + 1 < len(args):
                found.append(args[i + 1])
                i += 1
        elif arg in flags:
            found.append(arg)
        else:
            kept.append(arg)
        i += 1
    return kept, found


def chosen(options: usage.Options) -> list[Command]:
    """
    The chain of commands parsed, outermost first (``cx claude switch`` →
    ``[claude, switch]``).
    """
    chain: list[Command] = []
    current: Any = options
    while isinstance(current, Group) and current.command is not None:
        chain.append(current.command)
        current = current.subOptions
    return chain


def leaf(options: usage.Options) -> usage.Options:
    """
    The innermost options parsed.
    """
    current: Any = options
    while isinstance(current, Group) and current.command is not None:
        current = current.subOptions
    return current  # type: ignore[no-any-return]
