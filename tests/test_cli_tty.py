"""
The console scripts on a terminal (a pty): hidden secrets, confirmations,
Ctrl-C at any prompt, colour only on a terminal and never with NO_COLOR.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import home_env, on_terminal
from tests.support.upstream import write_apikey_account, write_oauth_account


def test_add_key_reads_the_key_hidden(tmp_path: Path) -> None:
    term = on_terminal("cx", "--accounts-dir", str(tmp_path / "store"), "add-key",
                       env=home_env(tmp_path))
    term.read_until(b"Label")
    term.write(b"work\n")
    term.read_until(b"hidden): ")
    term.write(b"sk-visible-123456\n")
    assert term.wait() == 0
    assert b"sk-visible" not in term.output  # never echoed
    assert b"Added API key account: work" in term.output
    stored = json.loads((tmp_path / "store" / "accounts" / "apikey_work.json").read_text())
    assert stored["auth"]["OPENAI_API_KEY"] == "sk-visible-123456"
    # the same label again: asked first on a terminal
    term = on_terminal("cx", "--accounts-dir", str(tmp_path / "store"), "add-key",
                       "--label", "work", env=home_env(tmp_path))
    term.read_until(b"hidden): ")
    term.write(b"sk-other-999\n")
    term.read_until(b"[y/N] ")
    term.write(b"n\n")
    assert term.wait() == 1
    stored = json.loads((tmp_path / "store" / "accounts" / "apikey_work.json").read_text())
    assert stored["auth"]["OPENAI_API_KEY"] == "sk-visible-123456"


def test_ctrl_c_at_any_prompt_is_a_quiet_exit_130(tmp_path: Path) -> None:
    write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    store = ["--accounts-dir", str(tmp_path / "store")]
    for argv, question in ((["add-key"], b"Label"),
                           (["add-key", "--label", "x"], b"hidden): "),
                           ([], b"Switch to"),
                           (["remove", "work"], b"[y/N] ")):
        term = on_terminal("cx", *store, *argv, env=home_env(tmp_path))
        term.read_until(question)
        term.interrupt()
        assert term.wait() == 130, (argv, term.output)
        assert b"Traceback" not in term.output and b"KeyboardInterrupt" not in term.output
    assert (tmp_path / "store" / "accounts" / "apikey_work.json").exists()
    # sr alone is the same view
    term = on_terminal("sr", *store, env=home_env(tmp_path))
    term.read_until(b"Switch to")
    term.interrupt()
    assert term.wait() == 130 and b"Traceback" not in term.output


def test_remove_asks_on_a_terminal_warns_about_the_active_login_and_leaves_no_lock(
    tmp_path: Path,
) -> None:
    path = write_oauth_account(tmp_path / "store", "a@example.com", exp=2_000_000_000)
    (tmp_path / ".codex").mkdir()
    (tmp_path / ".codex" / "auth.json").write_text(
        json.dumps(json.loads(path.read_text())["auth"]))
    (tmp_path / "store" / "accounts" / ".a@example.com.json.lock").write_text("")
    store = ["--accounts-dir", str(tmp_path / "store")]
    term = on_terminal("cx", *store, "rm", "a@example.com", env=home_env(tmp_path))
    term.read_until(b"[y/N] ")
    assert b"is the active login" in term.output and b"cx switch" in term.output
    term.write(b"y\n")
    assert term.wait() == 0
    assert b"Removed account: a@example.com" in term.output
    assert list((tmp_path / "store" / "accounts").iterdir()) == []  # no .lock left


def test_colour_only_on_a_terminal_and_never_with_no_color(tmp_path: Path) -> None:
    write_oauth_account(tmp_path / "store", "a@example.com", exp=2_000_000_000)
    store = ["--accounts-dir", str(tmp_path / "store"), "list"]
    term = on_terminal("cx", *store, env=home_env(tmp_path))
    assert term.wait() == 0 and b"\x1b[" in term.output
    term = on_terminal("cx", *store, env=home_env(tmp_path, NO_COLOR="1"))
    assert term.wait() == 0 and b"\x1b[" not in term.output
    assert b"a@example.com" in term.output
