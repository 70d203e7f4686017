"""
Run the real Claude Code CLI from a test through ``subrouter claude``, kept on
loopback.

:func:`claude_binary` finds (or installs, see :mod:`tests.support.npm_tools`)
the pinned CLI; :func:`write_claude_home` makes a ``CLAUDE_CONFIG_DIR``
signed in with a Claude subscription (far-future token, so the CLI never
refreshes against its built-in token endpoint); :func:`run_claude` runs one
command in a network namespace with only loopback (``unshare -n``) whose one
way out is a Unix socket to the test's daemon (see
:mod:`tests.support.loopback_forwarder`), so the CLI's own calls to its
built-in hosts (profile, feature flags, telemetry) cannot leave the machine
whatever it decides to send.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .codex_cli import CodexResult, run_collected
from .npm_tools import NpmTool

#: the CLI version these helpers were worked out against
CLAUDE_VERSION = "2.1.332"
CLAUDE = NpmTool(name="claude-code", package="@anthropic-ai/claude-code",
                 version=CLAUDE_VERSION, bin="claude", env_var="SUBROUTER_CLAUDE_TEST_BIN")
REPO = Path(__file__).resolve().parents[2]

ClaudeResult = CodexResult


def claude_binary() -> str:
    """
    ``$SUBROUTER_CLAUDE_TEST_BIN`` if set, else the pinned CLI from the cache,
    installed there on first use.
    """
    return CLAUDE.executable()


def netns_problem() -> str | None:
    """
    Why a network namespace with only loopback cannot be made here, or None.
    """
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    done = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"`unshare -n` fails here ({done.stderr.strip()}); it needs root or user namespaces"
    return None


def write_claude_home(config_dir: Path, *, access_token: str, email: str) -> Path:
    """
    A ``CLAUDE_CONFIG_DIR`` signed in with a subscription: ``.credentials.json``
    (``claudeAiOauth``, far-future expiry) and ``.claude.json`` with onboarding
    done and the account entry the CLI would otherwise fetch from its own host.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    now_ms = int(time.time() * 1000)
    credentials = {"claudeAiOauth": {
        "accessToken": access_token,
        "refreshToken": "sk-ant-ort01-clients-own-refresh",
        "expiresAt": now_ms + 365 * 86400 * 1000,
        "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max",
        "rateLimitTier": "default_claude_max_5x",
    }}
    path = config_dir / ".credentials.json"
    path.write_text(json.dumps(credentials))
    path.chmod(0o600)
    account_uuid, org_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    state = {
        "hasCompletedOnboarding": True,
        "lastOnboardingVersion": CLAUDE_VERSION,
        "numStartups": 5,
        "firstStartTime": "2026-01-01T00:00:00.000Z",
        "userID": uuid.uuid4().hex,
        "bypassPermissionsModeAccepted": True,
        "oauthAccount": {
            "accountUuid": account_uuid,
            "emailAddress": email,
            "organizationUuid": org_uuid,
            "organizationName": f"{email}'s Organization",
            "organizationRole": "admin",
            "workspaceRole": None,
            "displayName": "Test",
            "hasExtraUsageEnabled": False,
            "billingType": "stripe_subscription",
            "accountCreatedAt": "2025-01-01T00:00:00.000000Z",
            "subscriptionCreatedAt": "2025-01-01T00:00:00.000000Z",
            "ccOnboardingFlags": {},
            "profileFetchedAt": now_ms,
        },
    }
    (config_dir / ".claude.json").write_text(json.dumps(state))
    return config_dir


def claude_env(config_dir: Path, home: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CLAUDE_CONFIG_DIR": str(config_dir),
        # nothing but the model turn (claude-code.md); the namespace makes sure
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "TERM": "dumb",
        "NO_COLOR": "1",
    }
    env.update(extra or {})
    return env


async def run_claude(
    args: Sequence[str],
    *,
    unix_socket: str,
    port: int,
    config_dir: Path,
    home: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 90,
    reactor: Any = None,
) -> ClaudeResult:
    """
    Run ``subrouter claude <args>`` in a loopback-only network namespace where
    ``127.0.0.1:<port>`` leads to ``unix_socket``; wait without blocking the
    reactor. Its stdin is closed at once.
    """
    subrouter = os.path.join(os.path.dirname(sys.executable), "subrouter")
    argv = ["unshare", "-n", sys.executable, "-m", "tests.support.loopback_forwarder",
            str(port), unix_socket, "--", subrouter, "claude", *args]
    full_env = claude_env(config_dir, home, env)
    full_env["PYTHONPATH"] = str(REPO)
    unshare = shutil.which("unshare") or "unshare"
    return await run_collected(unshare, argv, env=full_env, cwd=cwd, timeout=timeout,
                               reactor=reactor, what=f"claude {' '.join(args)}")
