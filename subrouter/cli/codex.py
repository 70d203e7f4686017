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
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from subrouter.config import DEFAULT_CODEX_BASE_URL
from subrouter.sessions.keys import normalise_email

DUMMY_KEY_ENV = "SUBROUTER_CODEX_DUMMY_API_KEY"
SKIP_CHECK_ENV = "SUBROUTER_CODEX_SKIP_CHECK"
#: the whole check (both requests) takes at most this long
CHECK_TIMEOUT = 0.3
#: exit status when Subrouter cannot serve Codex (EX_UNAVAILABLE)
EXIT_UNAVAILABLE = 69
TOKEN_ENV = "SUBROUTER_TOKEN"

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


def _get_json(url: str, deadline: float) -> object:
    import http.client

    parts = urlsplit(url)
    timeout = max(deadline - time.monotonic(), 0.01)
    connection_class = (http.client.HTTPSConnection if parts.scheme == "https"
                        else http.client.HTTPConnection)
    connection = connection_class(parts.netloc, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"HTTP {response.status}")
        return json.loads(body)
    finally:
        connection.close()


def check_daemon(base_url: str, timeout: float = CHECK_TIMEOUT) -> str | None:
    """
    Whether Subrouter at ``base_url`` can serve Codex: None when it can,
    else what to do.
    """
    parts = urlsplit(base_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    where = parts.netloc
    deadline = time.monotonic() + timeout
    try:
        health = _get_json(origin + "/_subrouter/health", deadline)
        if not isinstance(health, dict) or not health.get("ok"):
            raise ValueError("not Subrouter")
    except (OSError, ValueError):
        return (f"Subrouter is not running on {where}: start it with `subrouter serve` "
                "(in another terminal) or `subrouter install-daemon`")
    try:
        listing = _get_json(origin + "/_subrouter/accounts", deadline)
    except (OSError, ValueError):
        return None  # it answers; let Codex try
    rows = listing.get("accounts") if isinstance(listing, dict) else None
    if not isinstance(rows, list):
        return None
    if not rows:
        return ("Subrouter has no accounts: add one with `cx add` (a ChatGPT login) or "
                "`cx add-key` (an OpenAI API key)")
    if not any(isinstance(r, dict) and r.get("usable") for r in rows):
        return ("Subrouter has no usable account right now (see `cx status`): sign in again "
                "with `cx add`, or add an API key with `cx add-key`")
    return None


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
    if talks_to_model and env.get(SKIP_CHECK_ENV, "").strip() in ("", "0"):
        base = env.get("SUBROUTER_CODEX_BASE_URL", "").strip() or DEFAULT_CODEX_BASE_URL
        problem = check_daemon(base)
        if problem is not None:
            raise WrapperError(f"{problem} (or set {SKIP_CHECK_ENV}=1 to skip this check)",
                               EXIT_UNAVAILABLE)
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
