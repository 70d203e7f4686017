# -*- test-case-name: tests.test_cx -*-
"""
The account views: ``cx list`` (no usage fetch), ``cx status`` and ``cx``
alone (the ranked view with a prompt to switch).

All three show one aligned table from one source of truth (see
:mod:`subrouter.cli.fetch`), ranked best first with the daemon's own
scheduler, marking the login Codex uses now (``active``) and the account the
daemon would give the next new conversation (``next``). ``--json`` prints
the same rows, always as JSON, with usage in percent and the same window
names as the table.
"""

from __future__ import annotations

import json
import time
from typing import Any

from subrouter.accounts import activate as manage
from subrouter.accounts.refresh import codex_auth_path
from subrouter.cli import render
from subrouter.cli.console import Context, prompt
from subrouter.cli.dispatch import Command, CommandOptions
from subrouter.cli.entry import CommandFailed
from subrouter.config import DEFAULT_TOKEN_URL, DEFAULT_USAGE_URL
from subrouter.sessions.scheduler import (
    API_KEY,
    EXHAUSTED,
    SHORT_WINDOW_MAX_SECONDS,
    UNKNOWN,
    UNKNOWN_RISKY,
    Candidate,
    Score,
    Window,
    rank,
    score_windows,
)


class ListOptions(CommandOptions):
    summary = ("The stored accounts, best first, with the active login and the next "
               "conversation's account; no usage is fetched.")
    optFlags = [["json", None, "Print JSON (always JSON, even with no accounts)."]]


class StatusOptions(CommandOptions):
    summary = ("Every account ranked best first: plan, 5-hour and weekly usage, resets, "
               "headroom and state; API keys with their spend. Usage comes from the running "
               "daemon when it serves this store, else it is fetched here.")
    optFlags = [["json", None, "Print JSON (always JSON, even with no accounts)."]]
    optParameters = [
        ["usage-url", None, DEFAULT_USAGE_URL, "The ChatGPT usage endpoint."],
        ["token-url", None, DEFAULT_TOKEN_URL, "The OAuth token endpoint (for expired logins)."],
        ["ca-bundle", None, None, "Extra PEM trust roots for the fetches."],
    ]


class InteractiveOptions(StatusOptions):
    summary = "The accounts ranked, numbered, and a prompt to switch to one."
    optFlags = [["force", None, "Allow picking an account that reached its usage limit."]]


def _urls(ctx: Context, options: Any) -> tuple[str, str]:
    """
    The usage and token URLs: the options, or ``SUBROUTER_USAGE_URL`` /
    ``SUBROUTER_TOKEN_URL`` where the options were left at their defaults.
    """
    usage_url, token_url = options["usage-url"], options["token-url"]
    if usage_url == DEFAULT_USAGE_URL:
        usage_url = ctx.environ.get("SUBROUTER_USAGE_URL") or usage_url
    if token_url == DEFAULT_TOKEN_URL:
        token_url = ctx.environ.get("SUBROUTER_TOKEN_URL") or token_url
    return usage_url, token_url


def window_name(window: dict[str, Any]) -> str:
    """
    ``5h``, ``weekly``, or the window's own name: the same in the table and
    in JSON.
    """
    minutes = window.get("window_minutes") or 0
    if 0 < minutes * 60 <= SHORT_WINDOW_MAX_SECONDS:
        return f"{round(minutes / 60)}h" if minutes >= 60 else f"{minutes}m"
    if minutes >= 6 * 24 * 60:
        return "weekly"
    return {"primary": "5h", "secondary": "weekly"}.get(str(window.get("name")),
                                                       str(window.get("name")))


def _score(row: dict[str, Any], now: float) -> Score:
    """
    The scheduler's score of a row, as the daemon computes it.
    """
    if row.get("exhausted_until") and float(row["exhausted_until"]) > now:
        return EXHAUSTED
    if row["kind"] != "oauth":
        return API_KEY
    windows = row.get("windows") or []
    if not windows:
        return UNKNOWN_RISKY if row.get("usage_error") else UNKNOWN
    return score_windows(
        Window(str(w.get("name")), float(w.get("used_percent") or 0),
               int((w.get("window_minutes") or 0) * 60), float(w.get("resets_in") or 0))
        for w in windows
    )


def ranked(rows: list[dict[str, Any]], now: float) -> tuple[list[dict[str, Any]], str | None]:
    """
    The rows best first (usable ones first, then by the daemon's scheduler),
    and the id of the account a new conversation would get.
    """
    by_id = {str(r["id"]): r for r in rows}
    candidates = rank(Candidate(str(r["id"]), r["kind"] == "oauth", _score(r, now),
                                int(r.get("live_sessions") or 0)) for r in rows)
    usable = [c for c in candidates if by_id[c.id].get("usable", True)]
    order = usable + [c for c in candidates if c not in usable]
    chosen = next((c for c in usable if not (c.oauth and c.score.exhausted)), None)
    scores = {c.id: c.score for c in candidates}
    for r in rows:
        r["_score"] = scores[str(r["id"])]
    return [by_id[c.id] for c in order], chosen.id if chosen else None


def _spend(ctx: Context, row: dict[str, Any]) -> dict[str, Any] | None:
    from subrouter.cli.spend import cached_spend

    try:
        return cached_spend(ctx.store, str(row["id"]))
    except manage.StoreError:
        return None


def json_rows(ctx: Context, rows: list[dict[str, Any]], active: str | None,
              next_id: str | None) -> list[dict[str, Any]]:
    out = []
    for number, r in enumerate(rows, 1):
        score: Score = r["_score"]
        item: dict[str, Any] = {
            "rank": number,
            "id": r["id"],
            "kind": r["kind"],
            "provider": r.get("provider", "openai"),
            "plan": r.get("plan"),
            "active": r["id"] == active,
            "next": r["id"] == next_id,
            "usable": bool(r.get("usable", True)),
            "why_not": r.get("why_not"),
            "windows": [
                {"name": window_name(w), "used_percent": w.get("used_percent"),
                 "window_minutes": w.get("window_minutes"),
                 "resets_in_seconds": w.get("resets_in"),
                 # the daemon's forecast (None when it was not asked)
                 "forecast": w.get("forecast")}
                for w in r.get("windows") or []
            ],
            "headroom_percent": (round(score.headroom * 100, 1)
                                 if r["kind"] == "oauth" and r.get("windows") else None),
            "exhausted_until": r.get("exhausted_until"),
            "exhausted_reason": r.get("exhausted_reason"),
            "usage_error": r.get("usage_error"),
        }
        if r["kind"] != "oauth":
            item["billing"] = "pay per token"
            item["spend"] = _spend(ctx, r)
        out.append(item)
    return out


def _state(r: dict[str, Any], active: str | None, next_id: str | None, now: float,
           colour: bool) -> str:
    words = []
    if r["id"] == active:
        words.append(render.paint("active", render.BOLD, colour))
    if r["id"] == next_id:
        words.append(render.paint("next", render.GREEN, colour))
    score: Score = r["_score"]
    if not r.get("usable", True):
        words.append(render.paint(f"unusable: {r.get('why_not')}", render.RED, colour))
    elif r.get("exhausted_until") and float(r["exhausted_until"]) > now:
        left = render.duration(float(r["exhausted_until"]) - now)
        words.append(render.paint(f"exhausted, resets in {left}", render.RED, colour))
    elif r["kind"] == "oauth" and score.exhausted and r.get("windows"):
        words.append(render.paint("exhausted", render.RED, colour))
    elif r["kind"] == "oauth" and r.get("windows") and not score.usable:
        words.append(render.paint("low, no new conversations", render.YELLOW, colour))
    elif r["kind"] == "oauth" and not r.get("windows") and r.get("usage_error"):
        words.append(render.paint(f"usage unknown: {r['usage_error']}", render.YELLOW, colour))
    return ", ".join(words)


def _usage_cell(window: dict[str, Any] | None, colour: bool) -> str:
    if window is None:
        return "-"
    used = float(window.get("used_percent") or 0)
    return f"{render.bar(used, 10, colour)} {used:3.0f}%"


def table(ctx: Context, rows: list[dict[str, Any]], active: str | None, next_id: str | None,
          colour: bool, numbered: bool = False) -> str:
    now = time.time()
    out = []
    for number, r in enumerate(rows, 1):
        windows = {window_name(w): w for w in r.get("windows") or []}
        short, weekly = windows.get("5h"), windows.get("weekly")
        resets = " · ".join(
            f"{label} {render.duration(float(w['resets_in']))}"
            for label, w in (("5h", short), ("wk", weekly)) if w and w.get("resets_in")
        )
        score: Score = r["_score"]
        if r["kind"] == "oauth":
            name = str(r["id"])
            kind = "claude login" if r.get("provider") == "anthropic" else "login"
            headroom = render.percent(score.headroom) if r.get("windows") else "-"
            five, week = _usage_cell(short, colour), _usage_cell(weekly, colour)
        else:
            name = str(r["id"]).removeprefix("apikey:")
            kind = "anthropic key" if r.get("provider") == "anthropic" else "api key"
            spend = _spend(ctx, r)
            headroom = "pay per token"
            if spend:
                from subrouter.accounts.spend import usd

                headroom = (f"today {usd(spend.get('todayUsd') or 0)}, "
                            f"7d {usd(spend.get('weekUsd') or 0)}")
            five = week = "-"
        cells = [name, kind, str(r.get("plan") or "-"), five, week, resets or "-", headroom,
                 _state(r, active, next_id, now, colour)]
        out.append([f"{number})", *cells] if numbered else cells)
    headers = ["account", "kind", "plan", "5h", "weekly", "resets", "headroom", "state"]
    if numbered:
        headers = ["#", *headers]
    return render.table(headers, out, colour)


def forecasts(rows: list[dict[str, Any]]) -> str:
    """
    The daemon's forecast for each login's windows, one line each, for the
    windows it can say something about.
    """
    from subrouter.cli.why import forecast_words

    lines = []
    for r in rows:
        for w in r.get("windows") or []:
            forecast = w.get("forecast")
            if forecast and forecast.get("reason") != "not in use":
                lines.append(f"  {r['id']} {window_name(w)}: {forecast_words(forecast)}\n")
    return "Forecast at the recent burn rate:\n" + "".join(lines) if lines else ""


def _legend(listing_source: str) -> str:
    where = ("the running daemon" if listing_source == "daemon"
             else "this store and the daemon's saved state (the daemon is not running)")
    return (f"active: the login Codex uses now; next: where the daemon puts the next new "
            f"conversation. From {where}.\n")


async def _gather(ctx: Context, options: Any, fetch: bool) -> tuple[Any, list[dict[str, Any]],
                                                                    str | None, str | None]:
    from subrouter.cli.fetch import account_listing

    streams = ctx.streams
    environ = dict(ctx.environ)
    if options.get("ca-bundle"):
        environ["SUBROUTER_CA_BUNDLE"] = options["ca-bundle"]
    usage_url, token_url = (_urls(ctx, options) if fetch else (DEFAULT_USAGE_URL,
                                                                DEFAULT_TOKEN_URL))
    isatty = getattr(streams.stderr, "isatty", None)
    progress = fetch and bool(isatty and isatty())
    if progress:
        streams.warn("Fetching usage...")
        streams.stderr.flush()
    try:
        listing = await account_listing(ctx.reactor, ctx.store, ctx.state_dir, environ,
                                        usage_url, token_url, fetch=fetch)
    finally:
        if progress:
            streams.warn("\r\x1b[K")  # the progress line is gone once it is done
    accounts, _ = manage.load_all(ctx.store)
    active = manage.active_account_id(codex_auth_path(environ), accounts)
    rows, next_id = ranked(listing.rows, time.time())
    return listing, rows, active, next_id


def _skipped(ctx: Context) -> None:
    _, skipped = manage.load_all(ctx.store)
    for path, error in sorted(skipped.items()):
        ctx.streams.warn(f"cx: skipped {path}: {error}\n")


async def show(ctx: Context, options: Any, *, fetch: bool = True) -> int:
    """
    ``cx status`` (and ``cx list`` without the fetch).
    """
    streams = ctx.streams
    accounts, _ = manage.load_all(ctx.store)
    if not accounts:
        if options["json"]:
            streams.say("[]\n")
        else:
            streams.say("No accounts yet. Add one with `cx add` (a ChatGPT login) or "
                        "`cx add-key` (an OpenAI API key).\n")
        _skipped(ctx)
        return 0
    listing, rows, active, next_id = await _gather(ctx, options, fetch)
    if options["json"]:
        streams.say(json.dumps(json_rows(ctx, rows, active, next_id), indent=2) + "\n")
    else:
        colour = render.colour_wanted(streams.stdout, ctx.environ)
        streams.say(table(ctx, rows, active, next_id, colour))
        ahead = forecasts(rows) if listing.source == "daemon" else ""
        streams.say(("\n" + ahead if ahead else "") + "\n" + _legend(listing.source))
    _skipped(ctx)
    if listing.fetched and listing.failed == listing.fetched:
        first = next((r.get("usage_error") for r in rows if r.get("usage_error")), "unknown")
        raise CommandFailed(
            f"could not fetch usage for any login ({first}) from {_urls(ctx, options)[0]}; "
            "check the network and the URL (--usage-url), and for a TLS-intercepting proxy "
            "give its CA with --ca-bundle or SUBROUTER_CA_BUNDLE")
    return 0


async def list_accounts(ctx: Context, options: Any) -> int:
    return await show(ctx, options, fetch=False)


async def status(ctx: Context, options: Any) -> int:
    return await show(ctx, options, fetch=True)


async def interactive(ctx: Context, options: Any) -> int:
    """
    ``cx`` alone: the table, numbered, then ``Switch to (#): ``.
    """
    from subrouter.cli.switch import SwitchOptions, switch

    streams = ctx.streams
    accounts, _ = manage.load_all(ctx.store)
    if not accounts:
        streams.say("No accounts yet. Add one with `cx add` (a ChatGPT login) or "
                    "`cx add-key` (an OpenAI API key).\n")
        return 0
    listing, rows, active, next_id = await _gather(ctx, options, True)
    colour = render.colour_wanted(streams.stdout, ctx.environ)
    streams.say(table(ctx, rows, active, next_id, colour, numbered=True))
    streams.say("\n" + _legend(listing.source))
    answer = prompt(streams, "Switch to (#, a name, or Enter for none): ")
    if not answer:
        return 0
    if answer.isdigit():
        index = int(answer)
        if not 1 <= index <= len(rows):
            raise CommandFailed(f"no row numbered {index}")
        row = rows[index - 1]
    else:
        found = manage.find(ctx.store, answer)
        row = next(r for r in rows if r["id"] == found.id)
    selector = str(row["id"])
    score: Score = row["_score"]
    if row["kind"] == "oauth" and score.exhausted and not options["force"]:
        raise CommandFailed(
            f"cannot switch to {selector}: it has no usage left for now; "
            f"`cx switch {selector} --force` switches anyway")
    chosen = SwitchOptions()
    chosen.parseOptions([selector, *(["--force"] if options["force"] else [])])
    return await switch(ctx, chosen)


COMMANDS = [
    Command("list", ListOptions, "The stored accounts, ranked; no usage fetch.", ("ls",),
            run=list_accounts),
    Command("status", StatusOptions, "Every account's usage, headroom and state, ranked.",
            run=status),
]

DEFAULT = Command("interactive", InteractiveOptions,
                  "The accounts ranked and numbered, and a prompt to switch.", run=interactive)
