# -*- test-case-name: tests.test_claude_wrapper -*-
"""
``subrouter claude [args...]``: run the user's Claude Code pointed at Subrouter.

Only ``ANTHROPIC_BASE_URL`` is set (``$SUBROUTER_CLAUDE_BASE_URL``, default
``http://127.0.0.1:31415``), so Claude Code keeps its own login, settings and
model choice, and Subrouter swaps the credentials upstream for a Claude
profile's or an Anthropic key's. When ``SUBROUTER_CLAUDE_USER_EMAIL`` or
``SUBROUTER_CLAUDE_ACCOUNT_ID`` is set, the ``X-Subrouter-*`` headers that
carry them are added through ``ANTHROPIC_CUSTOM_HEADERS`` (newline-separated
``Name: Value`` lines, code.claude.com/docs/en/env-vars), after any the user
already has there. Claude's config files and credentials are never touched;
the process is replaced by ``claude``, so its exit status and signals are the
caller's. Every argument is Claude's.

(``cx claude ...`` manages Claude profiles; ``subrouter claude`` used to be an
alias of it and now runs Claude Code instead, like ``subrouter codex``.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from subrouter.cli.health import EXIT_UNAVAILABLE, NotReady, check_daemon
from subrouter.sessions.keys import normalise_email

DEFAULT_BASE_URL = "http://127.0.0.1:31415"
SKIP_CHECK_ENV = "SUBROUTER_CLAUDE_SKIP_CHECK"
NO_ACCOUNT = (
    "Subrouter has no usable Claude profile or Anthropic key: run `cx claude add` or "
    "`cx add-key --provider anthropic`"
)


class WrapperError(Exception):
    """
    The wrapper cannot start Claude Code; the message says how to fix it.

    :ivar code: the exit status.
    """

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def claude_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """
    The environment ``claude`` runs with.

    :raises WrapperError: for an invalid ``SUBROUTER_CLAUDE_USER_EMAIL`` or
        ``SUBROUTER_CLAUDE_ACCOUNT_ID``.
    """
    env = dict(environ)
    base = environ.get("SUBROUTER_CLAUDE_BASE_URL", "").strip() or DEFAULT_BASE_URL
    env["ANTHROPIC_BASE_URL"] = base.rstrip("/")
    headers = []
    raw_email = environ.get("SUBROUTER_CLAUDE_USER_EMAIL", "").strip()
    if raw_email:
        email = normalise_email(raw_email)
        if email is None:
            raise WrapperError(
                f"SUBROUTER_CLAUDE_USER_EMAIL={raw_email!r} is not an email address; "
                "to pick an account, set SUBROUTER_CLAUDE_ACCOUNT_ID instead"
            )
        headers.append(f"X-Subrouter-User-Email: {email}")
    account = environ.get("SUBROUTER_CLAUDE_ACCOUNT_ID", "").strip()
    if account:
        if len(account) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in account):
            raise WrapperError(
                "SUBROUTER_CLAUDE_ACCOUNT_ID must be at most 256 printable characters"
            )
        headers.append(f"X-Subrouter-Account-ID: {account}")
    if headers:
        existing = environ.get("ANTHROPIC_CUSTOM_HEADERS", "").strip("\n")
        env["ANTHROPIC_CUSTOM_HEADERS"] = "\n".join([*([existing] if existing else []),
                                                      *headers])
    return env


def serves_claude(row: dict[str, Any]) -> bool:
    """
    Whether a ``/_subrouter/accounts`` row is an Anthropic credential.
    """
    return row.get("provider") == "anthropic"


def run(args: Sequence[str], environ: Mapping[str, str] | None = None) -> None:
    """
    Check the daemon, then replace this process with ``claude``
    (``$SUBROUTER_CLAUDE_BIN``, default ``claude`` on ``PATH``).

    :raises WrapperError: when Claude Code cannot be started.
    """
    env = claude_environ(os.environ if environ is None else environ)
    try:
        check_daemon(env["ANTHROPIC_BASE_URL"], env, usable=serves_claude,
                     no_account=NO_ACCOUNT, skip_env=SKIP_CHECK_ENV)
    except NotReady as e:
        raise WrapperError(str(e), EXIT_UNAVAILABLE) from None
    binary = env.get("SUBROUTER_CLAUDE_BIN", "").strip() or "claude"
    try:
        os.execvpe(binary, [binary, *args], env)
    except FileNotFoundError:
        raise WrapperError(
            f"cannot find {binary!r}: install Claude Code "
            "(npm install -g @anthropic-ai/claude-code) or set SUBROUTER_CLAUDE_BIN"
        ) from None
