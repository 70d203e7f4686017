"""
The ``subrouter codex`` wrapper: config arguments, their placement, and the
process it becomes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from subrouter.cli.codex import WrapperError, codex_argv, config_args

DEFAULT = ["-c", 'openai_base_url="http://127.0.0.1:31415/v1"']


def test_default_is_one_base_url_override() -> None:
    assert config_args({}) == (DEFAULT, {})
    args, _ = config_args({"SUBROUTER_CODEX_BASE_URL": "http://127.0.0.1:9/v1"})
    assert args == ["-c", 'openai_base_url="http://127.0.0.1:9/v1"']


def test_user_or_account_switches_to_the_custom_provider() -> None:
    args, env = config_args(
        {"SUBROUTER_CODEX_USER_EMAIL": "Dev <Dev@Example.com>",
         "SUBROUTER_CODEX_ACCOUNT_ID": " work "}
    )
    assert args == [
        "-c", 'model_provider="subrouter"',
        "-c", 'model_providers.subrouter.name="Subrouter"',
        "-c", 'model_providers.subrouter.base_url="http://127.0.0.1:31415/v1"',
        "-c", 'model_providers.subrouter.env_key="SUBROUTER_CODEX_DUMMY_API_KEY"',
        "-c", 'model_providers.subrouter.wire_api="responses"',
        "-c", "model_providers.subrouter.supports_websockets=true",
        "-c", 'model_providers.subrouter.http_headers={"X-Subrouter-Agent"="codex",'
              '"X-Subrouter-User-Email"="dev@example.com","X-Subrouter-Account-ID"="work"}',
    ]
    assert env == {"SUBROUTER_CODEX_DUMMY_API_KEY": "subrouter"}
    args, _ = config_args({"SUBROUTER_CODEX_ACCOUNT_ID": "apikey:k"})
    assert args[-1] == ('model_providers.subrouter.http_headers={"X-Subrouter-Agent"="codex",'
                        '"X-Subrouter-Account-ID"="apikey:k"}')


def test_an_invalid_email_is_refused_with_a_hint() -> None:
    with pytest.raises(WrapperError, match="SUBROUTER_CODEX_ACCOUNT_ID"):
        config_args({"SUBROUTER_CODEX_USER_EMAIL": "not-an-email"})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], [*DEFAULT]),
        (["fix the bug"], [*DEFAULT, "fix the bug"]),
        (["-m", "gpt-5"], [*DEFAULT, "-m", "gpt-5"]),
        (["exec", "--json", "hi"], ["exec", *DEFAULT, "--json", "hi"]),
        (["e", "hi"], ["e", *DEFAULT, "hi"]),
        (["resume", "--last"], ["resume", *DEFAULT, "--last"]),
        (["app-server"], ["app-server", *DEFAULT]),
        (["login", "--device-auth"], ["login", "--device-auth"]),
        (["mcp", "list"], ["mcp", "list"]),
    ],
)
def test_where_the_config_goes(args: list[str], expected: list[str]) -> None:
    assert codex_argv(args, DEFAULT) == expected


def test_the_wrapper_becomes_codex_with_its_exit_status(tmp_path: Path) -> None:
    fake = tmp_path / "codex"
    fake.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$@" > "$0.args"\n'
        'printf "%s" "$SUBROUTER_CODEX_DUMMY_API_KEY" > "$0.env"\n'
        "exit 7\n"
    )
    fake.chmod(0o755)
    env = dict(os.environ, SUBROUTER_CODEX_BIN=str(fake), SUBROUTER_CODEX_ACCOUNT_ID="work",
               SUBROUTER_CODEX_SKIP_CHECK="1")
    result = subprocess.run(
        [sys.executable, "-c", "from subrouter.main import main; main()", "codex", "exec", "-m",
         "x", "hello"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 7, result.stderr
    args = (tmp_path / "codex.args").read_text().splitlines()
    assert args[0] == "exec" and args[-3:] == ["-m", "x", "hello"]
    assert 'model_provider="subrouter"' in args
    assert (tmp_path / "codex.env").read_text() == "subrouter"


def test_a_missing_codex_is_explained(tmp_path: Path) -> None:
    env = dict(os.environ, SUBROUTER_CODEX_BIN=str(tmp_path / "nope"),
               SUBROUTER_CODEX_SKIP_CHECK="1")
    result = subprocess.run(
        [sys.executable, "-c", "from subrouter.main import main; main()", "codex", "hi"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "SUBROUTER_CODEX_BIN" in result.stderr


def test_a_client_token_goes_in_a_header_codex_reads_from_the_environment() -> None:
    args, env = config_args({"SUBROUTER_TOKEN": "srt_secret-value-1234"})
    assert 'model_provider="subrouter"' in args
    assert args[-1] == ('model_providers.subrouter.env_http_headers='
                        '{"X-Subrouter-Token"="SUBROUTER_TOKEN"}')
    # the token itself is never on the command line (where ps would show it)
    assert not any("srt_secret" in arg for arg in args)
    assert env == {"SUBROUTER_CODEX_DUMMY_API_KEY": "subrouter"}
