"""
Client tokens: the file format and its errors, constant-time matching, the
``cx client-token`` commands, and the daemon re-reading the file (a revoked
token stops working; a broken file refuses everyone).
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from subrouter.accounts import client_tokens
from subrouter.accounts.client_tokens import ClientTokenFile, ClientTokensError, parse
from subrouter.cli.cx import CxOptions, Streams, run_cx

GOOD = "srt_0123456789abcdef"


@pytest.mark.parametrize(("text", "message"), [
    ("alice\n", "line 1: expected NAME TOKEN"),
    ("# c\nalice short\n", "line 2: the token of alice is shorter"),
    ("al/ice " + GOOD + "\n", "line 1: 'al/ice' is not a name"),
    (f"alice {GOOD}\nalice {GOOD}x\n", "line 2: alice is named twice"),
    (f"alice {GOOD}\nbob {GOOD}\n", "line 2: the token of bob is also another's"),
])
def test_a_bad_file_is_named_with_the_line(text: str, message: str) -> None:
    with pytest.raises(ClientTokensError, match=f"^tokens: {message}"):
        parse(text, "tokens")


def test_a_presented_token_matches_its_name_only() -> None:
    tokens = parse(f"# team\n\nalice {GOOD}\nbob {GOOD}-bob\n", "t")
    assert client_tokens.match(tokens, GOOD) == "alice"
    assert client_tokens.match(tokens, GOOD + "-bob") == "bob"
    assert client_tokens.match(tokens, GOOD[:-1]) is None
    assert client_tokens.match(tokens, "") is None
    assert client_tokens.match([], GOOD) is None


def _cx(tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    options = CxOptions()
    options.parseOptions(["--state-dir", str(tmp_path / "state"), *argv])
    out, err = io.StringIO(), io.StringIO()
    code = run_cx(options, Streams(stdout=out, stderr=err))
    return code, out.getvalue(), err.getvalue()


def test_cx_makes_lists_and_revokes_tokens(tmp_path: Path) -> None:
    code, out, _ = _cx(tmp_path, "client-token", "make", "alice@example.com", "--json")
    assert code == 0
    made = json.loads(out)
    path = tmp_path / "state" / "client-tokens"
    assert made["file"] == str(path) and made["token"].startswith("srt_")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    code, out, _ = _cx(tmp_path, "client-token", "make", "bob")
    assert code == 0
    bob = out.splitlines()[1]
    code, _, err = _cx(tmp_path, "client-token", "make", "bob")
    assert code == 1 and "already has a token" in err
    code, out, _ = _cx(tmp_path, "client-token", "list")
    assert out.splitlines()[0].split() == ["NAME", "FINGERPRINT"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["alice@example.com", "bob"]
    assert made["token"] not in out and bob not in out  # fingerprints only
    tokens = client_tokens.read(str(path))
    assert client_tokens.match(tokens, bob) == "bob"
    assert _cx(tmp_path, "client-token", "revoke", "bob")[0] == 0
    assert client_tokens.match(client_tokens.read(str(path)), bob) is None
    code, _, err = _cx(tmp_path, "client-token", "rm", "bob")
    assert code == 1 and "no client token" in err


def test_the_daemon_view_follows_the_file_and_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"alice {GOOD}\n")
    view = ClientTokenFile(str(path))
    view.load()
    assert view.match(GOOD) == "alice"
    path.write_text(f"alice {GOOD}\nbroken\n")
    view.check()
    assert view.match(GOOD) is None and "line 2" in (view.error or "")
    path.write_text(f"carol {GOOD}\n")
    view.check()
    assert view.match(GOOD) == "carol" and view.error is None
    path.unlink()
    view.check()
    assert view.match(GOOD) is None
