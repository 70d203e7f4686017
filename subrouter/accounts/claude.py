# -*- test-case-name: tests.test_cx_claude -*-
"""
Claude Code profiles, each its own ``CLAUDE_CONFIG_DIR``: the registry and its folders.

The registry is ``<store>/claude.json`` (``{"active", "profiles": {name:
{"name", "createdAt", "lastUsed"?, "dir"}}}``); a profile's config folder is
``<store>/claude/<dir>``. Switching only changes the registry and prints the
variable to export: Claude's own credential files are never touched here
(the daemon refreshes a profile's tokens in place, see
:mod:`subrouter.accounts.claude_credentials`).
"""

from __future__ import annotations

import os
import re
from typing import Any

from subrouter.accounts import activate as manage
from subrouter.accounts.claude_credentials import config_dir, dir_name

__all__ = ["RESERVED", "config_dir", "dir_name", "find", "load", "save", "valid_name"]
from subrouter.files import atomic_write, dump_json, ensure_private_directory

RESERVED = frozenset(
    {"add", "login", "list", "ls", "switch", "use", "remove", "rm", "env", "status", "run",
     "help"}
)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
INSTANCE_SUBDIRS = ("session-env", "todos", "logs", "file-history", "shell-snapshots", "debug",
                     ".anthropic")


def valid_name(name: str) -> bool:
    if name in RESERVED:
        return False
    if _NAME.match(name):
        return True
    return "@" in name and not name.startswith("@") and not name.endswith("@")


def registry_path(store: str) -> str:
    return os.path.join(store, "claude.json")


def load(store: str) -> dict[str, Any]:
    """
    The registry; a missing or unreadable one reads as empty.
    """
    try:
        document = manage.read_json_object(registry_path(store)) or {}
    except manage.StoreError:
        document = {}
    profiles = document.get("profiles")
    if not isinstance(profiles, dict):
        document["profiles"] = {}
    return document


def save(store: str, registry: dict[str, Any]) -> None:
    ensure_private_directory(store)
    if not registry.get("active"):
        registry.pop("active", None)
    atomic_write(registry_path(store), dump_json(registry))


def find(registry: dict[str, Any], selector: str) -> str:
    profiles = registry["profiles"]
    if selector in profiles:
        return selector
    matches = [str(n) for n in profiles if selector.lower() in str(n).lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise manage.StoreError(f'no Claude profile matching "{selector}"')
    raise manage.StoreError(f'multiple Claude profiles match "{selector}": ' + ", ".join(matches))
