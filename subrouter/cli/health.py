# -*- test-case-name: tests.test_claude_wrapper -*-
"""
Before an agent is started through Subrouter (``subrouter claude``,
``subrouter codex``): is the daemon there, and does it have an account the
agent can use? Asked once, quickly, so a user whose daemon is down hears
that at once instead of watching the agent retry for a minute.

Each wrapper names its own variable that skips the check (for a daemon that
is started later, or one behind something that hides ``/_subrouter``):
``SUBROUTER_CODEX_SKIP_CHECK=1`` for ``subrouter codex``,
``SUBROUTER_CLAUDE_SKIP_CHECK=1`` for ``subrouter claude``. A shared daemon's
client token (``SUBROUTER_TOKEN``) goes with the check's requests.
"""

from __future__ import annotations

import functools
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

#: the whole check stays well under a human's notice
TIMEOUT = 0.3
#: the exit status when Subrouter cannot serve the agent (EX_UNAVAILABLE)
EXIT_UNAVAILABLE = 69


class NotReady(Exception):
    """
    The daemon cannot serve the agent; the message says what to do.
    """


def daemon_root(base_url: str) -> str:
    """
    ``scheme://host:port`` of an agent's base URL (``.../v1`` or bare).
    """
    parts = urllib.parse.urlsplit(base_url)
    return f"{parts.scheme}://{parts.netloc}"


#: the client token of a shared Subrouter (``--client-tokens``)
TOKEN_ENV = "SUBROUTER_TOKEN"


def _get_json(url: str, timeout: float, token: str = "") -> tuple[int, Any]:
    # never through an HTTP proxy from the environment: the daemon is local
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url)
    if token:
        request.add_header("X-Subrouter-Token", token)
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
            raw = response.read(1 << 20)
    except urllib.error.HTTPError as e:
        return e.code, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def check_daemon(
    base_url: str,
    environ: Mapping[str, str],
    *,
    usable: Callable[[dict[str, Any]], bool],
    no_account: str,
    skip_env: str,
    get_json: Callable[[str, float], tuple[int, Any]] = _get_json,
    timeout: float = TIMEOUT,
) -> None:
    """
    Check that Subrouter answers at ``base_url`` and lists an account the
    agent can use.

    :param usable: whether a row of ``/_subrouter/accounts`` serves the agent.
    :param no_account: the message when none does.
    :param skip_env: the variable that skips the check when set (not ``0``).
    :raises NotReady: saying what to do.
    """
    if environ.get(skip_env, "").strip() not in ("", "0"):
        return
    token = environ.get(TOKEN_ENV, "").strip()
    if get_json is _get_json and token:
        get_json = functools.partial(_get_json, token=token)
    root = daemon_root(base_url)
    try:
        status, _ = get_json(root + "/_subrouter/health", timeout)
    except (OSError, ValueError):
        raise NotReady(
            f"Subrouter is not running on {urllib.parse.urlsplit(root).netloc} ({root}): "
            "start it with `subrouter serve` (in another terminal) or `subrouter "
            f"install-daemon` (or set {skip_env}=1 to skip this check)"
        ) from None
    if status != 200:
        raise NotReady(
            f"{root}/_subrouter/health answered HTTP {status}: is that Subrouter? "
            f"(set {skip_env}=1 to skip this check)"
        )
    try:
        status, listing = get_json(root + "/_subrouter/accounts", timeout)
    except (OSError, ValueError):
        return  # the daemon is there; the agent will hear the details
    if status != 200 or not isinstance(listing, dict):
        return  # e.g. an admin token is needed: not ours to judge
    rows = listing.get("accounts")
    if not isinstance(rows, list):
        return
    if not any(isinstance(row, dict) and row.get("usable") and usable(row) for row in rows):
        raise NotReady(no_account)
