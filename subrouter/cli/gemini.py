# -*- test-case-name: tests.test_cx -*-
"""
``cx gemini``: the Gemini profiles scaffold (``gemini.json``); it lists
profiles, nothing writes them yet.
"""

from __future__ import annotations

import os
from typing import Any

from subrouter.accounts import activate as manage
from subrouter.cli.console import Context
from subrouter.cli.dispatch import Command, CommandOptions, Group


class _List(CommandOptions):
    summary = "The Gemini profiles, the active one starred."


def list_profiles(ctx: Context, options: Any) -> int:
    registry = manage.read_json_object(os.path.join(ctx.store, "gemini.json")) or {}
    profiles = registry.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        ctx.streams.say("No Gemini profiles configured yet.\n")
        return 0
    active = registry.get("active")
    for name in sorted(profiles):
        profile = profiles[name] if isinstance(profiles[name], dict) else {}
        star = " *" if name == active else ""
        ctx.streams.say(f"  {name}{star} (added {str(profile.get('createdAt', ''))[:10]})\n")
    return 0


_LIST = Command("list", _List, "The Gemini profiles.", ("ls", "status"), run=list_profiles)


class GeminiOptions(Group):
    summary = "Gemini profiles (a scaffold: listing only). With no command, they are listed."
    default = _LIST
    commands = (_LIST,)
