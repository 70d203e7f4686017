# -*- test-case-name: tests.test_codex_wrapper -*-
"""
``subrouter codex [args...]``: run the user's ``codex`` pointed at Subrouter.

By default one config override is added, ``openai_base_url``, so Codex keeps
its built-in provider, the user's login and its model picker, and Subrouter
swaps the credentials upstream. When ``SUBROUTER_CODEX_USER_EMAIL`` or
``SUBROUTER_CODEX_ACCOUNT_ID`` is set, a custom ``subrouter`` provider is used
instead, with WebSockets on and the ``X-Subrouter-*`` headers that carry the
user and the forced account. When ``SUBROUTER_TOKEN`` is set (a client token
for a shared Subrouter), that provider also sends it in ``X-Subrouter-Token``,
read by Codex from the environment, so the token never appears in a command
line; Codex's own ``Authorization`` stays its own. Codex's config files and auth are never touched;
the process is replaced by ``codex``, so its exit status and signals are the
caller's.

Before a command that talks to the model, the wrapper asks Subrouter's
``/_subrouter/health`` and ``/_subrouter/accounts`` (300 ms in all): with the
daemon down or no usable account, it says what to do and exits non-zero
instead of letting Codex retry for a minute without naming Subrouter.
``SUBROUTER_CODEX_SKIP_CHECK=1`` skips the check.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from subrouter.cli.health import EXIT_UNAVAILABLE, TOKEN_ENV, NotReady, check_daemon
from subrouter.config import DEFAULT_CODEX_BASE_URL
from subrouter.sessions.keys import normalise_email

DUMMY_KEY_ENV = "SUBROUTER_CODEX_DUMMY_API_KEY"
SKIP_CHECK_ENV = "SUBROUTER_CODEX_SKIP_CHECK"

#: subcommands whose turns go through the model provider: config goes after them
ROUTED = frozenset({"exec", "e", "review", "resume", "fork", "app-server"})
#: subcommands that never talk to the model: left exactly as they are
UNTOUCHED = frozenset(
    {
        "login", "logout", "mcp", "plugin", "mcp-server", "app", "completion", "sandbox",
        "debug", "apply", "a", "cloud", "exec-server", "features", "help",
    }
)


class WrapperError(Exception):
    """
    The wrapper's environment is unusable; the message says how to fix it.

    :ivar code: the exit status.
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _serves_codex(row: dict[str, object]) -> bool:
    return row.get("provider", "openai") == "openai"


def _toml_string(value: str) -> str:
    # a JSON string is a valid TOML basic string
    return json.dumps(value)


def config_args(environ: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """
    The ``-c`` arguments and extra environment for ``codex``.

    :raises WrapperError: for an invalid ``SUBROUTER_CODEX_USER_EMAIL``.
    """
    base = environ.get("SUBROUTER_CODEX_BASE_URL", "").strip() or DEFAULT_CODEX_BASE_URL
    raw_email = environ.get("SUBROUTER_CODEX_USER_EMAIL", "").strip()
    account = environ.get("SUBROUTER_CODEX_ACCOUNT_ID", "").strip()
    if len(account) > 256:
        raise WrapperError("SUBROUTER_CODEX_ACCOUNT_ID is longer than 256 characters")
    email = None
    if raw_email:
        email = normalise_email(raw_email)
        if email is None:
            raise WrapperError(
                f"SUBROUTER_CODEX_USER_EMAIL={raw_email!r} is not an email address; "
                "to pick an account, set SUBROUTER_CODEX_ACCOUNT_ID instead"
            )
    token = environ.get(TOKEN_ENV, "").strip()
    if email is None and not account and not token:
        return ["-c", f"openai_base_url={_toml_string(base)}"], {}
    headers = {"X-Subrouter-Agent": "codex"}
    if email:
        headers["X-Subrouter-User-Email"] = email
    if account:
        headers["X-Subrouter-Account-ID"] = account
    table = ",".join(f"{_toml_string(k)}={_toml_string(v)}" for k, v in headers.items())
    args = [
        "-c", 'model_provider="subrouter"',
        "-c", 'model_providers.subrouter.name="Subrouter"',
        "-c", f"model_providers.subrouter.base_url={_toml_string(base)}",
        "-c", f'model_providers.subrouter.env_key="{DUMMY_KEY_ENV}"',
        "-c", 'model_providers.subrouter.wire_api="responses"',
        "-c", "model_providers.subrouter.supports_websockets=true",
        "-c", f"model_providers.subrouter.http_headers={{{table}}}",
    ]
    if token:
        args += ["-c", "model_providers.subrouter.env_http_headers="
                 f'{{"X-Subrouter-Token"={_toml_string(TOKEN_ENV)}}}']
    return args, {DUMMY_KEY_ENV: "subrouter"}


def codex_argv(args: Sequence[str], config: Sequence[str]) -> list[str]:
    """
    Where the config goes: right after a routed subcommand, nowhere for the
    others, and in front of everything else (options, a prompt, nothing).
    """
    args = list(args)
    if args and args[0] in ROUTED:
        return [args[0], *config, *args[1:]]
    if args and args[0] in UNTOUCHED:
        return args
    return [*config, *args]


def run(args: Sequence[str], environ: Mapping[str, str] | None = None) -> None:
    """
    Replace this process with ``codex`` (``$SUBROUTER_CODEX_BIN``, default
    ``codex`` on ``PATH``) pointed at Subrouter, once Subrouter answers.

    :raises WrapperError: when it cannot (what to do is the message).
    """
    env = dict(os.environ if environ is None else environ)
    config, extra = config_args(env)
    talks_to_model = not (args and args[0] in UNTOUCHED) and not any(
        a in ("-h", "--help", "-V", "--version") for a in args[:1])
    if talks_to_model:
        base = env.get("SUBROUTER_CODEX_BASE_URL", "").strip() or DEFAULT_CODEX_BASE_URL
        try:
            check_daemon(
                base, env, usable=_serves_codex, skip_env=SKIP_CHECK_ENV,
                no_account=(
                    "Subrouter has no usable ChatGPT login or OpenAI key right now (see `cx "
                    "status`): add one with `cx add` (a ChatGPT login) or `cx add-key` (an "
                    f"OpenAI API key) (or set {SKIP_CHECK_ENV}=1 to skip this check)"
                ),
            )
        except NotReady as e:
            raise WrapperError(str(e), EXIT_UNAVAILABLE) from None
    binary = env.get("SUBROUTER_CODEX_BIN", "").strip() or "codex"
    env.update(extra)
    argv = [binary, *codex_argv(args, config)]
    try:
        os.execvpe(binary, argv, env)
    except FileNotFoundError:
        raise WrapperError(
            f"cannot find {binary!r}: install Codex (npm install -g @openai/codex) "
            "or set SUBROUTER_CODEX_BIN"
        ) from None
