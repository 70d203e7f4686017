"""
``subrouter install-daemon`` / ``uninstall-daemon``: the LaunchAgent and the
systemd user unit they write (golden), and installs into a temporary HOME with
fake ``launchctl``/``systemctl``/``loginctl`` on ``PATH`` recording their
arguments. Both platforms are exercised anywhere through an injected
:class:`Host`.
"""

from __future__ import annotations

import io
import os
import plistlib
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.python import usage

from subrouter.cli import daemon
from subrouter.cli.daemon import Host, InstallDaemonOptions, UninstallDaemonOptions

_SCRIPT = "#!{python}\nimport sys\nfrom subrouter.main import main\nsys.exit(main())\n"

_FAKE_TOOL = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_RECORD"
name=$(basename "$0")
case "$name $*" in
  "loginctl show-user"*) echo "Linger=no" ;;
esac
if [ -n "$FAKE_FAIL" ] && [ "$name $1 $2" = "$FAKE_FAIL" ]; then
  echo "Failed to connect to bus: No medium found" >&2; exit 1
fi
if [ "$name $2" = "systemctl is-active" ]; then exit "${FAKE_ACTIVE:-3}"; fi
if [ "$name $1" = "launchctl bootstrap" ] && [ -n "$FAKE_BUSY" ]; then
  # refuse while the booted-out agent "still runs": FAKE_BUSY more times
  count=$(cat "$FAKE_RECORD.busy" 2>/dev/null || echo 0)
  if [ "$count" -lt "$FAKE_BUSY" ]; then
    echo $((count + 1)) > "$FAKE_RECORD.busy"
    echo "Bootstrap failed: 5: Input/output error" >&2; exit 5
  fi
fi
exit 0
"""


def _venv(root: Path) -> Path:
    """
    A directory laid out like a venv's bin/: a python and the three scripts.
    """
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    for name in ("subrouter", "sr", "cx"):
        script = bin_dir / name
        script.write_text(_SCRIPT.format(python=python))
        script.chmod(0o755)
    return python


@pytest.fixture
def fakes(tmp_path: Path) -> Path:
    """
    A folder of fake launchctl, systemctl and loginctl.
    """
    folder = tmp_path / "fakebin"
    folder.mkdir()
    for name in ("launchctl", "systemctl", "loginctl"):
        tool = folder / name
        tool.write_text(_FAKE_TOOL)
        tool.chmod(0o755)
    return folder


def _host(tmp_path: Path, platform: str, fakes: Path | None = None,
          python: Path | None = None, **environ: str) -> Host:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    python = python or _venv(tmp_path / "venv")
    env = {"HOME": str(home), "PATH": f"{fakes}:/usr/bin:/bin" if fakes else "/usr/bin:/bin",
           "FAKE_RECORD": str(tmp_path / "record"), **environ}
    return Host(platform=platform, home=str(home), python=str(python), environ=env, uid=501,
                user="dev")


def _options(cls: type[usage.Options], *argv: str) -> usage.Options:
    options = cls()
    options.parseOptions(list(argv))
    return options


def _recorded(tmp_path: Path) -> list[str]:
    record = tmp_path / "record"
    return record.read_text().splitlines() if record.exists() else []


def _install(host: Host, *argv: str, slept: list[float] | None = None
             ) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = daemon.run_install(_options(InstallDaemonOptions, *argv), host=host, stdout=out,
                              stderr=err, sleep=(slept if slept is not None else []).append)
    return code, out.getvalue(), err.getvalue()


def _uninstall(host: Host, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = daemon.run_uninstall(_options(UninstallDaemonOptions, *argv), host=host, stdout=out,
                                stderr=err)
    return code, out.getvalue(), err.getvalue()


# -- golden files ------------------------------------------------------------


def test_the_launch_agent_plist_runs_this_python_with_the_defaults(tmp_path: Path) -> None:
    host = _host(tmp_path, "darwin")
    home, python = host.home, host.python
    document = plistlib.loads(daemon.render_plist(host, daemon.Settings()))
    assert document == {
        "Label": "ai.manaflow.subrouter",
        "ProgramArguments": [
            python, "-m", "subrouter", "serve",
            "--addr", "127.0.0.1:31415",
            "--transcripts", f"{home}/.subrouter/transcripts",
            "--cx-switch-interval", "10m",
        ],
        "EnvironmentVariables": {
            "HOME": home,
            "PATH": ":".join([
                f"{home}/bin", os.path.dirname(python), f"{home}/.local/bin",
                "/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin",
            ]),
            "PYTHONUNBUFFERED": "1",
        },
        "WorkingDirectory": home,
        "RunAtLoad": True,
        "KeepAlive": True,
        "ProcessType": "Background",
        "ExitTimeOut": 45,
        "Umask": 0o077,
        "StandardOutPath": f"{home}/Library/Logs/subrouter.log",
        "StandardErrorPath": f"{home}/Library/Logs/subrouter.err.log",
    }


def test_the_systemd_user_unit_runs_this_python_with_the_defaults(tmp_path: Path) -> None:
    host = _host(tmp_path, "linux")
    home, python = host.home, host.python
    bin_dir = os.path.dirname(python)
    assert daemon.render_user_unit(host, daemon.Settings()) == f"""\
# Written by `subrouter install-daemon`; `subrouter uninstall-daemon` removes it.
# Re-run install-daemon to change it rather than editing it here.
[Unit]
Description=Subrouter: route AI coding agents across your accounts
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={python} -m subrouter serve --addr 127.0.0.1:31415 --transcripts {home}/.subrouter/transcripts --cx-switch-interval 10m
ExecReload=/bin/kill -HUP $MAINPID
Restart=always
RestartSec=2
TimeoutStopSec=45
UMask=0077
Environment=PATH={home}/bin:{bin_dir}:{home}/.local/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin:/snap/bin
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=default.target
"""  # noqa: E501


def test_the_options_reach_the_service_command(tmp_path: Path) -> None:
    host = _host(tmp_path, "linux")
    options = _options(InstallDaemonOptions, "--addr", "[::1]:4000", "--no-transcripts",
                       "--cx-switch-interval", "0", "--drain-timeout", "2m", "--",
                       "--accounts-dir", "/srv/accounts")
    settings = daemon.Settings.from_options(options)
    assert daemon.serve_command(host, settings) == [
        host.python, "-m", "subrouter", "serve", "--addr", "[::1]:4000",
        "--cx-switch-interval", "0", "--drain-timeout", "2m", "--accounts-dir", "/srv/accounts",
    ]
    # the supervisor waits for the longer drain before it kills
    assert "TimeoutStopSec=135\n" in daemon.render_user_unit(host, settings)
    assert plistlib.loads(daemon.render_plist(host, settings))["ExitTimeOut"] == 135


def test_unit_arguments_are_quoted_for_systemd() -> None:
    assert daemon.systemd_quote("/opt/sub router/bin/python") == '"/opt/sub router/bin/python"'
    assert daemon.systemd_quote("50%") == "50%%"
    assert daemon.systemd_quote("$HOME") == "$$HOME"
    assert daemon.systemd_quote('say "hi"') == '"say \\"hi\\""'
    assert daemon.systemd_quote("plain/path") == "plain/path"


def test_the_service_path_finds_codex_and_gsutil_where_they_are_now(tmp_path: Path) -> None:
    tools = tmp_path / "npm-global" / "bin"
    tools.mkdir(parents=True)
    for name in ("codex", "gsutil"):
        (tools / name).write_text("#!/bin/sh\n")
        (tools / name).chmod(0o755)
    host = _host(tmp_path, "darwin", PATH=f"{tools}:/usr/bin")
    path = daemon.service_path(host, daemon.Settings()).split(":")
    assert str(tools) in path
    assert path.index("/opt/homebrew/bin") < path.index(str(tools))
    assert daemon.service_path(host, daemon.Settings(path="/only")) == "/only"


@pytest.mark.parametrize("addr", ["0.0.0.0:31415", "192.168.1.4:80", "[::]:1"])
def test_a_non_loopback_address_is_refused_pointing_at_the_team_recipe(addr: str) -> None:
    with pytest.raises(usage.UsageError) as error:
        _options(InstallDaemonOptions, "--addr", addr)
    assert "loopback" in str(error.value)
    assert "deploy/gcp/README.md" in str(error.value)


@pytest.mark.parametrize("argv", [
    ["--cx-switch-interval", "soon"],
    ["--drain-timeout", "x"],
    ["--", "--expose"],
    ["--", "--addr", "127.0.0.1:1"],
])
def test_bad_install_options_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        _options(InstallDaemonOptions, *argv)


def test_an_unsupported_platform_is_said_in_one_line(tmp_path: Path) -> None:
    code, _, err = _install(_host(tmp_path, "win32"))
    assert code == 1
    assert err == ("subrouter install-daemon: install-daemon supports macOS (launchd) and "
                   "Linux (systemd), not win32\n")


# -- installing into a temporary HOME ------------------------------------------


def test_install_on_macos_writes_the_agent_links_and_loads_it(
    tmp_path: Path, fakes: Path
) -> None:
    host = _host(tmp_path, "darwin", fakes)
    code, out, err = _install(host)
    assert (code, err) == (0, "")
    home = Path(host.home)
    plist = home / "Library/LaunchAgents/ai.manaflow.subrouter.plist"
    assert plistlib.loads(plist.read_bytes())["ProgramArguments"][0] == host.python
    assert stat.S_IMODE(plist.stat().st_mode) == 0o644
    transcripts = home / ".subrouter/transcripts"
    assert stat.S_IMODE(transcripts.stat().st_mode) == 0o700
    bin_dir = Path(os.path.dirname(host.python))
    for name in ("subrouter", "sr", "cx"):
        assert os.readlink(home / "bin" / name) == str(bin_dir / name)
    assert _recorded(tmp_path) == [
        f"launchctl bootout gui/501 {plist}",
        f"launchctl bootstrap gui/501 {plist}",
        "launchctl kickstart -k gui/501/ai.manaflow.subrouter",
    ]
    assert "http://127.0.0.1:31415/v1" in out
    assert f"{home}/Library/Logs/subrouter.log" in out


def test_install_on_linux_writes_the_unit_enables_it_and_mentions_linger(
    tmp_path: Path, fakes: Path
) -> None:
    host = _host(tmp_path, "linux", fakes)
    code, out, err = _install(host)
    assert (code, err) == (0, "")
    unit = Path(host.home) / ".config/systemd/user/subrouter.service"
    assert f"ExecStart={host.python} -m subrouter serve " in unit.read_text()
    assert _recorded(tmp_path) == [
        "systemctl --user is-active --quiet subrouter.service",
        "systemctl --user daemon-reload",
        "systemctl --user enable --now subrouter.service",
        "loginctl show-user dev --property=Linger",
    ]
    assert "loginctl enable-linger dev" in out
    assert "journalctl --user -u subrouter" in out


def test_the_unit_goes_under_xdg_config_home(tmp_path: Path, fakes: Path) -> None:
    host = _host(tmp_path, "linux", fakes, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    assert _install(host)[0] == 0
    assert (tmp_path / "xdg/systemd/user/subrouter.service").is_file()


def test_reinstalling_upgrades_in_place(tmp_path: Path, fakes: Path) -> None:
    first = _host(tmp_path, "linux", fakes)
    assert _install(first)[0] == 0
    newer = _venv(tmp_path / "venv2")
    second = _host(tmp_path, "linux", fakes, python=newer, FAKE_ACTIVE="0")
    (tmp_path / "record").unlink()
    code, _, err = _install(second, "--cx-switch-interval", "5m")
    assert (code, err) == (0, "")
    unit = (Path(second.home) / ".config/systemd/user/subrouter.service").read_text()
    assert f"ExecStart={newer} -m subrouter serve " in unit
    assert "--cx-switch-interval 5m" in unit
    assert str(first.python) not in unit
    assert os.readlink(Path(second.home) / "bin/cx") == str(newer.parent / "cx")
    # the running daemon is restarted onto the new interpreter
    assert _recorded(tmp_path)[:4] == [
        "systemctl --user is-active --quiet subrouter.service",
        "systemctl --user daemon-reload",
        "systemctl --user enable subrouter.service",
        "systemctl --user restart subrouter.service",
    ]


def test_a_foreign_file_in_the_bin_dir_is_left_alone(tmp_path: Path, fakes: Path) -> None:
    host = _host(tmp_path, "darwin", fakes)
    mine = Path(host.home) / "bin" / "cx"
    mine.parent.mkdir(parents=True)
    mine.write_text("#!/bin/sh\necho another cx\n")
    code, out, _ = _install(host)
    assert code == 0
    assert mine.read_text() == "#!/bin/sh\necho another cx\n"
    assert f"skipped {mine}: it exists and is not Subrouter's" in out
    assert os.path.islink(Path(host.home) / "bin" / "sr")
    _uninstall(host)
    assert mine.read_text() == "#!/bin/sh\necho another cx\n"


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path, fakes: Path) -> None:
    for platform in ("darwin", "linux"):
        (tmp_path / platform).mkdir()
        host = _host(tmp_path / platform, platform, fakes, FAKE_RECORD=str(tmp_path / "record"))
        code, out, _ = _install(host, "--dry-run")
        assert code == 0
        assert os.listdir(host.home) == []
        assert _recorded(tmp_path) == []
        assert f"    ExecStart={host.python}" in out or f"<string>{host.python}</string>" in out
        assert "would link" in out
        assert "would run: " in out


def test_a_failing_supervisor_command_is_one_line_and_exit_1(
    tmp_path: Path, fakes: Path
) -> None:
    host = _host(tmp_path, "linux", fakes, FAKE_FAIL="systemctl --user daemon-reload")
    code, _, err = _install(host)
    assert code == 1
    assert err.startswith("subrouter install-daemon: `systemctl --user daemon-reload` failed "
                          "(exit 1): Failed to connect to bus: No medium found; is a systemd "
                          "user session running for you?")
    assert err.count("\n") == 1


@pytest.mark.parametrize("platform", ["darwin", "linux"])
def test_uninstall_removes_what_install_wrote_and_nothing_else(
    tmp_path: Path, fakes: Path, platform: str
) -> None:
    host = _host(tmp_path, platform, fakes)
    home = Path(host.home)
    accounts = home / ".codex-accounts/accounts/a.json"
    accounts.parent.mkdir(parents=True)
    accounts.write_text("{}")
    assert _install(host)[0] == 0
    (home / ".subrouter/state.json").write_text("{}")
    (home / ".subrouter/transcripts/usage.jsonl").write_text("")
    (tmp_path / "record").unlink()
    code, out, err = _uninstall(host)
    assert (code, err) == (0, "")
    if platform == "darwin":
        plist = home / "Library/LaunchAgents/ai.manaflow.subrouter.plist"
        assert not plist.exists()
        assert _recorded(tmp_path) == [f"launchctl bootout gui/501 {plist}"]
    else:
        assert not (home / ".config/systemd/user/subrouter.service").exists()
        assert _recorded(tmp_path) == ["systemctl --user disable --now subrouter.service",
                                       "systemctl --user daemon-reload"]
    assert os.listdir(home / "bin") == []
    assert accounts.read_text() == "{}"
    assert (home / ".subrouter/state.json").exists()
    assert (home / ".subrouter/transcripts/usage.jsonl").exists()
    assert "kept" in out
    # a second uninstall has nothing left to remove and still succeeds
    assert _uninstall(host)[0] == 0


def test_install_daemon_from_the_console_script_on_this_machine(
    tmp_path: Path, fakes: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": f"{fakes}:/usr/bin:/bin",
           "FAKE_RECORD": str(tmp_path / "record")}
    script = os.path.join(os.path.dirname(sys.executable), "subrouter")
    result = subprocess.run([script, "install-daemon", "--", "--idle-timeout", "90s"], env=env,
                            capture_output=True, text=True, timeout=60)
    if not sys.platform.startswith("linux"):
        pytest.skip("the console-script run checks the Linux path")
    assert result.returncode == 0, result.stderr
    unit = (home / ".config/systemd/user/subrouter.service").read_text()
    # the interpreter the console script runs, by its absolute path
    python = Path(script).read_text().splitlines()[0].removeprefix("#!")
    assert f"ExecStart={python} -m subrouter serve " in unit
    assert unit.split("ExecStart=")[1].split("\n")[0].endswith("--idle-timeout 90s")
    assert "systemctl --user enable --now subrouter.service" in _recorded(tmp_path)
    # a serve option the daemon would refuse is caught before anything is written
    (home / ".config/systemd/user/subrouter.service").unlink()
    result = subprocess.run([script, "install-daemon", "--", "--idle-timeout", "soon"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("subrouter install-daemon: serve option after --: ")
    assert "--idle-timeout" in result.stderr
    assert not (home / ".config/systemd/user/subrouter.service").exists()


def test_bootstrap_is_retried_while_the_old_agent_drains(tmp_path: Path, fakes: Path) -> None:
    host = _host(tmp_path, "darwin", fakes, FAKE_BUSY="2")
    slept: list[float] = []
    code, _, err = _install(host, slept=slept)
    assert (code, err) == (0, "")
    assert [c.split()[1] for c in _recorded(tmp_path)] == [
        "bootout", "bootstrap", "bootstrap", "bootstrap", "kickstart"]
    assert slept == [1.0, 1.0]


def test_bootstrap_gives_up_after_the_stop_timeout(tmp_path: Path, fakes: Path) -> None:
    host = _host(tmp_path, "darwin", fakes, FAKE_BUSY="1000")
    slept: list[float] = []
    code, _, err = _install(host, "--drain-timeout", "5s", slept=slept)
    assert code == 1
    assert len(slept) == 5 + daemon.STOP_MARGIN
    assert "launchctl bootstrap gui/501" in err
    assert "Bootstrap failed: 5: Input/output error" in err
