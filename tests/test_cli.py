"""
The console scripts' command tree.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from subrouter.main import cx_main, main
from tests.support.store import oauth_document, write


def test_cx_list_shows_accounts_and_skipped_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "a.json", oauth_document("a@example.com"))
    write(tmp_path, "k.json", {"email": "apikey:work", "auth": {"OPENAI_API_KEY": "sk-s3cret99"}})
    write(tmp_path, "bad.json", b"{")
    with pytest.raises(SystemExit) as exit_:
        cx_main(["--accounts-dir", str(tmp_path), "list"])
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert "  a@example.com (added 2026-04-28)" in out
    assert "  work (api key) (added " in out
    assert "sk-s3cret99" not in out + err
    assert "bad.json" in err


def test_subrouter_cx_list_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "a.json", oauth_document("a@example.com"))
    with pytest.raises(SystemExit):
        main(["cx", "--accounts-dir", str(tmp_path), "list", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"id": "a@example.com", "kind": "oauth", "plan": "pro", "active": False,
                     "added": "2026-04-28", "problem": None}]


@pytest.mark.parametrize(
    "argv", [[], ["bogus"], ["serve", "--addr", "nope"], ["--log-format", "xml", "serve"]]
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from subrouter.main import main; main(['--version'])"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("subrouter ")


def test_account_commands_are_direct_aliases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path / ".codex-accounts", "a.json", oauth_document("a@example.com"))
    with pytest.raises(SystemExit) as exit_:
        main(["list"])
    assert exit_.value.code == 0
    assert "  a@example.com (added 2026-04-28)" in capsys.readouterr().out
