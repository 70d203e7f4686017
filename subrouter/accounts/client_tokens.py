# -*- test-case-name: tests.test_client_tokens -*-
"""
The client tokens of a shared server (``--client-tokens FILE``): who may use
an exposed Subrouter, and under which name.

The file is text, ``0600``: one token per line as ``NAME TOKEN``; blank lines
and lines starting with ``#`` are ignored. ``cx client-token make NAME`` adds
a line, ``cx client-token revoke NAME`` removes it (atomic rewrites under a
lock); a hand-edited file works the same. The daemon re-reads it when it
changes, so a revoked token stops working within seconds; a file that cannot
be read or parsed makes every token invalid until it is fixed (fail closed).

A presented token is compared with every known one in constant time (SHA-256
digests through :func:`hmac.compare_digest`), so timing tells nothing about
how much of a guess matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Sequence

import attrs
from twisted.logger import Logger

from subrouter.files import atomic_write, ensure_private_directory, locked
from subrouter.redact import fingerprint

_log = Logger()

DEFAULT_FILE = "~/.subrouter/client-tokens"
#: a client name: becomes the request's user when it sends none
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")
_TOKEN = re.compile(r"^[\x21-\x7e]{16,512}$")
#: what :func:`make_token` tokens start with, to tell them apart in a config
PREFIX = "srt_"


class ClientTokensError(ValueError):
    """
    A client-tokens file that cannot be used; the message names the file and
    the line.
    """


@attrs.frozen
class ClientToken:
    name: str
    token: str = attrs.field(repr=False)

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.token.encode()).digest()


def parse(text: str, path: str) -> list[ClientToken]:
    """
    The tokens of a file's text.

    :raises ClientTokensError: for a malformed line, a bad name or token, or
        a name or token given twice.
    """
    found: list[ClientToken] = []
    names: set[str] = set()
    tokens: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split()
        where = f"{path}: line {number}"
        if len(parts) != 2:
            raise ClientTokensError(f"{where}: expected NAME TOKEN")
        name, token = parts
        if not NAME.match(name):
            raise ClientTokensError(
                f"{where}: {name!r} is not a name (letters, digits, . _ @ + -; at most 128)"
            )
        if not _TOKEN.match(token):
            raise ClientTokensError(f"{where}: the token of {name} is shorter than 16 "
                                    "characters or holds spaces or control characters")
        if name in names:
            raise ClientTokensError(f"{where}: {name} is named twice")
        if token in tokens:
            raise ClientTokensError(f"{where}: the token of {name} is also another's")
        names.add(name)
        tokens.add(token)
        found.append(ClientToken(name, token))
    return found


def read(path: str) -> list[ClientToken]:
    """
    The tokens in ``path``. Blocking.

    :raises ClientTokensError: when it cannot be read or parsed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ClientTokensError(f"{path}: no such file (make a token with "
                                "`cx client-token make NAME`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ClientTokensError(f"{path}: cannot be read ({e})") from None
    return parse(text, path)


def match(tokens: Sequence[ClientToken], presented: str) -> str | None:
    """
    The name whose token is ``presented``, or None; constant time in the
    presented value.
    """
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    name = None
    for entry in tokens:
        # every entry is compared, matched or not
        if hmac.compare_digest(entry.digest, digest):
            name = entry.name
    return name


def make_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def _render(tokens: Sequence[ClientToken]) -> bytes:
    lines = ["# Subrouter client tokens: NAME TOKEN (see `cx client-token`)"]
    lines += [f"{t.name} {t.token}" for t in tokens]
    return ("\n".join(lines) + "\n").encode()


def _current(path: str) -> list[ClientToken]:
    if not os.path.exists(path):
        return []
    return read(path)


def add(path: str, name: str) -> str:
    """
    Make a token for ``name`` and write it into ``path`` (created ``0600``).
    Blocking.

    :return: the new token (shown once; the file is the only other copy).
    :raises ClientTokensError: for a bad or taken name, or an unusable file.
    """
    if not NAME.match(name):
        raise ClientTokensError(
            f"{name!r} is not a name (letters, digits, . _ @ + -; at most 128)"
        )
    ensure_private_directory(os.path.dirname(os.path.abspath(path)))
    with locked(path + ".lock"):
        tokens = _current(path)
        if any(t.name == name for t in tokens):
            raise ClientTokensError(f"{name} already has a token; revoke it first")
        token = make_token()
        atomic_write(path, _render([*tokens, ClientToken(name, token)]))
    return token


def revoke(path: str, name: str) -> bool:
    """
    Remove ``name``'s token. Blocking.

    :return: whether there was one.
    """
    with locked(path + ".lock"):
        tokens = _current(path)
        kept = [t for t in tokens if t.name != name]
        if len(kept) == len(tokens):
            return False
        atomic_write(path, _render(kept))
    return True


def listing(path: str) -> list[tuple[str, str]]:
    """
    Each name with its token's fingerprint (never the token). Blocking.
    """
    return [(t.name, fingerprint(t.token)) for t in _current(path)]


class ClientTokenFile:
    """
    The daemon's view of a client-tokens file, re-read when it changes.

    :param path: the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._tokens: list[ClientToken] = []
        self._version: tuple[int, int, int] | None = None
        self.error: str | None = None

    def load(self) -> None:
        """
        Read the file now. Blocking.

        :raises ClientTokensError: when it is unusable (at startup that stops
            the daemon; later, see :meth:`check`).
        """
        version = self._stat()
        self._tokens = read(self.path)
        self._version = version
        self.error = None

    def check(self) -> None:
        """
        Re-read the file if it changed. An unusable file invalidates every
        token until it is fixed. Blocking (a ``stat``, and a read on change).
        """
        version = self._stat()
        if version == self._version:
            return
        self._version = version
        try:
            tokens = read(self.path)
        except ClientTokensError as e:
            self._tokens = []
            if self.error != str(e):
                _log.error("client tokens: {error}; refusing every client until it is fixed",
                           error=str(e))
            self.error = str(e)
            return
        self._tokens = tokens
        if self.error is not None:
            _log.info("client tokens: {path} is usable again", path=self.path)
        self.error = None
        _log.info("client tokens: {count} names in {path}", count=len(tokens), path=self.path)

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def match(self, presented: str) -> str | None:
        """
        The client name of a presented token, or None.
        """
        return match(self._tokens, presented)

    def __len__(self) -> int:
        return len(self._tokens)
