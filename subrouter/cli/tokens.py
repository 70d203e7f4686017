# -*- test-case-name: tests.test_client_tokens -*-
"""
``cx client-token``: make, list and revoke the client tokens of a shared
Subrouter (``serve --expose --client-tokens FILE``).

The file defaults to ``<state-dir>/client-tokens``; a running daemon picks up
every change within seconds. A new token is shown once: the file is the only
other copy.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.python import usage

from subrouter.accounts import client_tokens
from subrouter.config import expand_path

SubCommand = tuple[str, None, type[usage.Options], str]


class _FileOption(usage.Options):
    optParameters = [
        ["file", None, None, "The client-tokens file (default <state-dir>/client-tokens)."],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        # options may follow the name (`make alice --json`), as people type them
        args = list(options or [])
        front: list[str] = []
        rest: list[str] = []
        while args:
            arg = args.pop(0)
            if arg == "--":
                rest += args
                break
            if arg.startswith("-"):
                front.append(arg)
                if arg == "--file" and args:
                    front.append(args.pop(0))
            else:
                rest.append(arg)
        super().parseOptions(front + rest)


class _Make(_FileOption):
    synopsis = "NAME [--file FILE] [--json]"
    optFlags = [["json", None, "Print JSON for scripts."]]

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class _Revoke(_FileOption):
    synopsis = "NAME [--file FILE]"

    def parseArgs(self, name: str) -> None:  # type: ignore[override]
        self["name"] = name


class _List(_FileOption):
    synopsis = "[--file FILE] [--json]"
    optFlags = [["json", None, "Print JSON for scripts."]]


class ClientTokenOptions(usage.Options):
    """
    ``cx client-token``.
    """

    synopsis = "make NAME | list | revoke NAME"
    longdesc = (
        "Client tokens let people use a Subrouter served with --expose: each request "
        "carries one (X-Subrouter-Token, or SUBROUTER_TOKEN for `subrouter codex`), and its "
        "name becomes the request's user."
    )
    subCommands: list[SubCommand] = [
        ("make", None, _Make, "Make a token for NAME and print it once (alias: add)."),
        ("add", None, _Make, "Same as make."),
        ("list", None, _List, "List the names, with token fingerprints (alias: ls)."),
        ("ls", None, _List, "Same as list."),
        ("revoke", None, _Revoke, "Revoke NAME's token (alias: rm)."),
        ("rm", None, _Revoke, "Same as revoke."),
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a command: make NAME, list or revoke NAME")


def run(state_dir: str, options: ClientTokenOptions, streams: Any) -> int:
    """
    Run ``cx client-token ...``; return the exit status.
    """
    sub = options.subOptions
    path = expand_path(sub["file"]) if sub["file"] else os.path.join(state_dir, "client-tokens")
    out, err = streams.stdout, streams.stderr
    try:
        if options.subCommand in ("make", "add"):
            token = client_tokens.add(path, sub["name"])
            if sub["json"]:
                out.write(json.dumps({"name": sub["name"], "token": token, "file": path}) + "\n")
                return 0
            out.write(f"Made a client token for {sub['name']} (kept in {path}); it is shown "
                      "only now:\n")
            out.write(token + "\n")
            err.write(f"Use it with SUBROUTER_TOKEN=<token> subrouter codex, or the header "
                      f"X-Subrouter-Token. Revoke it with `cx client-token revoke "
                      f"{sub['name']}`.\n")
            return 0
        if options.subCommand in ("revoke", "rm"):
            if not client_tokens.revoke(path, sub["name"]):
                err.write(f"cx: {sub['name']} has no client token in {path}\n")
                return 1
            out.write(f"Revoked the client token of {sub['name']}.\n")
            return 0
        rows = client_tokens.listing(path)
        if sub["json"]:
            out.write(json.dumps([{"name": n, "fingerprint": f} for n, f in rows]) + "\n")
            return 0
        if not rows:
            out.write(f"No client tokens in {path}; make one with `cx client-token make NAME`.\n")
            return 0
        width = max(len("NAME"), *(len(n) for n, _ in rows))
        out.write(f"{'NAME':<{width}}  FINGERPRINT\n")
        for name, print_ in rows:
            out.write(f"{name:<{width}}  {print_}\n")
        return 0
    except client_tokens.ClientTokensError as e:
        err.write(f"cx: {e}\n")
        return 1
    except OSError as e:
        err.write(f"cx: {path}: {e.strerror or e}\n")
        return 1
