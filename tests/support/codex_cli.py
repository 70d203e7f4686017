"""
Run the real Codex CLI from a test, as a child process on the running
reactor, against a backend on 127.0.0.1.

:func:`codex_binary` finds the CLI (installing the pinned version into a
cache when it is missing; tests fail, never skip, when that is impossible),
:func:`write_codex_home` makes a ``CODEX_HOME`` signed in with ChatGPT and
configured to stay local, quiet and non-interactive, and :func:`run_codex`
runs one command and collects its output. :func:`builtin_provider_args` and
:func:`custom_provider_args` are the ``-c`` overrides that point the CLI at a
backend.

What the CLI (0.169.0) does, found by running it:

- ``codex exec --skip-git-repo-check <config> "prompt"`` runs one turn and
  prints only the final reply on stdout (the transcript goes to stderr);
  ``codex exec --skip-git-repo-check <config> resume --last "prompt"``
  continues the newest session of that ``CODEX_HOME`` with the same
  ``session-id``/``thread-id`` headers.
- The built-in provider signed in with ChatGPT takes its turns and model list
  from ``openai_base_url`` (it appends ``/responses`` and ``/models``) and
  everything else (``/wham/accounts/check``, ``/wham/usage``, plugins, ...)
  from ``chatgpt_base_url``. Before a turn it asks ``/wham/accounts/check``
  for the workspace's backend origin and refuses anything but HTTPS there, so
  this provider needs a TLS backend (trusted with ``CODEX_CA_CERTIFICATE``).
- A custom provider (``model_providers.<name>``) with
  ``requires_openai_auth = true`` sends the same ChatGPT credentials and has
  no HTTPS rule, so it works over plain ``http://``/``ws://``.

Nothing in the written home lets the CLI reach past 127.0.0.1: both base URLs
default to a dead loopback port until a test overrides them, token refresh is
pointed at one too, and analytics, feedback, OpenTelemetry export (which
otherwise goes to ``ab.chatgpt.com``), update checks, the OS keyring and the
plugin/app features are off.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from .npm_tools import CODEX
from .upstream import access_token_for, id_token_for

#: The CLI version these helpers were worked out against.
CODEX_VERSION = CODEX.version
REPO = Path(__file__).resolve().parents[2]
#: Where nothing listens: the default for every URL the CLI could otherwise
#: send to the internet.
DEAD_ORIGIN = "http://127.0.0.1:9"
#: How long a timed-out CLI gets between SIGTERM and SIGKILL.
_KILL_GRACE = 3.0


def codex_binary() -> str:
    """
    The Codex CLI to run: ``$SUBROUTER_CODEX_BIN`` if set, else the pinned
    version in the cache, installed from the npm registry on first use.

    :raises AssertionError: (failing the test) when it cannot be had.
    """
    return CODEX.executable()


def _toml_string(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(value)


def builtin_provider_args(codex_url: str, chatgpt_url: str | None = None) -> list[str]:
    """
    ``-c`` overrides pointing the built-in OpenAI provider (ChatGPT sign-in)
    at a backend. The CLI requires ``https://`` here (see the module
    docstring); run it with ``CODEX_CA_CERTIFICATE`` set to the test CA.

    :param codex_url: the Codex backend base, e.g.
        ``https://127.0.0.1:<port>/backend-api/codex``; the CLI appends
        ``/responses`` (HTTP and WebSocket) and ``/models``.
    :param chatgpt_url: the ChatGPT backend root for the side requests;
        ``codex_url`` without its last segment (``.../backend-api/``) if
        ``None``.
    """
    if chatgpt_url is None:
        chatgpt_url = codex_url.rstrip("/").rsplit("/", 1)[0] + "/"
    return [
        "-c", f"chatgpt_base_url={_toml_string(chatgpt_url)}",
        "-c", f"openai_base_url={_toml_string(codex_url)}",
    ]  # fmt: skip


def custom_provider_args(
    codex_url: str,
    *,
    name: str = "subrouter",
    chatgpt_auth: bool = True,
    env_key: str | None = None,
    websockets: bool = True,
    chatgpt_url: str | None = None,
) -> list[str]:
    """
    ``-c`` overrides selecting a custom Responses provider at ``codex_url``
    (``http://`` is fine).

    :param codex_url: the provider's base URL; the CLI appends ``/responses``.
    :param name: the provider's id in ``model_providers``.
    :param chatgpt_auth: send the ChatGPT sign-in's bearer token and
        ``ChatGPT-Account-ID`` (``requires_openai_auth``).
    :param env_key: instead, send ``Bearer $<env_key>`` (an API key).
    :param websockets: let the CLI try the Responses WebSocket first.
    :param chatgpt_url: the ChatGPT backend root for the side requests;
        ``codex_url`` without its last segment if ``None``.
    """
    if chatgpt_url is None:
        chatgpt_url = codex_url.rstrip("/").rsplit("/", 1)[0] + "/"
    key = f"model_providers.{name}"
    args = [
        "-c", f"chatgpt_base_url={_toml_string(chatgpt_url)}",
        "-c", f"model_provider={_toml_string(name)}",
        "-c", f"{key}.name={_toml_string(name)}",
        "-c", f"{key}.base_url={_toml_string(codex_url)}",
        "-c", f'{key}.wire_api="responses"',
        "-c", f"{key}.supports_websockets={'true' if websockets else 'false'}",
    ]  # fmt: skip
    if env_key is not None:
        args += ["-c", f"{key}.env_key={_toml_string(env_key)}"]
    elif chatgpt_auth:
        args += ["-c", f"{key}.requires_openai_auth=true"]
    return args


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` mode 0600, atomically and durably."""
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


_CONFIG = """\
# Written by tests/support/codex_cli.py: keep the CLI local, quiet and
# non-interactive. Tests point it at their backend with -c overrides.
chatgpt_base_url = {chatgpt_base_url}
openai_base_url = {openai_base_url}
check_for_update_on_startup = false
cli_auth_credentials_store = "file"
mcp_oauth_credentials_store = "file"

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
trace_exporter = "none"
metrics_exporter = "none"

[features]
enable_request_compression = {request_compression}
plugins = false
apps = false
remote_plugin = false
tool_suggest = false
shell_snapshot = false
"""


def write_codex_home(
    codex_home: Path,
    *,
    email: str = "dev@example.com",
    account_id: str = "acct-cli",
    plan: str = "plus",
    request_compression: bool = False,
    extra_config: str = "",
) -> None:
    """
    Make ``codex_home`` a ``CODEX_HOME`` the CLI accepts as signed in with
    ChatGPT (``auth.json`` with fake tokens from
    :func:`tests.support.upstream.access_token_for` and ``id_token_for``,
    valid for 30 days) and a ``config.toml`` that keeps it on 127.0.0.1.

    :param codex_home: the folder; made if missing.
    :param email: the account's email claim.
    :param account_id: the ChatGPT account id (the ``ChatGPT-Account-ID``
        header the CLI sends).
    :param plan: the ChatGPT plan claim.
    :param request_compression: let the CLI zstd-compress its HTTP request
        bodies, as it does by default with ChatGPT sign-in (off here so a
        backend can read them without zstd).
    :param extra_config: TOML appended to ``config.toml`` (top-level keys
        must come before any table, so start it with a table header).
    """
    codex_home.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = time.time()
    auth = {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": None,
        "tokens": {
            "id_token": id_token_for(email, account_id=account_id, plan=plan),
            "access_token": access_token_for(
                email, exp=now + 30 * 86400, account_id=account_id, plan=plan
            ),
            "refresh_token": "rt-codex-cli-test",
            "account_id": account_id,
        },
        # recent, so the CLI sees no reason to refresh
        "last_refresh": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    _write_private(codex_home / "auth.json", json.dumps(auth, indent=2) + "\n")
    config = _CONFIG.format(
        chatgpt_base_url=_toml_string(DEAD_ORIGIN + "/backend-api/"),
        openai_base_url=_toml_string(DEAD_ORIGIN + "/backend-api/codex"),
        request_compression="true" if request_compression else "false",
    )
    if extra_config:
        config += "\n" + extra_config.rstrip("\n") + "\n"
    _write_private(codex_home / "config.toml", config)


def codex_env(codex_home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    The whole environment :func:`run_codex` gives the CLI: ``PATH`` (for
    ``node``) and nothing else from ours (no proxies, no ``RUST_LOG``),
    ``CODEX_HOME``, ``HOME`` next to it, token refresh and revocation pointed
    at a dead loopback port, then ``env`` on top.

    :param codex_home: the ``CODEX_HOME``.
    :param env: more variables, e.g. ``CODEX_CA_CERTIFICATE`` or an API key.
    """
    result = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(codex_home.parent),
        "CODEX_HOME": str(codex_home),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "CODEX_REFRESH_TOKEN_URL_OVERRIDE": DEAD_ORIGIN + "/oauth/token",
        "CODEX_REVOKE_TOKEN_URL_OVERRIDE": DEAD_ORIGIN + "/oauth/revoke",
    }
    result.update(env or {})
    return result


@attrs.frozen
class CodexResult:
    """
    How one CLI run ended.

    :ivar exit_code: the exit status; minus the signal number if a signal
        ended it.
    :ivar stdout: what it printed on stdout (for ``codex exec``, the final
        reply).
    :ivar stderr: what it printed on stderr (the transcript, warnings and
        errors).
    """

    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together, for assertion messages."""
        return f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.ended: Deferred[int] = Deferred()

    def connectionMade(self) -> None:
        # an open stdin makes `codex exec` wait to append it to the prompt
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.stdout += data

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, ProcessDone):
            self.ended.callback(0)
        elif isinstance(value, ProcessTerminated):
            if value.signal is not None:
                self.ended.callback(-value.signal)
            else:
                self.ended.callback(value.exitCode if value.exitCode is not None else -1)
        else:
            self.ended.errback(reason)


async def run_codex(
    args: Sequence[str],
    *,
    codex_home: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    reactor: Any = None,
    executable: str | None = None,
) -> CodexResult:
    """
    Run the CLI with ``args`` and wait for it to exit, without blocking the
    reactor. Its stdin is closed at once.

    :param args: the arguments after the executable, e.g.
        ``["exec", "--skip-git-repo-check", *builtin_provider_args(url), "hi"]``.
    :param codex_home: its ``CODEX_HOME`` (see :func:`write_codex_home`).
    :param cwd: its working directory.
    :param env: variables on top of :func:`codex_env`.
    :param timeout: seconds before it is killed (SIGTERM, then SIGKILL).
    :param reactor: the reactor to spawn on; the global one if ``None``.
    :param executable: what to run instead of the CLI itself (e.g. the
        ``subrouter`` script, with ``args`` starting with ``codex``).
    :raises AssertionError: if it had to be killed, with its output.
    """
    if executable is None:
        executable = codex_binary()
    return await run_collected(
        executable, [executable, *args], env=codex_env(codex_home, env), cwd=cwd,
        timeout=timeout, reactor=reactor, what=f"codex {' '.join(args)}",
    )


async def run_collected(
    executable: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    timeout: float,
    reactor: Any = None,
    what: str,
) -> CodexResult:
    """
    Spawn ``argv`` with its stdin closed at once and its output collected,
    and wait for it to exit without blocking the reactor; past ``timeout``
    seconds it gets SIGTERM, then SIGKILL.

    :param what: the command as the assertion message names it.
    :raises AssertionError: if it had to be killed, with its output.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    collector = _Collect()
    process = reactor.spawnProcess(collector, executable, list(argv), env=dict(env),
                                   path=str(cwd), childFDs={0: "w", 1: "r", 2: "r"})
    timed_out = False

    def signal_it(signum: int) -> None:
        nonlocal timed_out
        timed_out = True
        if not collector.ended.called:
            process.signalProcess(signum)

    terminate = reactor.callLater(timeout, signal_it, signal.SIGTERM)
    kill = reactor.callLater(timeout + _KILL_GRACE, signal_it, signal.SIGKILL)
    try:
        exit_code = await collector.ended
    finally:
        for call in (terminate, kill):
            if call.active():
                call.cancel()
    result = CodexResult(
        exit_code=exit_code,
        stdout=collector.stdout.decode("utf-8", "replace"),
        stderr=collector.stderr.decode("utf-8", "replace"),
    )
    if timed_out:
        raise AssertionError(f"{what} ran over {timeout}s\n{result.output}")
    return result
