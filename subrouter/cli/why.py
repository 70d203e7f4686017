# -*- test-case-name: tests.test_why -*-
"""
``cx why [conversation]``: ask the running daemon why a conversation is on
its account, and where a new conversation would go right now.

The daemon is found at ``--url``, else where
:func:`~subrouter.cli.fetch.daemon_origin` says (``$SUBROUTER_URL``, the
origin of ``$SUBROUTER_CODEX_BASE_URL``, ``http://127.0.0.1:31415``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from subrouter.cli.console import Context
from subrouter.cli.dispatch import Command, CommandOptions
from subrouter.cli.entry import CommandFailed

#: how long to wait for the daemon
TIMEOUT = 5.0


class WhyOptions(CommandOptions):
    arguments = "[conversation]"
    summary = ("Why a conversation is on its account (the ranking that chose it and the "
               "runner-up, or the account it moved from and why), and where a new "
               "conversation would go right now. Asks the running daemon; name the "
               "conversation by its id, or as <agent>/<id>.")
    optFlags = [["json", None, "Print the daemon's JSON."]]
    optParameters = [
        ["url", None, None, "The daemon's address (default: $SUBROUTER_URL, or "
         "http://127.0.0.1:31415)."],
    ]


async def get_json(reactor: Any, base: str, path: str, environ: Mapping[str, str]) -> Any:
    """
    GET one of the daemon's ``/_subrouter/...`` endpoints.

    :raises CommandFailed: when the daemon cannot be reached or says no.
    """
    import treq

    from subrouter.cli.fetch import command_http

    http, pool = command_http(reactor, environ)
    try:
        try:
            response = await http.get(base + path, timeout=TIMEOUT)
            body = await treq.content(response)
        except Exception as e:
            raise CommandFailed(
                f"cannot reach the Subrouter daemon at {base} ({type(e).__name__}); is it "
                "running (`subrouter serve`)? Give --url or set SUBROUTER_URL if it listens "
                "elsewhere") from None
        try:
            document = json.loads(body)
        except ValueError:
            raise CommandFailed(f"{base}{path} did not answer JSON (HTTP {response.code})"
                                ) from None
        if response.code != 200:
            error = document.get("error") if isinstance(document, dict) else None
            message = error.get("message") if isinstance(error, dict) else None
            raise CommandFailed(str(message or f"HTTP {response.code} from {base}{path}"))
        return document
    finally:
        await pool.closeCachedConnections()


async def why(ctx: Context, options: Any) -> int:
    """
    ``cx why``.
    """
    from subrouter.cli.fetch import daemon_origin

    if ctx.reactor is None:
        raise CommandFailed("cx why asks the running daemon: run it with a reactor")
    given = (options["url"] or "").strip()
    if given:
        base = _daemon_address(given, "--url")
    else:
        base = _daemon_address(daemon_origin(ctx.environ), "SUBROUTER_URL")
    conversation = options["conversation"]
    session = None
    if conversation:
        session = await get_json(ctx.reactor, base,
                                 "/_subrouter/sessions/" + quote(conversation, safe="/"),
                                 ctx.environ)
    upcoming = await get_json(ctx.reactor, base, "/_subrouter/placement/next", ctx.environ)
    say = ctx.streams.say
    if options["json"]:
        say(json.dumps({"conversation": session, "new_conversation": upcoming}, indent=2)
            + "\n")
        return 0
    if session is not None:
        say(session["text"] + "\n")
        ranking = (session.get("placement") or {}).get("ranking")
        if ranking and ranking.get("concentrating"):
            say("(on purpose: that account already carried more conversations)\n")
        say("\n")
    say(upcoming["text"] + "\n\n")
    say(ranking_table(upcoming["ranking"]))
    return 0


def _daemon_address(text: str, where: str) -> str:
    """
    ``text`` as the daemon's address (``http[s]://host[:port]``, a trailing
    slash dropped).

    :raises CommandFailed: naming ``where`` it came from, when it is not one.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        usable = False
    if not usable:
        raise CommandFailed(f"{where}: {text!r} is not the daemon's address; give one like "
                            "http://127.0.0.1:31415")
    return text.rstrip("/")


def ranking_table(rows: list[dict[str, Any]]) -> str:
    """
    Every account's standing for a new conversation, as an aligned table.
    """
    from subrouter.cli import render

    states = {0: "usable", 1: "low", 2: "api key", 3: "nearly out", 4: "exhausted"}
    out = []
    for number, row in enumerate(rows, 1):
        oauth = row["kind"] == "oauth"
        state = (f"out: {row['unusable']}" if row.get("unusable")
                 else states.get(row["tier"], str(row["tier"])))
        resets = row.get("short_resets_in")
        out.append([
            str(number), row["account"], state,
            f"{row['headroom'] * 100:.0f}%" if oauth else "-",
            f"{row['short_headroom'] * 100:.0f}%" if oauth else "-",
            render.duration(float(resets)) if resets else "-",
            str(row["live"]), str(row["recent"]),
        ])
    return render.table(["#", "account", "state", "headroom", "5h", "resets in", "live",
                         "recent"], out, False)


def forecast_words(forecast: Mapping[str, Any] | None) -> str:
    """
    A few words for a window's forecast (``/_subrouter/accounts`` JSON):
    ``empties in 2h 10m (18.0%/h)``.
    """
    from subrouter.cli import render

    if not forecast:
        return "-"
    reason = forecast.get("reason")
    if reason:
        return str(reason)
    rate = forecast.get("percent_per_hour")
    hours = forecast.get("hours_left")
    if rate is None or hours is None:
        return "not enough data"
    if forecast.get("resets_first"):
        return f"resets first ({rate:.1f}%/h)"
    return f"empties in {render.duration(hours * 3600)} ({rate:.1f}%/h)"


COMMANDS = [
    Command("why", WhyOptions,
            "Why a conversation is on its account; where a new one would go.", run=why),
]
