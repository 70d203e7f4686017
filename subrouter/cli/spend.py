# -*- test-case-name: tests.test_cx_spend -*-
"""
OpenAI admin keys and what they show: ``cx add-admin-key``, ``cx admin-keys``,
``cx remove-admin-key``, ``cx usage [days]`` (each API key's spend, cached
under ``usage-cache/``) and ``cx attach-project``.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.python import usage

from subrouter.accounts import activate as manage
from subrouter.accounts.store import Account, AccountKind
from subrouter.cli.console import Context, prompt, prompt_secret
from subrouter.cli.dispatch import Command, CommandOptions
from subrouter.cli.entry import CommandFailed
from subrouter.cli.render import mask
from subrouter.config import DEFAULT_OPENAI_UPSTREAM
from subrouter.timefmt import rfc3339
from subrouter.upstream.routing import OPENAI

DEFAULT_OPENAI_URL = DEFAULT_OPENAI_UPSTREAM


class AddAdminKeyOptions(CommandOptions):
    summary = "Store an OpenAI admin key (validated against the organization endpoints)."
    optParameters = [
        ["label", None, None, "The key's label (asked when missing)."],
        ["key", None, None, "The admin key (asked, hidden, when missing; prefer that)."],
        ["openai-url", None, DEFAULT_OPENAI_URL, "The OpenAI API base URL."],
    ]


class AdminKeysOptions(CommandOptions):
    summary = "The stored admin keys, masked."


class RemoveAdminKeyOptions(CommandOptions):
    summary = "Delete an admin key."
    arguments = "<label>"


class UsageOptions(CommandOptions):
    summary = "Each API key's spend over the last days (1 to 30, default 30), via admin keys."
    arguments = "[days]"
    optParameters = [["openai-url", None, DEFAULT_OPENAI_URL, "The OpenAI API base URL."]]

    def postOptions(self) -> None:
        days = self["days"] or "30"
        if not days.isdigit() or not 1 <= int(days) <= 30:
            raise usage.UsageError("days must be 1..30")
        self["days"] = int(days)


class AttachOptions(CommandOptions):
    summary = ("Tie an API key to an OpenAI project (asks with the list when --project-id "
               "is missing).")
    arguments = "<api-key-label>"
    optParameters = [
        ["project-id", None, None, "The project (id or name), or none/org for org-wide."],
        ["openai-url", None, DEFAULT_OPENAI_URL, "The OpenAI API base URL."],
    ]


_SAFE_LABEL = re.compile(r"[^A-Za-z0-9._-]")


def _admin_path(store: str, label: str) -> str:
    name = _SAFE_LABEL.sub("_", label)
    if not name or name.startswith("."):
        raise CommandFailed(f"{label!r} cannot be an admin key label")
    return os.path.join(store, "admin-keys", name + ".json")


async def add_admin_key(ctx: Context, sub: Any) -> int:
    store, streams = ctx.store, ctx.streams
    label = (sub["label"] or prompt(streams, "Label (e.g. work): ")).strip()
    if not label:
        raise CommandFailed("a label is required")
    key = (sub["key"] or prompt_secret(streams, "Admin key (sk-admin-..., hidden): ")).strip()
    if not key.startswith("sk-admin-"):
        raise CommandFailed("an admin key starts with sk-admin-")
    path = _admin_path(store, label)
    streams.stdout.write("Validating with OpenAI... ")
    streams.stdout.flush()
    from subrouter.cli.fetch import validate_admin_key

    problem = await validate_admin_key(ctx.reactor, sub["openai-url"], key, ctx.environ)
    if problem is not None:
        streams.stdout.write("failed\n")
        raise CommandFailed(f"the admin key was not accepted: {problem}")
    streams.stdout.write("ok\n")
    from subrouter.files import atomic_write, dump_json, ensure_private_directory

    ensure_private_directory(os.path.dirname(path))
    atomic_write(path, dump_json({"label": label, "key": key, "addedAt": rfc3339()}))
    streams.stdout.write(f"Added admin key: {label}\n")
    return 0


def admin_keys(ctx: Context, sub: Any) -> int:
    store, streams = ctx.store, ctx.streams
    folder = os.path.join(store, "admin-keys")
    rows = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        try:
            document = manage.read_json_object(path) or {}
        except manage.StoreError as e:
            streams.stderr.write(f"cx: skipped {path}: {e}\n")
            continue
        key = str(document.get("key") or "")
        added = str(document.get("addedAt") or "")[:10]
        rows.append(f"  {document.get('label') or name[:-5]}  {mask(key)}  added {added}")
    if not rows:
        streams.stdout.write("No admin keys. Add one with `cx add-admin-key`.\n")
    else:
        streams.stdout.write("\n" + "\n".join(rows) + "\n\n")
    return 0


def remove_admin_key(ctx: Context, sub: Any) -> int:
    store, streams, label = ctx.store, ctx.streams, sub["label"]
    path = _admin_path(store, label)
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise CommandFailed(f'no admin key labeled "{label}"') from None
    streams.stdout.write(f"Removed admin key: {label}\n")
    return 0


def _admin_keys_map(store: str) -> dict[str, str]:
    folder = os.path.join(store, "admin-keys")
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.startswith(".") or not name.endswith(".json"):
            continue
        try:
            document = manage.read_json_object(os.path.join(folder, name)) or {}
        except manage.StoreError:
            continue
        key = document.get("key")
        if isinstance(key, str) and key:
            found[str(document.get("label") or name[:-5])] = key
    return found


def _admin_for(account: Account, admins: dict[str, str]) -> str:
    document = manage.read_json_object(account.source) or {}
    chosen = document.get("adminKeyLabel")
    if isinstance(chosen, str) and chosen in admins:
        return chosen
    return sorted(admins)[0]


async def spend_usage(ctx: Context, sub: Any) -> int:
    import time

    from subrouter.accounts import spend
    from subrouter.files import atomic_write, dump_json, ensure_private_directory

    store, streams = ctx.store, ctx.streams
    accounts, _ = manage.load_all(store)
    keys = [a for a in accounts if a.kind is AccountKind.APIKEY and a.provider == OPENAI]
    if not keys:
        streams.stdout.write("No API-key accounts. Add one with `cx add-key`.\n")
        return 0
    admins = _admin_keys_map(store)
    if not admins:
        raise CommandFailed("no admin keys: add one with `cx add-admin-key`")
    days = sub["days"]
    base = sub["openai-url"]
    streams.stdout.write(f"Fetching {days}-day usage for {len(keys)} API-key account(s)...\n")
    plans = []
    for account in keys:
        document = manage.read_json_object(account.source) or {}
        project = document.get("projectId") if isinstance(document.get("projectId"), str) else None
        plans.append((account, _admin_for(account, admins), project,
                      document.get("projectName")))

    reactor = ctx.reactor

    async def fetch_all() -> list[Any]:
        from twisted.internet.defer import Deferred, DeferredList

        from subrouter.cli.fetch import command_http

        http, pool = command_http(reactor, streams.environ)
        start = int(time.time()) - days * 86400

        async def one(admin: str, project: str | None) -> Any:
            scope = f"&project_ids[]={project}" if project else ""
            query = f"?start_time={start}&bucket_width=1d&limit={days}{scope}"
            costs, usage_ = await DeferredList([
                Deferred.fromCoroutine(spend.get_json(
                    http, reactor, base, "/v1/organization/costs" + query, admins[admin])),
                Deferred.fromCoroutine(spend.get_json(
                    http, reactor, base,
                    "/v1/organization/usage/completions" + query + "&group_by[]=model",
                    admins[admin])),
            ], consumeErrors=True)
            for ok, value in (costs, usage_):
                if not ok:
                    raise spend.SpendError(str(value.value))
            return spend.summarise(costs[1], usage_[1], time.time())

        try:
            results = await DeferredList(
                [Deferred.fromCoroutine(one(admin, project)) for _, admin, project, _ in plans],
                consumeErrors=True,
            )
        finally:
            await pool.closeCachedConnections()
        return list(results)

    started = time.monotonic()
    results = await fetch_all()
    took = int(time.monotonic() - started)
    failures = 0
    blocks = []
    for (account, admin, project, project_name), (ok, value) in zip(plans, results,
                                                                     strict=True):
        label = account.id.removeprefix("apikey:")
        streams.stdout.write(f"  {label} via {admin}: {'ok' if ok else 'failed'} ({took}s)\n")
        if not ok:
            failures += 1
            streams.stderr.write(f"cx: {label}: {value.value}\n")
            continue
        snapshot = dict(value, adminKeyLabel=admin, projectId=project,
                        projectName=project_name, fetchedAt=rfc3339())
        cache_name = f"{_SAFE_LABEL.sub('_', admin)}__{_SAFE_LABEL.sub('_', project or 'all')}"
        cache = os.path.join(store, "usage-cache", cache_name + ".json")
        ensure_private_directory(os.path.dirname(cache))
        atomic_write(cache, dump_json({"fetchedAt": snapshot["fetchedAt"], "snapshot": snapshot}))
        scope = f"proj {project_name or project}" if project else "org-wide"
        top = snapshot.get("topModel")
        lines = [
            f"{label} (api key)",
            f"  scope: {scope} via {admin}, just now",
            f"  today: {spend.usd(snapshot['todayUsd'])} "
            f"({spend.count(snapshot['todayTokens'])} tok)",
            f"  7d: {spend.usd(snapshot['weekUsd'])} ({spend.count(snapshot['weekTokens'])} tok)",
            f"  {days}d: {spend.usd(snapshot['monthUsd'])} "
            f"({spend.count(snapshot['monthTokens'])} tok)",
        ]
        if top:
            lines.append(f"  top model: {top['model']} ({spend.count(top['tokens'])} tok {days}d)")
        blocks.append("\n".join(lines))
    if blocks:
        streams.stdout.write("\n" + "\n\n".join(blocks) + "\n")
    return 1 if failures else 0


async def attach(ctx: Context, sub: Any) -> int:
    from subrouter.accounts import spend

    store, streams = ctx.store, ctx.streams
    from subrouter.files import atomic_write, dump_json

    account = manage.find(store, sub["api-key-label"])
    if account.kind is not AccountKind.APIKEY or account.provider != OPENAI:
        raise CommandFailed(f"{account.id} is not an OpenAI API-key account")
    admins = _admin_keys_map(store)
    if not admins:
        raise CommandFailed("no admin keys: add one with `cx add-admin-key`")
    admin = _admin_for(account, admins)
    choice = sub["project-id"]
    project: dict[str, Any] | None = None
    if choice not in ("none", "org"):
        from subrouter.cli.fetch import command_http

        http, pool = command_http(ctx.reactor, streams.environ)
        try:
            found: list[dict[str, Any]] = await spend.projects(
                http, ctx.reactor, sub["openai-url"], admins[admin])
        finally:
            await pool.closeCachedConnections()
        if choice is None:
            for number, p in enumerate(found, 1):
                streams.stdout.write(f"  {number}) {p.get('name')}  {p.get('id')}\n")
            streams.stdout.write("  0) <none / org-wide>\n")
            answer = prompt(streams, "Pick project (#): ")
            if not answer.isdigit() or int(answer) > len(found):
                raise CommandFailed(f"no project numbered {answer!r}")
            project = found[int(answer) - 1] if int(answer) else None
        else:
            matches = [p for p in found if choice in (p.get("id"), p.get("name"))]
            if not matches:
                raise CommandFailed(f'no project matching "{choice}"')
            project = matches[0]
    from subrouter.accounts.refresh import lock_path_for
    from subrouter.files import locked

    with locked(lock_path_for(account.source)):
        document = manage.read_json_object(account.source) or {}
        if project is None:
            document.pop("projectId", None)
            document.pop("projectName", None)
        else:
            document["projectId"] = project.get("id")
            document["projectName"] = project.get("name")
        document["adminKeyLabel"] = admin
        atomic_write(account.source, dump_json(document))
    label = account.id.removeprefix("apikey:")
    name = project.get("name") if project else "<org-wide>"
    streams.stdout.write(f"Updated {label}: project={name} via admin={admin}\n")
    return 0


def cached_spend(store: str, account_id: str) -> dict[str, Any] | None:
    """
    The spend ``cx usage`` cached for an API key (however old), or None.
    """
    admins = _admin_keys_map(store)
    if not admins:
        return None
    accounts, _ = manage.load_all(store)
    account = next((a for a in accounts if a.id == account_id), None)
    if account is None:
        return None
    admin = _admin_for(account, admins)
    document = manage.read_json_object(account.source) or {}
    project = document.get("projectId") if isinstance(document.get("projectId"), str) else None
    name = f"{_SAFE_LABEL.sub('_', admin)}__{_SAFE_LABEL.sub('_', project or 'all')}"
    cache = manage.read_json_object(os.path.join(store, "usage-cache", name + ".json")) or {}
    snapshot = cache.get("snapshot")
    return snapshot if isinstance(snapshot, dict) else None


COMMANDS = [
    Command("add-admin-key", AddAdminKeyOptions, "Store an OpenAI admin key (validated).",
            run=add_admin_key),
    Command("admin-keys", AdminKeysOptions, "The admin keys, masked.", ("list-admin-keys",),
            run=admin_keys),
    Command("remove-admin-key", RemoveAdminKeyOptions, "Delete an admin key.",
            run=remove_admin_key),
    Command("usage", UsageOptions, "API-key spend over the last days (admin keys).",
            run=spend_usage),
    Command("attach-project", AttachOptions, "Tie an API key to an OpenAI project.",
            run=attach),
]
