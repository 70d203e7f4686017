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

from twisted.python import usage

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
from subrouter.config import DEFAULT_ANTHROPIC_USAGE_URL
from subrouter.files import ensure_private_directory
from subrouter.timefmt import rfc3339


class _Selector(usage.Options):
    synopsis = "<profile>"

    def parseArgs(self, selector: str) -> None:  # type: ignore[override]
        self["selector"] = selector


class _Plain(usage.Options):
    synopsis = ""


class _List(usage.Options):
    synopsis = "[--no-usage]"
    optFlags = [["no-usage", None, "Do not fetch usage."]]
    optParameters = [["usage-url", None, DEFAULT_ANTHROPIC_USAGE_URL,
                      "The Anthropic OAuth usage endpoint."]]


class _Add(usage.Options):
    synopsis = "[name]"

    def parseArgs(self, name: str | None = None) -> None:
        self["name"] = name


class _Run(usage.Options):
    synopsis = "[profile] [claude arguments...]"

    def parseArgs(self, *args: str) -> None:
        self["args"] = list(args)


class ClaudeOptions(usage.Options):
    synopsis = "<command>"
    subCommands = [
        ("list", None, _List, "List Claude profiles with usage (aliases: ls, status)."),
        ("ls", None, _List, "Same as list."),
        ("status", None, _List, "Same as list."),
        ("add", None, _Add, "Sign in to Claude Code into a new profile (alias: login)."),
        ("login", None, _Add, "Same as add."),
        ("switch", None, _Selector, "Make a profile the active one (alias: use)."),
        ("use", None, _Selector, "Same as switch."),
        ("env", None, _Plain, "Print the export line for the active profile."),
        ("run", None, _Run, "Run claude with a profile's CLAUDE_CONFIG_DIR."),
        ("remove", None, _Selector, "Delete a profile and its folder (alias: rm)."),
        ("rm", None, _Selector, "Same as remove."),
    ]


def run(store: str, options: ClaudeOptions, streams: Any) -> int:
    command = options.subCommand or "list"
    sub = options.subOptions
    registry = load(store)
    profiles: dict[str, Any] = registry["profiles"]
    if command in ("list", "ls", "status"):
        if options.subCommand is None:
            sub = None
        if not profiles:
            streams.stdout.write("No Claude profiles. Run 'cx claude add' to add one.\n")
            return 0
        usage_by_name: dict[str, Any] = {}
        if sub is not None and not sub["no-usage"]:
            usage_by_name = _fetch_usage(store, profiles, sub["usage-url"], streams.environ)
        for name in sorted(profiles):
            profile = profiles[name]
            star = " *" if registry.get("active") == name else ""
            plan = _plan(config_dir(store, profile))
            streams.stdout.write(
                f"  {name}{star}{f' [{plan}]' if plan else ''} "
                f"(added {str(profile.get('createdAt', ''))[:10]}) {config_dir(store, profile)}\n"
            )
            for line in _usage_lines(usage_by_name.get(name)):
                streams.stdout.write(f"    {line}\n")
        return 0
    if command in ("switch", "use"):
        name = find(registry, sub["selector"])
        registry["active"] = name
        profiles[name]["lastUsed"] = rfc3339()
        save(store, registry)
        folder = config_dir(store, profiles[name])
        streams.stdout.write(
            f"Active Claude profile: {name}\nexport CLAUDE_CONFIG_DIR={folder}\n"
            'Or add to shell rc: eval "$(cx claude env)"\n'
        )
        return 0
    if command == "env":
        active = registry.get("active")
        if active in profiles:
            folder = config_dir(store, profiles[active])
            streams.stdout.write(f"export CLAUDE_CONFIG_DIR={folder}\n")
        return 0
    if command in ("remove", "rm"):
        name = find(registry, sub["selector"])
        folder = config_dir(store, profiles.pop(name))
        if registry.get("active") == name:
            registry["active"] = next(iter(sorted(profiles)), None)
        save(store, registry)
        shutil.rmtree(folder, ignore_errors=True)
        streams.stdout.write(f"Removed Claude profile: {name}\n")
        return 0
    if command == "run":
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
        env = dict(streams.environ, CLAUDE_CONFIG_DIR=config_dir(store, profiles[name]))
        binary = streams.environ.get("SUBROUTER_CLAUDE_BIN") or "claude"
        try:
            os.execvpe(binary, [binary, *args], env)
        except FileNotFoundError:
            raise manage.StoreError(f"cannot run {binary!r}: is Claude Code installed?") from None
    if command in ("add", "login"):
        return _add(store, registry, sub["name"], streams)
    raise usage.UsageError(f"unknown command {command}")


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


def _fetch_usage(store: str, profiles: dict[str, Any], url: str,
                 environ: Any) -> dict[str, Any]:
    """
    Each signed-in profile's Anthropic usage (profiles without one, or whose
    fetch fails, have none). Blocking: runs the reactor for the command.
    """
    wanted = {n: t for n in profiles if (t := _token(config_dir(store, profiles[n])))}
    if not wanted:
        return {}
    from subrouter.cli.fetch import run_async

    async def fetch() -> dict[str, Any]:
        import treq
        from twisted.internet.defer import Deferred, DeferredList

        from subrouter.cli.fetch import command_http

        http, pool = command_http(environ)

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

    found: dict[str, Any] = run_async(fetch)
    return found


def _usage_lines(usage_: Any) -> list[str]:
    if not isinstance(usage_, dict):
        return []
    from subrouter.cli.cx import _bar

    lines = []
    for key, label in _USAGE_ROWS:
        window = usage_.get(key)
        if not isinstance(window, dict) or window.get("utilization") is None:
            continue
        used = float(window["utilization"])
        lines.append(f"{label:<16}{_bar(used)} {100 - used:5.1f}% left")
    extra = usage_.get("extra_usage")
    if isinstance(extra, dict) and extra.get("is_enabled") and extra.get("utilization") is not None:
        used = float(extra["utilization"])
        lines.append(f"{'Extra usage':<16}{_bar(used)} {100 - used:5.1f}% left")
    return lines
