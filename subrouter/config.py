# -*- test-case-name: tests.test_options -*-
"""
The daemon's settings in one place: every default URL and duration (shared by
``subrouter serve``, ``twistd subrouter`` and ``cx``), the checked and typed
:class:`Config`, and the parsers of option values (addresses, durations, URLs,
files).

Each parser raises :class:`ValueError` with a message for people; the option
classes turn it into a usage error that names the option.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any
from urllib.parse import urlsplit

import attrs

# -- defaults ------------------------------------------------------------------

DEFAULT_ADDR = "127.0.0.1:31415"
DEFAULT_CODEX_UPSTREAM = "https://chatgpt.com/backend-api/codex"
DEFAULT_OPENAI_UPSTREAM = "https://api.openai.com"
DEFAULT_ACCOUNTS_DIR = "~/.codex-accounts"
DEFAULT_STATE_DIR = "~/.subrouter"
#: the ChatGPT usage endpoint (``wham/usage``)
DEFAULT_USAGE_URL = "https://chatgpt.com/backend-api/wham/usage"
#: the OpenAI OAuth token endpoint, for refreshing ChatGPT logins
DEFAULT_TOKEN_URL = "https://auth.openai.com/oauth/token"
#: the Anthropic OAuth usage endpoint, for Claude profiles
DEFAULT_ANTHROPIC_USAGE_URL = "https://api.anthropic.com/api/oauth/usage"
#: where Claude profiles and Anthropic keys go
DEFAULT_ANTHROPIC_UPSTREAM = "https://api.anthropic.com"
#: the endpoint Claude Code refreshes its OAuth tokens at (public:
#: robinebers/openusage docs/providers/claude.md, "refresh via
#: platform.claude.com/v1/oauth/token")
DEFAULT_ANTHROPIC_TOKEN_URL = "https://platform.claude.com/v1/oauth/token"
#: how long one request may wait out an overloaded upstream on its account
DEFAULT_OVERLOAD_WAIT = "2m"
#: where ``subrouter codex`` points Codex
DEFAULT_CODEX_BASE_URL = "http://127.0.0.1:31415/v1"
DEFAULT_IDLE_TIMEOUT = "5m"
#: how long a client may take to send a request's line and headers
DEFAULT_HEADER_TIMEOUT = "30s"
DEFAULT_SESSION_IDLE_TTL = "30m"
#: sticky assignments unseen this long are forgotten (their prompt cache is long gone)
DEFAULT_SESSION_RETENTION = "30d"
DEFAULT_USAGE_INTERVAL = "10m"
DEFAULT_USAGE_SCORE_TTL = "30s"
DEFAULT_CX_SWITCH_INTERVAL = "10m"
DEFAULT_TRANSCRIPT_MAX_BODY = "16M"
DEFAULT_TRANSCRIPT_SYNC_INTERVAL = "5m"
DEFAULT_TRANSCRIPT_SYNC_TIMEOUT = "30m"
DEFAULT_DRAIN_TIMEOUT = "30s"
#: how often the account directory is checked for changes
ACCOUNT_RESCAN_INTERVAL = 2.0


@attrs.frozen
class Config:
    """
    The daemon's settings, checked and typed.
    """

    endpoint: str
    addr: str
    expose: bool
    accounts_dir: str
    codex_upstream: str
    openai_upstream: str
    token_url: str
    ca_bundles: tuple[str, ...]
    idle_timeout: float
    codex_auth: str
    state_dir: str = ""
    session_idle_ttl: float = 1800.0
    #: seconds after which an unseen sticky assignment is forgotten (0: never)
    session_retention: float = 30 * 86400.0
    usage_url: str = DEFAULT_USAGE_URL
    usage_interval: float = 600.0
    usage_score_ttl: float = 30.0
    fetch_usage: bool = True
    transcripts: str | None = None
    transcript_max_body: int = 16 * 1024 * 1024
    transcript_exclude: tuple[str, ...] = ("/models",)
    transcript_retention: float = 0.0
    transcript_gcs_uri: str | None = None
    transcript_sync_interval: float = 300.0
    transcript_sync_timeout: float = 1800.0
    gsutil: str | None = None
    cx_switch_interval: float = 0.0
    account_rescan_interval: float = ACCOUNT_RESCAN_INTERVAL
    #: names allowed in Host besides loopback and the listening address
    allow_hosts: tuple[str, ...] = ()
    #: the client-tokens file every request must present a token from
    client_tokens: str | None = None
    #: whole UTC days of per-answer token records before hourly rollups
    usage_raw_days: int = 7
    #: how long the hourly token rollups are kept
    usage_retention: float = 90 * 86400.0
    anthropic_upstream: str = DEFAULT_ANTHROPIC_UPSTREAM
    anthropic_token_url: str = DEFAULT_ANTHROPIC_TOKEN_URL
    anthropic_usage_url: str = DEFAULT_ANTHROPIC_USAGE_URL
    overload_wait: float = 120.0
    drain_timeout: float = 30.0
    #: the shared state (None: embedded, under state_dir; else a
    #: subrouter.state.settings.RedisURL) and the key of its token sets
    state_url: Any = None
    state_key: bytes | None = attrs.field(default=None, repr=False)
    workers: int = 1
    #: set in a worker process: its index, the adopted listening fd, its parent
    worker_index: int | None = None
    listen_fd: int | None = None
    worker_parent: int | None = None
    #: the serve options as given, for starting workers
    serve_args: tuple[str, ...] = ()
    header_timeout: float = 30.0


# -- parsers -------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_addr(value: str) -> tuple[str, int]:
    """
    Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6).

    :return: the host (without brackets) and the port.
    """
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{value!r} is not HOST:PORT (write IPv6 as [::1]:31415)")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:31415")
        if ":" in host:
            raise ValueError(f"{value!r}: write an IPv6 address in brackets, e.g. [::1]:31415")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} has no valid port (0-65535)")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """
    Whether ``host`` names this machine's loopback interface only.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: connections the kernel queues for the listener before they are accepted:
#: a thousand agents reconnecting at once (a restart) must not have their
#: connections dropped and retried a second later (Twisted's default is 50)
LISTEN_BACKLOG = 1024


def listen_endpoint(host: str, port: int) -> str:
    """
    The Twisted server endpoint string for a TCP listener on ``host:port``.
    """
    if host == "":
        return f"tcp:{port}:backlog={LISTEN_BACKLOG}"
    if host.lower() == "localhost":
        host = "127.0.0.1"
    return f"tcp:{port}:backlog={LISTEN_BACKLOG}:interface={host.replace(':', chr(92) + ':')}"


def parse_duration(value: str) -> float:
    """
    Parse a duration such as ``30s``, ``5m``, ``1h``, ``250ms`` or a bare
    number of seconds.
    """
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a duration such as 30s, 5m or 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)(i?[bB])?\s*$")


def parse_size(value: str) -> int:
    """
    Parse a byte size such as ``512K``, ``16M``, ``1G`` or a bare number.
    """
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not a size such as 512K or 16M")
    factor = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * factor


def parse_http_url(value: str) -> str:
    """
    Check an ``http://`` or ``https://`` base URL and drop a trailing slash.
    """
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r} must not have a query or fragment")
    try:
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    return value.strip().rstrip("/")


def parse_pem_bundle(value: str) -> str:
    """
    Check that ``value`` names a readable PEM file with at least one
    certificate; return its absolute path.
    """
    path = os.path.abspath(os.path.expanduser(value))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ValueError(f"{path} holds no PEM certificate")
    return path


def expand_path(value: str) -> str:
    return os.path.abspath(os.path.expanduser(value))
