# -*- test-case-name: tests.test_options -*-
"""
Parsing and checking option values: addresses, durations, URLs, files.

Each parser raises :class:`ValueError` with a message for people; the option
classes turn it into a usage error that names the option.
"""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlsplit

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


def listen_endpoint(host: str, port: int) -> str:
    """
    The Twisted server endpoint string for a TCP listener on ``host:port``.
    """
    if host == "":
        return f"tcp:{port}"
    if host.lower() == "localhost":
        host = "127.0.0.1"
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


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
