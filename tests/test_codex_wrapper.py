"""
The ``subrouter codex`` wrapper: config arguments, their placement, and the
process it becomes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _fake_subrouter(accounts: list[dict[str, object]]) -> tuple[Any, str]:
    """
    A loopback HTTP server answering like a Subrouter with these accounts.
    """
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/_subrouter/health":
                body = json.dumps({"ok": True}).encode()
            elif self.path == "/_subrouter/accounts":
                body = json.dumps({"accounts": accounts}).encode()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def test_the_check_refuses_a_daemon_with_no_account_codex_can_use() -> None:
    from subrouter.cli.codex import run

    server, base = _fake_subrouter([{"id": "claude:work", "provider": "anthropic",
                                     "usable": True}])
    try:
        with pytest.raises(WrapperError) as refused:
            run(["exec", "hi"], {"SUBROUTER_CODEX_BASE_URL": base, "PATH": "/nonexistent"})
    finally:
        server.shutdown()
        server.server_close()
    assert refused.value.code == 69
    assert "no usable ChatGPT login or OpenAI key" in str(refused.value)
    assert "cx add" in str(refused.value)
