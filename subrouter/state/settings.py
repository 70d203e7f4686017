# -*- test-case-name: tests.test_state_redis -*-
"""
Parsing ``--state redis://[:password@]host:port/db`` and reading the
``--state-key-file`` that encrypts token sets kept in Redis.

Both raise :class:`ValueError` with a message for people; a password never
appears in one.
"""

from __future__ import annotations

import base64
import os
from urllib.parse import unquote, urlsplit

import attrs

DEFAULT_REDIS_PORT = 6379


@attrs.frozen
class RedisURL:
    """
    Where the shared state lives. The password is kept out of ``repr``.
    """

    host: str
    port: int
    db: int
    password: str | None = attrs.field(default=None, repr=False)

    def display(self) -> str:
        """
        The URL as it may be logged: never the password.
        """
        auth = ":***@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/{self.db}"


#: where the Redis password may come from instead of the URL, which every
#: local user can read in the process list
PASSWORD_ENV = "SUBROUTER_REDIS_PASSWORD"


def parse_state(value: str, environ: dict[str, str] | None = None) -> RedisURL | None:
    """
    Parse a ``--state`` value: ``embedded`` (None) or a Redis URL. Without a
    password in the URL, ``$SUBROUTER_REDIS_PASSWORD`` is used when set.
    """
    text = value.strip()
    if text in ("", "embedded", "local"):
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("is not a URL like redis://[:password@]host:port/db") from None
    if parts.scheme != "redis":
        raise ValueError(
            "must be 'embedded' or redis://[:password@]host:port/db (rediss:// is not supported)"
        )
    if not parts.hostname:
        raise ValueError("names no host: redis://[:password@]host:port/db")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database must be a number, not {path!r}")
    if parts.query or parts.fragment:
        raise ValueError("takes no query or fragment")
    password = unquote(parts.password) if parts.password else None
    if parts.username and not password:
        # redis://secret@host is a common slip for redis://:secret@host
        password = unquote(parts.username)
    if password is None:
        password = (os.environ if environ is None else environ).get(PASSWORD_ENV) or None
    return RedisURL(parts.hostname, port or DEFAULT_REDIS_PORT, int(path or 0), password)


def read_key_file(path: str) -> bytes:
    """
    Read a Fernet key (32 random bytes, URL-safe base64) from ``path``.
    Blocking; for start-up.

    :raises ValueError: when it cannot be read, is not a key, or others can read it.
    """
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if st.st_mode & 0o077:
        raise ValueError(f"{path} is readable by others: chmod 600 {path}")
    key = raw.strip()
    try:
        decoded = base64.urlsafe_b64decode(key)
    except ValueError:
        decoded = b""
    if len(decoded) != 32:
        raise ValueError(
            f"{path} does not hold a key (32 bytes, URL-safe base64); make one with "
            "(umask 077; openssl rand -base64 32 | tr '+/' '-_' > FILE)"
        )
    return key
