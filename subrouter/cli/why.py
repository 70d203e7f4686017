# -*- test-case-name: tests.test_why -*-
"""
``cx why [conversation]``: ask the running daemon why a conversation is on
its account, and where a new conversation would go right now; and the
daemon's forecasts for ``cx status``.

The daemon is found at ``--url``, else ``$SUBROUTER_URL``, else the address
``$SUBROUTER_CODEX_BASE_URL`` points at, else ``http://127.0.0.1:31415``. A
plain blocking request on loopback: the command has nothing else to do while
it waits.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import quote

from twisted.python import usage

from subrouter.config import DEFAULT_CODEX_BASE_URL

DEFAULT_URL = DEFAULT_CODEX_BASE_URL.removesuffix("/v1")
TIMEOUT = 5.0
#: cx status does not wait long for a daemon that may not be running
STATUS_TIMEOUT = 1.0


class DaemonError(Exception):
    """
    The daemon could not answer; the message says why and what to do.
    """


class WhyOptions(usage.Options):
    synopsis = "[<conversation> | <agent>/<conversation>] [--json] [--url URL]"
    longdesc = (
        "Why a conversation is on its account (the ranking that chose it, the "
        "runner-up, or the account it moved from and why), and where a new "
        "conversation would go right now. Asks the running daemon."
    )
    optFlags = [["json", None, "Print the daemon's JSON."]]
    optParameters = [
        ["url", None, None, "The daemon's address (default: $SUBROUTER_URL or "
         f"{DEFAULT_URL})."],
    ]

    def parseArgs(self, conversation: str | None = None) -> None:
        self["conversation"] = conversation


def daemon_url(environ: Mapping[str, str], given: str | None = None) -> str:
    """
    Where the daemon listens.
    """
    for value in (given, environ.get("SUBROUTER_URL")):
        if value and value.strip():
            return value.strip().rstrip("/")
    base = environ.get("SUBROUTER_CODEX_BASE_URL", "").strip()
    if base:
        return base.rstrip("/").removesuffix("/v1")
    return DEFAULT_URL


def get_json(base: str, path: str, timeout: float = TIMEOUT) -> Any:
    """
    GET a ``/_subrouter/...`` endpoint.

    :raises DaemonError: when the daemon cannot be reached or answers an error.
    """
    url = base + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {e.code}"
        raise DaemonError(message) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DaemonError(
            f"cannot reach the Subrouter daemon at {base} ({reason}); is it running "
            "(`subrouter serve`)? Set --url or SUBROUTER_URL if it listens elsewhere"
        ) from None


def run(options: usage.Options, stdout: IO[str], environ: Mapping[str, str]) -> int:
    """
    ``cx why``. Raises :class:`DaemonError` for the caller to print.
    """
    base = daemon_url(environ, options["url"])
    conversation = options["conversation"]
    session = None
    if conversation:
        session = get_json(base, "/_subrouter/sessions/" + quote(conversation, safe="/"))
    placement = get_json(base, "/_subrouter/placement/next")
    if options["json"]:
        stdout.write(json.dumps({"conversation": session, "new_conversation": placement},
                                indent=2) + "\n")
        return 0
    if session is not None:
        stdout.write(session["text"] + "\n")
        ranking = (session.get("placement") or {}).get("ranking")
        if ranking and ranking.get("concentrating"):
            stdout.write("(the policy put it there on purpose although that account "
                         "already carried more conversations)\n")
        stdout.write("\n")
    stdout.write(placement["text"] + "\n\n")
    stdout.write(ranking_table(placement["ranking"]))
    return 0


def ranking_table(rows: list[dict[str, Any]]) -> str:
    """
    Every account's standing for a new conversation, as an aligned table.
    """
    header = ("#", "ACCOUNT", "STATE", "HEADROOM", "5H", "RESETS IN", "LIVE", "RECENT")
    lines = [header]
    for number, row in enumerate(rows, 1):
        oauth = row["kind"] == "oauth"
        if row.get("unusable"):
            state = f"out: {row['unusable']}"
        else:
            state = {0: "usable", 1: "low", 2: "api key", 3: "nearly out", 4: "exhausted"}.get(
                row["tier"], str(row["tier"]))
        resets = row.get("short_resets_in")
        lines.append((
            str(number), row["account"], state,
            f"{row['headroom'] * 100:.0f}%" if oauth else "-",
            f"{row['short_headroom'] * 100:.0f}%" if oauth else "-",
            _duration(resets) if resets else "-",
            str(row["live"]), str(row["recent"]),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        + "\n"
        for line in lines
    )


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    hours, minutes = divmod(minutes, 60)
    if hours >= 24:
        return f"{hours // 24}d {hours % 24}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def daemon_forecasts(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """
    ``{account: {window name: forecast}}`` from the running daemon, or an
    empty mapping when no daemon answers quickly (``cx status`` then shows
    no forecast: forecasts need the daemon's history of observations).
    """
    try:
        listing = get_json(daemon_url(environ), "/_subrouter/accounts", STATUS_TIMEOUT)
    except DaemonError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for row in listing.get("accounts", []) if isinstance(listing, dict) else []:
        windows = {
            w["name"]: w["forecast"] for w in row.get("windows") or []
            if isinstance(w, dict) and w.get("forecast")
        }
        if windows:
            out[str(row.get("id"))] = windows
    return out


def forecast_words(forecast: Mapping[str, Any]) -> str:
    """
    A few words for a forecast's JSON: ``empties in 2h 10m (18.0%/h)``.
    """
    reason = forecast.get("reason")
    if reason:
        return str(reason)
    rate = forecast.get("percent_per_hour")
    hours = forecast.get("hours_left")
    if rate is None or hours is None:
        return "not enough data"
    if forecast.get("resets_first"):
        return f"resets before it runs out ({rate:.1f}%/h)"
    return f"empties in {_duration(hours * 3600)} ({rate:.1f}%/h)"
