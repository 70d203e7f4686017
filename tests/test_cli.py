"""
The console scripts as a user meets them, through their real entry points:
help everywhere, typos, versions, usage lines, aliases, options after the
command, named arguments, errors as one line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from subrouter.main import cx_main, main
from tests.support.cli import home_env, run, script
from tests.support.store import oauth_document, write


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def parse_only(capsys: pytest.CaptureFixture[str], program: str, *argv: str) -> _Result:
    """
    Run an entry point in this process, for command lines that end before any
    command runs (help, versions, usage errors): no reactor is involved.
    """
    with pytest.raises(SystemExit) as exit_:
        (cx_main if program == "cx" else main)(list(argv))
    out, err = capsys.readouterr()
    return _Result(int(exit_.value.code or 0), out, err)


def test_cx_list_shows_accounts_and_skipped_files(tmp_path: Path) -> None:
    write(tmp_path / "store", "a.json", oauth_document("a@example.com"))
    write(tmp_path / "store", "k.json",
          {"email": "apikey:work", "auth": {"OPENAI_API_KEY": "sk-s3cret99"}})
    write(tmp_path / "store", "bad.json", b"{")
    result = run("cx", "--accounts-dir", str(tmp_path / "store"), "list",
                 env=home_env(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["ACCOUNT", "KIND", "PLAN"]
    assert lines[1].split()[:3] == ["a@example.com", "login", "pro"]
    assert lines[2].split()[:3] == ["work", "api", "key"]
    assert "sk-s3cret99" not in result.stdout + result.stderr
    assert "bad.json" in result.stderr


def test_global_options_also_follow_the_command(tmp_path: Path) -> None:
    write(tmp_path / "store", "a.json", oauth_document("a@example.com"))
    for argv in (["list", "--accounts-dir", str(tmp_path / "store"), "--json"],
                 ["--accounts-dir", str(tmp_path / "store"), "list", "--json"],
                 ["list", f"--accounts-dir={tmp_path / 'store'}", "--json"]):
        result = run("cx", *argv, env=home_env(tmp_path))
        assert result.returncode == 0, (argv, result.stderr)
        rows = json.loads(result.stdout)
        assert [(r["id"], r["kind"], r["plan"], r["active"], r["next"]) for r in rows] == [
            ("a@example.com", "oauth", "pro", False, True)]
    result = run("subrouter", "cx", "list", "--accounts-dir", str(tmp_path / "store"),
                 "--json", env=home_env(tmp_path))
    assert json.loads(result.stdout)[0]["id"] == "a@example.com"


def test_json_is_always_json(tmp_path: Path) -> None:
    for command in ("list", "status"):
        result = run("cx", "--accounts-dir", str(tmp_path / "none"), command, "--json",
                     env=home_env(tmp_path))
        assert result.returncode == 0 and json.loads(result.stdout) == []


@pytest.mark.parametrize(
    "argv", [[], ["bogus"], ["serve", "--addr", "nope"], ["--log-format", "xml", "serve"]]
)
def test_usage_errors_exit_2_with_one_short_message(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    result = parse_only(capsys, "subrouter", *argv)
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: subrouter")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 3


def test_versions_are_ours(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import subrouter

    result = run("cx", "--version", env=home_env(tmp_path))
    assert result.stdout == f"cx (subrouter) {subrouter.__version__}\n"
    for program, expected in (("subrouter", f"subrouter {subrouter.__version__}"),
                              ("cx", f"cx (subrouter) {subrouter.__version__}")):
        result = parse_only(capsys, program, "--version")
        assert result.returncode == 0 and result.stdout == expected + "\n"
        assert "Twisted" not in result.stdout


def test_account_commands_are_direct_aliases(tmp_path: Path) -> None:
    write(tmp_path / ".codex-accounts", "a.json", oauth_document("a@example.com"))
    result = run("subrouter", "ls", env=home_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[0] == "a@example.com"


@pytest.mark.parametrize("argv", [
    ["cx", "-h"], ["cx", "--help"], ["cx", "help"],
    ["cx", "list", "-h"], ["cx", "help", "list"], ["cx", "ls", "--help"],
    ["cx", "claude", "-h"], ["cx", "help", "claude"], ["cx", "claude", "switch", "-h"],
    ["subrouter", "-h"], ["subrouter", "help"], ["subrouter", "serve", "-h"],
    ["subrouter", "help", "serve"], ["subrouter", "cx", "status", "-h"],
])
def test_help_everywhere_names_the_program(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    result = parse_only(capsys, *argv)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"Usage: {argv[0]}"), first
    assert "<command> [options]" not in first


def test_the_help_lists_each_command_once_with_its_aliases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("cx", "-h", env=home_env(tmp_path)).stdout.startswith("Usage: cx ")
    text = parse_only(capsys, "cx", "help").stdout
    commands = text.split("Commands:\n")[1].split("\n\n")[0].splitlines()
    names = [line.split()[0] for line in commands]
    assert len(names) == len(set(names))
    assert "  list (ls)" in text and "  remove (rm)" in text and "  switch (use)" in text
    assert "  gui-switch (gui-use)" in text and "  add-key (add-api-key)" in text
    assert "  admin-keys (list-admin-keys)" in text
    for alias in ("ls", "rm", "use", "gui-use", "add-api-key", "list-admin-keys"):
        assert alias not in names
    claude = parse_only(capsys, "cx", "claude", "--help").stdout
    assert "  switch (use)" in claude and "  list (ls, status)" in claude
    usage = parse_only(capsys, "cx", "help", "remove").stdout
    assert usage.startswith("Usage: cx remove [options] <account>\n")


def test_a_typo_gets_a_short_usage_and_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run("cx", "lsit", env=home_env(tmp_path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "Usage: cx [options] [command] [arguments]",
        'cx: unknown command "lsit"; did you mean `list`?',
        "Run `cx help` for every command.",
    ]
    result = parse_only(capsys, "subrouter", "serv")
    assert 'did you mean `serve`?' in result.stderr
    result = parse_only(capsys, "cx", "claude", "swich")
    assert 'did you mean `switch`?' in result.stderr and result.returncode == 2
    result = parse_only(capsys, "cx", "list", "--jsn")
    assert result.returncode == 2 and "Usage: cx list" in result.stderr


def test_a_missing_argument_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    result = parse_only(capsys, "cx", "remove")
    assert result.returncode == 2
    assert "cx: missing <account>" in result.stderr
    assert "Wrong number of arguments" not in result.stderr
    result = parse_only(capsys, "cx", "remove-admin-key")
    assert "missing <label>" in result.stderr


def test_claude_with_no_subcommand_lists_profiles(tmp_path: Path) -> None:
    for argv in (["cx", "claude"], ["cx", "gemini"]):
        result = run(*argv, env=home_env(tmp_path))
        assert result.returncode == 0 and "Traceback" not in result.stderr
        assert "No " in result.stdout


def test_hints_name_cx_only(tmp_path: Path) -> None:
    outputs = [run("cx", *argv, env=home_env(tmp_path)) for argv in
               (["list"], ["status"], ["admin-keys"], ["usage"])]
    text = "".join(r.stdout + r.stderr for r in outputs)
    assert "`cx add`" in text and "cx add-admin-key" in text
    assert "subrouter add" not in text
    source = Path(__file__).parents[1] / "subrouter"
    for path in source.rglob("*.py"):
        assert not re.search(r"'subrouter (add|add-key|add-admin-key|usage)'",
                             path.read_text()), path


def test_serve_takes_log_format_after_the_command(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [script("subrouter"), "serve", "--log-format", "json", "--addr", f"127.0.0.1:{port}",
         "--fetch-usage", "false"],
        env=home_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())
        assert first["level"] in ("info", "warn")
        lines = [first]
        while not any("listening on" in str(line.get("message")) for line in lines):
            lines.append(json.loads(process.stdout.readline()))
        text = json.dumps(lines)
        # the start-up lines: one actionable hint for an empty store, no class names
        assert "cx add" in text and "QuietSite" not in text
    finally:
        process.terminate()
        process.wait(30)


def test_serve_refuses_a_file_as_the_accounts_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = run("subrouter", "serve", "--accounts-dir", str(tmp_path / "file"),
                 env=home_env(tmp_path))
    assert result.returncode == 2
    assert "--accounts-dir" in result.stderr and "not a folder" in result.stderr


def test_serve_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("subrouter", "serve", "--addr", f"127.0.0.1:{port}", "--fetch-usage",
                     "false", env=home_env(tmp_path))
    assert result.returncode == 1
    output = result.stdout + result.stderr
    said = [line for line in output.splitlines() if f"cannot listen on 127.0.0.1:{port}" in line]
    assert len(said) == 1, output
    assert "Traceback" not in output


def test_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    for i in range(30):
        write(tmp_path / "store", f"k{i}.json",
              {"email": f"apikey:key{i}", "auth": {"OPENAI_API_KEY": f"sk-{i}"}})
    for reader in ("head -0", "true", "head -1"):
        result = subprocess.run(
            ["bash", "-c", f'"{script("cx")}" --accounts-dir "{tmp_path / "store"}" status '
             f"| {reader}; echo status=${{PIPESTATUS[0]}} >&2"],
            env=home_env(tmp_path), capture_output=True, text=True, timeout=60)
        errors = [line for line in result.stderr.splitlines()
                  if not line.startswith("status=")]
        assert errors == [], (reader, result.stderr)
        assert re.search(r"status=(0|141)$", result.stderr.strip())


def test_a_hidden_store_id_and_every_command_error_is_one_line(tmp_path: Path) -> None:
    result = run("cx", "switch", "nobody", env=home_env(tmp_path))
    assert result.returncode == 1
    assert result.stderr == 'cx: no account found matching "nobody"\n'
    assert os.path.exists(script("cx"))
