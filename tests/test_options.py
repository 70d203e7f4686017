"""
The serve options: defaults, checks, and errors that name the option.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from twisted.python import usage

from subrouter import config as parse
from subrouter.tap import Options


def _parse(*argv: str) -> Options:
    opts = Options()
    opts.stderr = io.StringIO()
    opts.parseOptions(list(argv))
    return opts


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CODEX_HOME", raising=False)
    config = _parse().config
    assert config.endpoint == "tcp:31415:backlog=1024:interface=127.0.0.1"
    assert config.accounts_dir == str(tmp_path / ".codex-accounts")
    assert config.codex_upstream == "https://chatgpt.com/backend-api/codex"
    assert config.openai_upstream == "https://api.openai.com"
    assert config.token_url == "https://auth.openai.com/oauth/token"
    assert config.ca_bundles == ()
    assert config.idle_timeout == 300.0
    assert config.header_timeout == 30.0
    assert config.codex_auth == str(tmp_path / ".codex" / "auth.json")
    assert config.session_retention == 30 * 86400.0


def test_codex_home_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CODEX_HOME", str(tmp_path / "ch"))
    assert _parse().config.codex_auth == str(tmp_path / "ch" / "auth.json")


def test_ipv6_loopback() -> None:
    endpoint = _parse("--addr", "[::1]:8000").config.endpoint
    assert endpoint == r"tcp:8000:backlog=1024:interface=\:\:1"


def test_localhost_is_loopback() -> None:
    endpoint = _parse("--addr", "localhost:9").config.endpoint
    assert endpoint == "tcp:9:backlog=1024:interface=127.0.0.1"


def test_non_loopback_is_refused_without_expose() -> None:
    with pytest.raises(usage.UsageError, match=r"--addr.*--expose"):
        _parse("--addr", "0.0.0.0:31415")


def test_expose_needs_client_tokens() -> None:
    with pytest.raises(usage.UsageError, match=r"--expose: needs --client-tokens"):
        _parse("--addr", "0.0.0.0:31415", "--expose")


def test_expose_with_client_tokens_allows_it_with_a_note(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice srt_0123456789abcdefghij\n")
    opts = _parse("--addr", "0.0.0.0:31415", "--expose", "--client-tokens", str(tokens),
                  "--allow-host", "box.tailnet.ts.net")
    assert opts.config.endpoint == "tcp:31415:backlog=1024:interface=0.0.0.0"
    assert opts.config.client_tokens == str(tokens)
    assert opts.config.allow_hosts == ("box.tailnet.ts.net", "0.0.0.0")
    assert "not loopback" in opts.stderr.getvalue()  # type: ignore[attr-defined]


def test_a_bad_client_tokens_file_is_named_with_its_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# team\nalice short\n")
    with pytest.raises(usage.UsageError, match=rf"--client-tokens: {tokens}: line 2"):
        _parse("--client-tokens", str(tokens))


def test_session_retention_takes_days_and_zero_keeps_them() -> None:
    assert _parse("--session-retention", "90d").config.session_retention == 90 * 86400.0
    assert _parse("--session-retention", "0").config.session_retention == 0.0


def test_usage_retention_must_outlast_the_raw_days() -> None:
    with pytest.raises(usage.UsageError, match="--usage-retention"):
        _parse("--usage-raw-days", "10", "--usage-retention", "5d")


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["--addr", "31415"], "--addr"),
        (["--addr", "127.0.0.1:99999"], "--addr"),
        (["--addr", "::1:80"], "--addr"),
        (["--idle-timeout", "soon"], "--idle-timeout"),
        (["--idle-timeout", "0"], "--idle-timeout"),
        (["--header-timeout", "0"], "--header-timeout"),
        (["--header-timeout", "later"], "--header-timeout"),
        (["--codex-upstream", "ftp://x"], "--codex-upstream"),
        (["--openai-upstream", "api.openai.com"], "--openai-upstream"),
        (["--token-url", "https://x/?a=1"], "--token-url"),
        (["--ca-bundle", "/nonexistent/ca.pem"], "--ca-bundle"),
        (["--session-retention", "a while"], "--session-retention"),
        (["--session-retention", "10m"], "--session-retention"),
    ],
)
def test_bad_values_name_the_option(argv: list[str], option: str) -> None:
    with pytest.raises(usage.UsageError) as caught:
        _parse(*argv)
    assert str(caught.value).startswith(option + ":")


def test_ca_bundle_must_hold_a_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(usage.UsageError, match=r"--ca-bundle: .*no PEM certificate"):
        _parse("--ca-bundle", str(junk))


def test_listen_overrides_addr() -> None:
    config = _parse("--listen", "systemd:domain=INET:index=0").config
    assert config.endpoint == "systemd:domain=INET:index=0"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25), ("12", 12.0), ("1.5m", 90.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse.parse_duration(text) == seconds


def test_upstream_urls_lose_their_trailing_slash() -> None:
    config = _parse("--codex-upstream", "https://localhost:8443/backend-api/codex/").config
    assert config.codex_upstream == "https://localhost:8443/backend-api/codex"


def test_paths_expand_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = _parse("--accounts-dir", "~/acc", "--codex-home", "~/ch").config
    assert config.accounts_dir == os.path.join(str(tmp_path), "acc")
    assert config.codex_auth == os.path.join(str(tmp_path), "ch", "auth.json")
