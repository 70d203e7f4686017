"""
The files under ``deploy/``: the user unit and the LaunchAgent are exactly
what ``install-daemon`` writes (for a user ``you`` with a pipx install); the
hardened system unit is accepted by ``systemd-analyze verify`` and runs the
daemon exposed only with client tokens.
"""

from __future__ import annotations

import os
import plistlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from subrouter.cli.daemon import Host, Settings, render_plist, render_user_unit
from subrouter.tap import Options as ServeOptions

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
USER_UNIT = DEPLOY / "systemd" / "user" / "subrouter.service"
SYSTEM_UNIT = DEPLOY / "systemd" / "system" / "subrouter.service"
PLIST = DEPLOY / "launchd" / "ai.manaflow.subrouter.plist"
#: serve options the system unit uses that another change adds (issue 12)
_COMING = {"--client-tokens"}


def _without_leading_comments(text: str) -> str:
    lines = text.splitlines(keepends=True)
    while lines and lines[0].startswith("#") and "install-daemon`;" not in lines[0]:
        lines.pop(0)
    return "".join(lines)


def test_the_reference_user_unit_is_what_install_daemon_writes() -> None:
    host = Host(platform="linux", home="/home/you",
                python="/home/you/.local/share/pipx/venvs/subrouter/bin/python",
                environ={"PATH": ""}, uid=1000, user="you")
    assert _without_leading_comments(USER_UNIT.read_text()) == render_user_unit(host, Settings())


def test_the_reference_launch_agent_is_what_install_daemon_writes() -> None:
    host = Host(platform="darwin", home="/Users/you",
                python="/Users/you/.local/pipx/venvs/subrouter/bin/python",
                environ={"PATH": ""}, uid=501, user="you")
    assert plistlib.loads(PLIST.read_bytes()) == plistlib.loads(render_plist(host, Settings()))


def _exec_start(unit: str) -> list[str]:
    text = unit.replace("\\\n", " ")
    (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=").split()


def test_the_system_unit_is_hardened_and_exposed_only_with_client_tokens() -> None:
    unit = SYSTEM_UNIT.read_text()
    for directive in ("User=subrouter", "StateDirectory=subrouter", "ProtectSystem=strict",
                      "ProtectHome=yes", "NoNewPrivileges=yes", "PrivateTmp=yes",
                      "CapabilityBoundingSet=\n", "UMask=0077", "Restart=always",
                      "ExecReload=/bin/kill -HUP $MAINPID"):
        assert directive in unit, directive
    argv = _exec_start(unit)
    assert argv[:4] == ["/opt/subrouter/bin/python", "-m", "subrouter", "serve"]
    assert "--expose" in argv and "--client-tokens" in argv
    # every path the daemon writes is under its state directory
    for flag in ("--accounts-dir", "--state-dir", "--codex-home", "--transcripts",
                 "--client-tokens"):
        assert argv[argv.index(flag) + 1].startswith("/var/lib/subrouter"), flag
    # and every flag is one serve knows
    known = {f"--{name}" for name, *_ in ServeOptions.optParameters + ServeOptions.optFlags}
    known |= {"--ca-bundle", "--transcript-exclude"}
    assert {a for a in argv if a.startswith("--")} - known <= _COMING


def _verify(unit: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    from tests.support.debian import ensure

    analyze = ensure("systemd-analyze", ["systemd"])
    if analyze is None:
        pytest.fail("systemd-analyze is not installed and apt-get could not install Debian's "
                    "systemd: `sudo apt-get install systemd`")
    # verify checks that ExecStart's program exists: point it at this venv's
    text = unit.read_text()
    text = re.sub(r"ExecStart=(\S+)", f"ExecStart={os.path.abspath(sys.executable)}", text)
    copy = tmp_path / "subrouter.service"
    copy.write_text(text)
    return subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_systemd_analyze_verify_accepts_the_units(unit: Path, tmp_path: Path) -> None:
    result = _verify(unit, tmp_path)
    assert result.returncode == 0, result.stderr
    # verify only warns about unknown or malformed settings: there must be none
    assert result.stderr == "", result.stderr


def test_systemd_analyze_verify_would_catch_a_bad_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "subrouter.service"
    bad.parent.mkdir()
    bad.write_text(SYSTEM_UNIT.read_text().replace("Restart=always", "Restart=sometimes"))
    result = _verify(bad, tmp_path)
    assert "restart specifier" in result.stderr
