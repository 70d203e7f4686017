# -*- test-case-name: tests.test_install_daemon -*-
"""
``subrouter install-daemon`` and ``uninstall-daemon``: Subrouter as a
per-user service that starts at login and restarts when it exits.

On macOS that is a LaunchAgent (label ``ai.manaflow.subrouter``, the original
product's, so existing users keep one agent), on Linux a systemd user unit.
Either runs ``<python> -m subrouter serve ...`` with the very interpreter that
runs this command, by absolute path, so it works from a pipx install or a venv
without ``twistd`` on ``PATH``. The supervisor owns the process: it runs in the
foreground and writes no pidfile.

Planning is pure (:func:`plan_install`, :func:`plan_uninstall`, the renderers)
and tested by reading the plans; :func:`carry_out` performs a plan through an
injected command runner.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO

import attrs
from twisted.python import usage

from subrouter import config as parse
from subrouter.config import DEFAULT_ADDR, DEFAULT_CX_SWITCH_INTERVAL, DEFAULT_DRAIN_TIMEOUT
from subrouter.files import atomic_write

LAUNCHD_LABEL = "ai.manaflow.subrouter"
SYSTEMD_UNIT = "subrouter.service"
DEFAULT_TRANSCRIPTS = "~/.subrouter/transcripts"
#: how long the supervisor waits after SIGTERM beyond the drain before SIGKILL
STOP_MARGIN = 15
ENTRY_POINTS = ("subrouter", "sr", "cx")
TEAM_RECIPE = "deploy/gcp/README.md"
#: serve options install-daemon sets itself, or that would leave loopback
_OWNED_SERVE_OPTIONS = ("--addr", "--listen", "--expose", "--transcripts", "--cx-switch-interval",
                        "--drain-timeout")

_MAC_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")
_LINUX_PATH = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin",
               "/snap/bin")
#: tools the daemon (or a person reading its logs) may need at run time
_TOOLS = ("codex", "gsutil")


class _VersionedOptions(usage.Options):
    def opt_version(self) -> None:
        """
        Print Subrouter's version and exit.
        """
        import subrouter

        print(f"subrouter {subrouter.__version__}")
        raise SystemExit(0)


class InstallError(Exception):
    """
    Something that stops an install or uninstall, said in one line.
    """


class InstallDaemonOptions(_VersionedOptions):
    """
    ``subrouter install-daemon``.
    """

    synopsis = "[options] [-- serve options...]"
    longdesc = (
        "Run Subrouter as a service of your user: a LaunchAgent on macOS, a systemd user "
        "unit on Linux. It starts now and at every login, restarts if it exits, and runs "
        "the Python that runs this command. Re-run it to upgrade in place. Serve options "
        "after -- are passed on (e.g. -- --accounts-dir ~/accounts)."
    )
    optFlags = [
        ["no-transcripts", None, "Do not record transcripts."],
        ["no-shims", None, "Do not link subrouter, sr and cx into --bin-dir."],
        ["no-start", None, "Write the files, but do not load or start the service."],
        ["dry-run", "n", "Print what would be written and run, and change nothing."],
    ]
    optParameters = [
        ["addr", None, DEFAULT_ADDR, "HOST:PORT to listen on; loopback only."],
        ["transcripts", None, DEFAULT_TRANSCRIPTS, "Where transcripts are recorded."],
        ["cx-switch-interval", None, DEFAULT_CX_SWITCH_INTERVAL,
         "Make the best login active for local agents this often (0: never)."],
        ["drain-timeout", None, DEFAULT_DRAIN_TIMEOUT,
         "How long a stop waits for requests in flight."],
        ["bin-dir", None, "~/bin", "Where the subrouter, sr and cx links go."],
        ["path", None, None,
         "PATH for the service (default: the bin dirs, Homebrew's, the system's, and "
         "wherever codex and gsutil are found now)."],
    ]

    def parseArgs(self, *serve_args: str) -> None:
        self["serve-args"] = list(serve_args)

    def postOptions(self) -> None:
        host, _ = _checked_addr(self["addr"])
        if not parse.is_loopback(host):
            raise usage.UsageError(
                f"--addr: {self['addr']} is not a loopback address. install-daemon sets up "
                f"a daemon for you alone; for a shared server see {TEAM_RECIPE}"
            )
        _checked("cx-switch-interval", parse.parse_duration, self["cx-switch-interval"])
        _checked("drain-timeout", parse.parse_duration, self["drain-timeout"])
        for arg in self["serve-args"]:
            if arg.split("=", 1)[0] in _OWNED_SERVE_OPTIONS:
                raise usage.UsageError(
                    f"{arg.split('=', 1)[0]}: give it to install-daemon itself, not after --"
                    + (f" (a shared server: see {TEAM_RECIPE})" if arg == "--expose" else "")
                )


class UninstallDaemonOptions(_VersionedOptions):
    """
    ``subrouter uninstall-daemon``.
    """

    synopsis = "[--dry-run]"
    longdesc = (
        "Stop the service install-daemon set up and remove what it wrote (the service "
        "file and the links). The account store, state and transcripts stay."
    )
    optFlags = [["dry-run", "n", "Print what would be removed and run, and change nothing."]]
    optParameters = [["bin-dir", None, "~/bin", "Where install-daemon put the links."]]


def _checked_addr(value: str) -> tuple[str, int]:
    try:
        return parse.parse_addr(value)
    except ValueError as e:
        raise usage.UsageError(f"--addr: {e}") from None


def _checked(option: str, parser: Callable[[str], object], value: str) -> object:
    try:
        return parser(value)
    except ValueError as e:
        raise usage.UsageError(f"--{option}: {e}") from None


# -- what the service looks like ---------------------------------------------


@attrs.frozen
class Host:
    """
    Facts about the machine and the person installing, injected so that both
    platforms' plans can be built and tested anywhere.

    :param platform: ``darwin`` or ``linux`` (``sys.platform``).
    :param home: the home directory.
    :param python: the interpreter the service runs, by absolute path.
    :param environ: the environment (``PATH``, ``XDG_CONFIG_HOME``).
    :param uid: the user id (launchd's ``gui/<uid>`` domain).
    :param user: the login name (``loginctl``).
    :param script: the running console script, where its entry points live
        when they are not beside ``python``.
    """

    platform: str
    home: str
    python: str
    environ: Mapping[str, str]
    uid: int
    user: str
    script: str = ""

    @classmethod
    def current(cls) -> Host:
        import pwd

        uid = os.getuid()
        entry = pwd.getpwuid(uid)
        home = os.environ.get("HOME") or entry.pw_dir
        return cls(platform=sys.platform, home=home, python=os.path.abspath(sys.executable),
                   environ=dict(os.environ), uid=uid, user=entry.pw_name,
                   script=os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "")

    def expand(self, path: str) -> str:
        """
        ``path`` with a leading ``~`` meaning this host's home, made absolute.
        """
        if path == "~" or path.startswith("~/"):
            path = self.home + path[1:]
        return os.path.normpath(os.path.join(self.home, path))

    def entry_points(self) -> dict[str, str]:
        """
        The installed ``subrouter``, ``sr`` and ``cx`` scripts, by absolute path.
        """
        places = [os.path.dirname(self.python)]
        if self.script:
            places.append(os.path.dirname(os.path.realpath(self.script)))
        found: dict[str, str] = {}
        for name in ENTRY_POINTS:
            for place in places:
                candidate = os.path.join(place, name)
                if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                    found[name] = candidate
                    break
        return found


@attrs.frozen
class Settings:
    """
    What the person asked for (install-daemon's options).
    """

    addr: str = DEFAULT_ADDR
    transcripts: str | None = DEFAULT_TRANSCRIPTS
    cx_switch_interval: str = DEFAULT_CX_SWITCH_INTERVAL
    drain_timeout: str = DEFAULT_DRAIN_TIMEOUT
    bin_dir: str = "~/bin"
    shims: bool = True
    start: bool = True
    path: str | None = None
    serve_args: tuple[str, ...] = ()

    @classmethod
    def from_options(cls, options: usage.Options) -> Settings:
        return cls(
            addr=options["addr"],
            transcripts=None if options["no-transcripts"] else options["transcripts"],
            cx_switch_interval=options["cx-switch-interval"],
            drain_timeout=options["drain-timeout"],
            bin_dir=options["bin-dir"],
            shims=not options["no-shims"],
            start=not options["no-start"],
            path=options["path"],
            serve_args=tuple(options["serve-args"]),
        )


def serve_command(host: Host, settings: Settings) -> list[str]:
    """
    The service's command line: this interpreter running ``subrouter serve``.
    """
    argv = [host.python, "-m", "subrouter", "serve", "--addr", settings.addr]
    if settings.transcripts is not None:
        argv += ["--transcripts", host.expand(settings.transcripts)]
    argv += ["--cx-switch-interval", settings.cx_switch_interval]
    if parse.parse_duration(settings.drain_timeout) != parse.parse_duration(
        DEFAULT_DRAIN_TIMEOUT
    ):
        argv += ["--drain-timeout", settings.drain_timeout]
    return argv + list(settings.serve_args)


def stop_timeout(settings: Settings) -> int:
    """
    Seconds the supervisor should wait after SIGTERM: the drain, then a margin
    to save state and exit.
    """
    return int(parse.parse_duration(settings.drain_timeout) + 0.999) + STOP_MARGIN


def service_path(host: Host, settings: Settings) -> str:
    """
    The ``PATH`` the service runs with: the links' folder, the interpreter's,
    pipx's, the platform's usual ones, and wherever ``codex`` and ``gsutil``
    are found now.
    """
    if settings.path is not None:
        return settings.path
    dirs = [host.expand(settings.bin_dir), os.path.dirname(host.python),
            host.expand("~/.local/bin")]
    dirs += _MAC_PATH if host.platform == "darwin" else _LINUX_PATH
    current = host.environ.get("PATH", "")
    for tool in _TOOLS:
        found = shutil.which(tool, path=current)
        if found:
            dirs.append(os.path.dirname(os.path.abspath(found)))
    unique: list[str] = []
    for d in dirs:
        if d and d not in unique:
            unique.append(d)
    return ":".join(unique)


def render_plist(host: Host, settings: Settings) -> bytes:
    """
    The LaunchAgent property list.
    """
    logs = host.expand("~/Library/Logs")
    document = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": serve_command(host, settings),
        "EnvironmentVariables": {
            "HOME": host.home,
            "PATH": service_path(host, settings),
            "PYTHONUNBUFFERED": "1",
        },
        "WorkingDirectory": host.home,
        "RunAtLoad": True,
        "KeepAlive": True,
        "ProcessType": "Background",
        # launchd sends SIGKILL this long after SIGTERM; leave room for the drain
        "ExitTimeOut": stop_timeout(settings),
        "Umask": 0o077,
        "StandardOutPath": os.path.join(logs, "subrouter.log"),
        "StandardErrorPath": os.path.join(logs, "subrouter.err.log"),
    }
    return plistlib.dumps(document, sort_keys=False)


def systemd_quote(arg: str) -> str:
    """
    One argument of an ``ExecStart=`` line: systemd expands ``%`` specifiers
    and ``$`` variables and splits on spaces, so escape all three.
    """
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and not any(c in escaped for c in " \t\"'\\;"):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _environment_line(name: str, value: str) -> str:
    return "Environment=" + systemd_quote(f"{name}={value}")


def render_user_unit(host: Host, settings: Settings) -> str:
    """
    The systemd user unit.
    """
    exec_start = " ".join(systemd_quote(a) for a in serve_command(host, settings))
    return "\n".join([
        "# Written by `subrouter install-daemon`; `subrouter uninstall-daemon` removes it.",
        "# Re-run install-daemon to change it rather than editing it here.",
        "[Unit]",
        "Description=Subrouter: route AI coding agents across your accounts",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={exec_start}",
        # SIGHUP rereads the account store and reopens log files
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=always",
        "RestartSec=2",
        # SIGTERM drains requests in flight first
        f"TimeoutStopSec={stop_timeout(settings)}",
        "UMask=0077",
        _environment_line("PATH", service_path(host, settings)),
        "Environment=PYTHONUNBUFFERED=1",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


# -- plans --------------------------------------------------------------------


@attrs.frozen
class Command:
    """
    A command to run; ``check`` False means its failure is expected and
    ignored; ``retry_for`` seconds during which a failure is tried again,
    once a second.
    """

    argv: tuple[str, ...]
    check: bool = True
    retry_for: float = 0.0

    def shown(self) -> str:
        import shlex

        return shlex.join(self.argv)


@attrs.frozen
class Plan:
    """
    Everything an install or uninstall does, in order, and what to tell the
    person afterwards.
    """

    files: tuple[tuple[str, bytes], ...] = ()
    directories: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    removals: tuple[str, ...] = ()
    commands: tuple[Command, ...] = ()
    notes: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def _is_ours(link: str) -> bool:
    """
    Whether ``link`` is a symlink to one of Subrouter's console scripts (or a
    dangling one left by a removed install).
    """
    if not os.path.islink(link):
        return False
    target = os.path.realpath(link)
    if not os.path.exists(target):
        return os.path.basename(os.readlink(link)) == os.path.basename(link)
    try:
        with open(target, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b"subrouter.main" in head


def _links(host: Host, settings: Settings) -> tuple[list[tuple[str, str]], list[str]]:
    links: list[tuple[str, str]] = []
    skipped: list[str] = []
    if not settings.shims:
        return links, skipped
    bin_dir = host.expand(settings.bin_dir)
    found = host.entry_points()
    for name in ENTRY_POINTS:
        link = os.path.join(bin_dir, name)
        if name not in found:
            skipped.append(f"{link}: no installed `{name}` script beside {host.python}")
        elif os.path.lexists(link) and not _is_ours(link):
            skipped.append(f"{link}: it exists and is not Subrouter's; left as it is")
        else:
            links.append((link, found[name]))
    return links, skipped


def launchd_domain(host: Host) -> str:
    return f"gui/{host.uid}"


def plist_path(host: Host) -> str:
    return host.expand(f"~/Library/LaunchAgents/{LAUNCHD_LABEL}.plist")


def unit_path(host: Host) -> str:
    base = host.environ.get("XDG_CONFIG_HOME") or host.expand("~/.config")
    return os.path.join(base, "systemd", "user", SYSTEMD_UNIT)


def _check_platform(host: Host) -> None:
    if host.platform != "darwin" and not host.platform.startswith("linux"):
        raise InstallError(
            f"install-daemon supports macOS (launchd) and Linux (systemd), not {host.platform}"
        )


def plan_install(host: Host, settings: Settings, active: bool = False) -> Plan:
    """
    What ``install-daemon`` does on ``host``.

    :param active: whether the systemd unit is running now (an upgrade then
        restarts it; a first install starts it).
    """
    _check_platform(host)
    links, skipped = _links(host, settings)
    directories = []
    if settings.transcripts is not None:
        directories.append(host.expand(settings.transcripts))
    notes: list[str] = []
    if host.platform == "darwin":
        target = plist_path(host)
        contents = render_plist(host, settings)
        directories += [os.path.dirname(target), host.expand("~/Library/Logs")]
        domain = launchd_domain(host)
        commands = [
            Command(("launchctl", "bootout", domain, target), check=False),
            # the agent just booted out may still be draining: launchd refuses
            # to bootstrap the label again until it has exited
            Command(("launchctl", "bootstrap", domain, target),
                    retry_for=stop_timeout(settings)),
            Command(("launchctl", "kickstart", "-k", f"{domain}/{LAUNCHD_LABEL}")),
        ]
        notes.append(f"logs: {host.expand('~/Library/Logs/subrouter.log')} "
                     "(and subrouter.err.log)")
    else:
        target = unit_path(host)
        contents = render_user_unit(host, settings).encode()
        directories.append(os.path.dirname(target))
        commands = [Command(("systemctl", "--user", "daemon-reload"))]
        if active:
            commands += [Command(("systemctl", "--user", "enable", SYSTEMD_UNIT)),
                         Command(("systemctl", "--user", "restart", SYSTEMD_UNIT))]
        else:
            commands.append(Command(("systemctl", "--user", "enable", "--now", SYSTEMD_UNIT)))
        notes.append("logs: journalctl --user -u subrouter -f")
    if not settings.start:
        commands = [c for c in commands if c.argv[:3] == ("systemctl", "--user", "daemon-reload")]
    bin_dir = host.expand(settings.bin_dir)
    if links and bin_dir not in host.environ.get("PATH", "").split(":"):
        notes.append(f"{bin_dir} is not on your PATH: add it to use the links there")
    return Plan(files=((target, contents),), directories=tuple(directories),
                links=tuple(links), commands=tuple(commands), notes=tuple(notes),
                skipped=tuple(skipped))


def plan_uninstall(host: Host, bin_dir: str = "~/bin") -> Plan:
    """
    What ``uninstall-daemon`` does on ``host``: stop the service, remove its
    file and the links that point at Subrouter. Never the account store, the
    state or the transcripts.
    """
    _check_platform(host)
    if host.platform == "darwin":
        target = plist_path(host)
        commands = [Command(("launchctl", "bootout", launchd_domain(host), target), check=False)]
    else:
        target = unit_path(host)
        commands = [
            Command(("systemctl", "--user", "disable", "--now", SYSTEMD_UNIT), check=False),
            Command(("systemctl", "--user", "daemon-reload"), check=False),
        ]
    removals = [target] if os.path.lexists(target) else []
    base = host.expand(bin_dir)
    removals += [os.path.join(base, n) for n in ENTRY_POINTS if _is_ours(os.path.join(base, n))]
    return Plan(removals=tuple(removals), commands=tuple(commands))


# -- carrying a plan out -----------------------------------------------------


#: runs a command and returns (exit status, its output)
Runner = Callable[[Sequence[str]], tuple[int, str]]


def subprocess_runner(environ: Mapping[str, str]) -> Runner:
    """
    Run commands found on ``environ``'s ``PATH``, capturing their output.
    """

    def run(argv: Sequence[str]) -> tuple[int, str]:
        found = shutil.which(argv[0], path=environ.get("PATH", os.defpath))
        if found is None:
            return 127, f"{argv[0]}: not found on PATH"
        try:
            done = subprocess.run([found, *argv[1:]], env=dict(environ), capture_output=True,
                                  text=True, timeout=120, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            return 126, str(e)
        return done.returncode, (done.stderr or done.stdout).strip()

    return run


def describe(plan: Plan, out: IO[str]) -> None:
    """
    Print a plan without carrying it out (``--dry-run``).
    """
    for path, contents in plan.files:
        out.write(f"would write {path}:\n")
        for line in contents.decode().splitlines():
            out.write(f"    {line}\n")
    for directory in plan.directories:
        if not os.path.isdir(directory):
            out.write(f"would create {directory}/ (0700)\n")
    for link, target in plan.links:
        out.write(f"would link {link} -> {target}\n")
    for command in plan.commands:
        out.write(f"would run: {command.shown()}\n")
    for path in plan.removals:
        out.write(f"would remove {path}\n")
    for reason in plan.skipped:
        out.write(f"would skip {reason}\n")


def carry_out(plan: Plan, run: Runner, out: IO[str],
              sleep: Callable[[float], None] = time.sleep) -> None:
    """
    Perform ``plan``: directories, files and links first, then the commands
    (which load what was written), then the removals (an uninstall stops the
    service before removing what its supervisor reads).

    :raises InstallError: when a checked command fails.
    """
    for directory in plan.directories:
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700, exist_ok=True)
            out.write(f"created {directory}/\n")
    for path, contents in plan.files:
        atomic_write(path, contents, mode=0o644)
        out.write(f"wrote {path}\n")
    for link, target in plan.links:
        _link(link, target)
        out.write(f"linked {link} -> {target}\n")
    for reason in plan.skipped:
        out.write(f"skipped {reason}\n")
    for command in plan.commands:
        code, output = run(command.argv)
        waited = 0.0
        while code != 0 and waited < command.retry_for:
            sleep(1.0)
            waited += 1.0
            code, output = run(command.argv)
        if code != 0 and command.check:
            hint = ""
            if command.argv[:2] == ("systemctl", "--user") and "bus" in output.lower():
                hint = ("; is a systemd user session running for you? (over SSH: "
                        "`loginctl enable-linger` for your user, then log in again)")
            raise InstallError(f"`{command.shown()}` failed (exit {code})"
                               + (f": {output}" if output else "") + hint)
        out.write(f"ran: {command.shown()}\n")
    for path in plan.removals:
        os.unlink(path)
        out.write(f"removed {path}\n")


def _link(link: str, target: str) -> None:
    """
    Point ``link`` at ``target``, replacing an older link atomically.
    """
    directory = os.path.dirname(link)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if os.path.islink(link) and os.readlink(link) == target:
        return
    temporary = os.path.join(directory, f".{os.path.basename(link)}.subrouter-link")
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.replace(temporary, link)


# -- the commands --------------------------------------------------------------


def _linger_note(host: Host, run: Runner) -> str | None:
    code, output = run(("loginctl", "show-user", host.user, "--property=Linger"))
    if code == 0 and output.strip() == "Linger=yes":
        return None
    return (f"to keep it running after you log out: loginctl enable-linger {host.user}")


def _is_active(run: Runner) -> bool:
    code, _ = run(("systemctl", "--user", "is-active", "--quiet", SYSTEMD_UNIT))
    return code == 0


def run_install(
    options: usage.Options,
    host: Host | None = None,
    run: Runner | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    check_serve_args: Callable[[list[str]], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """
    ``subrouter install-daemon``; returns the exit status.

    :param check_serve_args: raises :class:`usage.UsageError` for serve
        options the daemon would refuse (injected by the console script,
        which owns the serve options).
    """
    host = host or Host.current()
    run = run or subprocess_runner(host.environ)
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    settings = Settings.from_options(options)
    try:
        if check_serve_args is not None and settings.serve_args:
            try:
                check_serve_args(list(settings.serve_args))
            except usage.UsageError as e:
                raise InstallError(f"serve option after --: {e}") from None
        linux = host.platform.startswith("linux")
        active = linux and not options["dry-run"] and _is_active(run)
        plan = plan_install(host, settings, active=active)
        if options["dry-run"]:
            describe(plan, out)
            return 0
        carry_out(plan, run, out, sleep)
    except (InstallError, OSError) as e:
        err.write(f"subrouter install-daemon: {e}\n")
        return 1
    url = f"http://{settings.addr}"
    if settings.start:
        how = "LaunchAgent " + LAUNCHD_LABEL if host.platform == "darwin" else (
            "systemd user unit " + SYSTEMD_UNIT)
        out.write(f"Subrouter runs as the {how}: point agents at {url}/v1\n")
    else:
        out.write("Installed, not started (--no-start).\n")
    notes = list(plan.notes)
    if linux:
        linger = _linger_note(host, run)
        if linger:
            notes.append(linger)
    for note in notes:
        out.write(f"{note}\n")
    return 0


def run_uninstall(
    options: usage.Options,
    host: Host | None = None,
    run: Runner | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """
    ``subrouter uninstall-daemon``; returns the exit status.
    """
    host = host or Host.current()
    run = run or subprocess_runner(host.environ)
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        plan = plan_uninstall(host, options["bin-dir"])
        if options["dry-run"]:
            describe(plan, out)
            return 0
        carry_out(plan, run, out)
    except (InstallError, OSError) as e:
        err.write(f"subrouter uninstall-daemon: {e}\n")
        return 1
    out.write("Subrouter's service is gone; the account store, state and transcripts are "
              "kept.\n")
    return 0
