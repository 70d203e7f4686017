# -*- test-case-name: tests.test_cx_claude -*-
"""
``cx claude``: the commands over Claude Code profiles (list with usage, add
through the real ``claude`` CLI, switch, env, run, remove).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from subrouter.accounts import activate as manage
from subrouter.accounts.claude import (
    INSTANCE_SUBDIRS,
    config_dir,
    dir_name,
    find,
    load,
    save,
    valid_name,
)
from subrouter.cli import render
from subrouter.cli.console import Context
from subrouter.cli.dispatch import Command, CommandOptions, Group
from subrouter.config import DEFAULT_ANTHROPIC_USAGE_URL
from subrouter.files import ensure_private_directory
from subrouter.timefmt import rfc3339


class _Selector(CommandOptions):
    arguments = "<profile>"


class _List(CommandOptions):
    summary = "The Claude profiles, the active one starred, with their Anthropic usage."
    optFlags = [["no-usage", None, "Do not fetch usage."]]
    optParameters = [["usage-url", None, DEFAULT_ANTHROPIC_USAGE_URL,
                      "The Anthropic OAuth usage endpoint."]]


class _Add(CommandOptions):
    summary = "Sign in to Claude Code (the real `claude`) into a new profile."
    arguments = "[name]"


class _Switch(_Selector):
    summary = "Make a profile the active one (`eval \"$(cx claude env)\"` to use it)."


class _Remove(_Selector):
    summary = "Delete a profile and its folder."


class _Env(CommandOptions):
    summary = "Print the export line for the active profile."


class _Run(CommandOptions):
    summary = "Run claude with a profile's CLAUDE_CONFIG_DIR (the active one by default)."
    arguments = "[profile] [claude-arguments...]"
    interspersed = False

    def parseArgs(self, *args: str) -> None:
        self["args"] = list(args)


async def list_profiles(ctx: Context, sub: Any) -> int:
    store, streams = ctx.store, ctx.streams
    registry = load(store)
    profiles: dict[str, Any] = registry["profiles"]
    if not profiles:
        streams.stdout.write("No Claude profiles. Add one with `cx claude add`.\n")
        return 0
    usage_by_name: dict[str, Any] = {}
    if not sub["no-usage"]:
        usage_by_name = await _fetch_usage(ctx, profiles, sub["usage-url"])
    colour = render.colour_wanted(streams.stdout, ctx.environ)
    for name in sorted(profiles):
        profile = profiles[name]
        star = " *" if registry.get("active") == name else ""
        plan = _plan(config_dir(store, profile))
        streams.stdout.write(
            f"  {name}{star}{f' [{plan}]' if plan else ''} "
            f"(added {str(profile.get('createdAt', ''))[:10]}) {config_dir(store, profile)}\n"
        )
        for line in _usage_lines(usage_by_name.get(name), colour):
            streams.stdout.write(f"    {line}\n")
    return 0


def switch(ctx: Context, sub: Any) -> int:
    store, streams = ctx.store, ctx.streams
    registry = load(store)
    profiles: dict[str, Any] = registry["profiles"]
    name = find(registry, sub["profile"])
    registry["active"] = name
    profiles[name]["lastUsed"] = rfc3339()
    save(store, registry)
    folder = config_dir(store, profiles[name])
    streams.stdout.write(
        f"Active Claude profile: {name}\nexport CLAUDE_CONFIG_DIR={folder}\n"
        'Or add to shell rc: eval "$(cx claude env)"\n'
    )
    return 0


def env(ctx: Context, sub: Any) -> int:
    registry = load(ctx.store)
    profiles: dict[str, Any] = registry["profiles"]
    active = registry.get("active")
    if active in profiles:
        folder = config_dir(ctx.store, profiles[active])
        ctx.streams.stdout.write(f"export CLAUDE_CONFIG_DIR={folder}\n")
    return 0


def remove(ctx: Context, sub: Any) -> int:
    store = ctx.store
    registry = load(store)
    profiles: dict[str, Any] = registry["profiles"]
    name = find(registry, sub["profile"])
    folder = config_dir(store, profiles.pop(name))
    if registry.get("active") == name:
        registry["active"] = next(iter(sorted(profiles)), None)
    save(store, registry)
    shutil.rmtree(folder, ignore_errors=True)
    ctx.streams.stdout.write(f"Removed Claude profile: {name}\n")
    return 0


def run(ctx: Context, sub: Any) -> int:
    store = ctx.store
    registry = load(store)
    profiles: dict[str, Any] = registry["profiles"]
    args = list(sub["args"])
    chosen: Any = args.pop(0) if (
        args and not args[0].startswith("-") and args[0] in profiles
    ) else registry.get("active")
    name = str(chosen) if chosen else ""
    if not name or name not in profiles:
        raise manage.StoreError("no Claude profile to run: add one with `cx claude add`")
    registry["active"] = name
    profiles[name]["lastUsed"] = rfc3339()
    save(store, registry)
    environ = dict(ctx.environ, CLAUDE_CONFIG_DIR=config_dir(store, profiles[name]))
    binary = ctx.environ.get("SUBROUTER_CLAUDE_BIN") or "claude"
    try:
        os.execvpe(binary, [binary, *args], environ)
    except FileNotFoundError:
        raise manage.StoreError(f"cannot run {binary!r}: is Claude Code installed?") from None


def add(ctx: Context, sub: Any) -> int:
    return _add(ctx.store, load(ctx.store), sub["name"], ctx.streams)


_LIST = Command("list", _List, "The profiles, with their usage.", ("ls", "status"),
                run=list_profiles)


class ClaudeOptions(Group):
    summary = ("Claude Code profiles: each its own CLAUDE_CONFIG_DIR under the store. "
               "With no command, the profiles are listed.")
    default = _LIST
    commands = (
        _LIST,
        Command("add", _Add, "Sign in to Claude Code into a new profile.", ("login",),
                run=add),
        Command("switch", _Switch, "Make a profile the active one.", ("use",), run=switch),
        Command("env", _Env, "Print the export line for the active profile.", run=env),
        Command("run", _Run, "Run claude with a profile.", run=run, passthrough=True),
        Command("remove", _Remove, "Delete a profile and its folder.", ("rm",), run=remove),
    )


def _plan(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, ".credentials.json"), "rb") as f:
            document = json.loads(f.read())
    except (OSError, ValueError):
        return None
    oauth = document.get("claudeAiOauth") if isinstance(document, dict) else None
    plan = oauth.get("subscriptionType") if isinstance(oauth, dict) else None
    return plan if isinstance(plan, str) else None


def _add(store: str, registry: dict[str, Any], name: str | None, streams: Any) -> int:
    import time

    if name is not None and not valid_name(name):
        raise manage.StoreError(f"{name!r} cannot be a Claude profile name")
    binary = streams.environ.get("SUBROUTER_CLAUDE_BIN") or "claude"
    if shutil.which(binary, path=streams.environ.get("PATH")) is None and not os.path.isfile(
        binary
    ):
        raise manage.StoreError(f"{binary!r} is not on PATH: install Claude Code first")
    directory = dir_name(name) if name else f"_p{int(time.time() * 1000)}"
    folder = os.path.join(store, "claude", directory)
    ensure_private_directory(folder)
    for sub in INSTANCE_SUBDIRS:
        ensure_private_directory(os.path.join(folder, sub))
    env = dict(streams.environ, CLAUDE_CONFIG_DIR=folder)
    subprocess.run([binary], env=env, check=False)
    status = subprocess.run([binary, "auth", "status"], env=env, capture_output=True,
                            text=True, timeout=10, check=False)
    try:
        answer = json.loads(status.stdout)
    except ValueError:
        answer = {}
    if not isinstance(answer, dict) or not answer.get("loggedIn"):
        shutil.rmtree(folder, ignore_errors=True)
        raise manage.StoreError("Claude Code did not sign in; no profile was added")
    email = answer.get("email") if isinstance(answer.get("email"), str) else None
    final = name or email or "default"
    profiles = registry["profiles"]
    profiles[final] = {"name": final, "createdAt": rfc3339(), "dir": directory}
    if not registry.get("active"):
        registry["active"] = final
    save(store, registry)
    plan = answer.get("subscriptionType")
    streams.stdout.write(
        f'Added Claude profile "{final}".{f" ({email})" if email else ""}'
        f"{f' [{plan}]' if plan else ''}\n"
    )
    return 0


_USAGE_ROWS = (("five_hour", "5h limit"), ("seven_day", "7d limit"),
               ("seven_day_opus", "Opus (weekly)"), ("seven_day_sonnet", "Sonnet (weekly)"))


def _token(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, ".credentials.json"), "rb") as f:
            document = json.loads(f.read())
    except (OSError, ValueError):
        return None
    oauth = document.get("claudeAiOauth") if isinstance(document, dict) else None
    token = oauth.get("accessToken") if isinstance(oauth, dict) else None
    return token if isinstance(token, str) and token else None


async def _fetch_usage(ctx: Context, profiles: dict[str, Any], url: str) -> dict[str, Any]:
    """
    Each signed-in profile's Anthropic usage (profiles without one, or whose
    fetch fails, have none).
    """
    wanted = {n: t for n in profiles if (t := _token(config_dir(ctx.store, profiles[n])))}
    if not wanted:
        return {}
    import treq
    from twisted.internet.defer import Deferred, DeferredList

    from subrouter.cli.fetch import command_http

    http, pool = command_http(ctx.reactor, ctx.environ)

    async def one(token: str) -> Any:
        headers: Any = {"Authorization": [f"Bearer {token}"],
                        "anthropic-beta": ["oauth-2025-04-20"],
                        "Content-Type": ["application/json"]}
        response = await http.get(url, headers=headers, timeout=10)
        body = await treq.content(response)
        return json.loads(body) if 200 <= response.code < 300 else None

    names = list(wanted)
    try:
        results = await DeferredList(
            [Deferred.fromCoroutine(one(wanted[n])) for n in names], consumeErrors=True
        )
    finally:
        await pool.closeCachedConnections()
    return {n: value for n, (ok, value) in zip(names, results, strict=True) if ok and value}


def _usage_lines(usage_: Any, colour: bool = False) -> list[str]:
    if not isinstance(usage_, dict):
        return []

    lines = []
    for key, label in _USAGE_ROWS:
        window = usage_.get(key)
        if not isinstance(window, dict) or window.get("utilization") is None:
            continue
        used = float(window["utilization"])
        lines.append(f"{label:<16}{render.bar(used, 20, colour)} {100 - used:5.1f}% left")
    extra = usage_.get("extra_usage")
    if isinstance(extra, dict) and extra.get("is_enabled") and extra.get("utilization") is not None:
        used = float(extra["utilization"])
        lines.append(f"{'Extra usage':<16}{render.bar(used, 20, colour)} {100 - used:5.1f}% left")
    return lines
