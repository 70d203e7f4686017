# -*- test-case-name: tests.test_cx_spend -*-
"""
API-key spend from the OpenAI organization endpoints, for ``cx usage`` and
``cx attach-project``, with admin keys.

Requests retry network errors and 5xx up to 4 times (1 s, 2 s, 4 s); 4xx
fail at once with the status and the start of the body (keys scrubbed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from treq.client import HTTPClient

from subrouter.redact import scrub_text

RETRY_DELAYS = (1.0, 2.0, 4.0)


class SpendError(Exception):
    pass


async def get_json(http: HTTPClient, clock: Any, base: str, path: str, key: str) -> Any:
    """
    GET an organization endpoint with an admin key.
    """
    import treq
    from twisted.internet.task import deferLater

    from subrouter.errors import describe_failure_reason

    headers: Any = {"Authorization": [f"Bearer {key}"], "Accept": ["application/json"]}
    last = ""
    for attempt in range(len(RETRY_DELAYS) + 1):
        if attempt:
            await deferLater(clock, RETRY_DELAYS[attempt - 1], lambda: None)
        try:
            response = await http.get(base.rstrip("/") + path, headers=headers, timeout=120)
            body = await treq.content(response)
        except Exception as e:
            last = describe_failure_reason(e)
            continue
        if 200 <= response.code < 300:
            return json.loads(body)
        text = scrub_text(body.decode("utf-8", "replace"), [key])[:200]
        last = f"OpenAI {response.code} {path.split('?')[0]}: {text}"
        if response.code < 500:
            break
    raise SpendError(last)


async def projects(http: HTTPClient, clock: Any, base: str, key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = ""
    for _ in range(20):
        page = await get_json(http, clock, base,
                              f"/v1/organization/projects?limit=100{after}", key)
        data = page.get("data") if isinstance(page, dict) else None
        found.extend(p for p in data or [] if isinstance(p, dict))
        if not (isinstance(page, dict) and page.get("has_more") and page.get("last_id")):
            break
        after = f"&after={page['last_id']}"
    return found


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return 0.0
    return 0.0


def _day(bucket: Mapping[str, Any]) -> str:
    iso = bucket.get("start_time_iso")
    if isinstance(iso, str) and len(iso) >= 10:
        return iso[:10]
    return time.strftime("%Y-%m-%d", time.gmtime(_number(bucket.get("start_time"))))


def summarise(costs: Any, usage: Any, now: float) -> dict[str, Any]:
    """
    Daily rows and today / 7-day / 30-day totals from the costs and the
    completions-usage answers.
    """
    days: dict[str, dict[str, Any]] = {}
    for bucket in (costs or {}).get("data", []) if isinstance(costs, dict) else []:
        row = days.setdefault(_day(bucket), {"costUsd": 0.0, "inputTokens": 0,
                                             "cachedInputTokens": 0, "outputTokens": 0,
                                             "requests": 0})
        for result in bucket.get("results") or []:
            amount = result.get("amount") if isinstance(result, dict) else None
            row["costUsd"] += _number(amount.get("value") if isinstance(amount, dict) else 0)
    models: dict[str, int] = {}
    for bucket in (usage or {}).get("data", []) if isinstance(usage, dict) else []:
        row = days.setdefault(_day(bucket), {"costUsd": 0.0, "inputTokens": 0,
                                             "cachedInputTokens": 0, "outputTokens": 0,
                                             "requests": 0})
        for result in bucket.get("results") or []:
            if not isinstance(result, dict):
                continue
            row["inputTokens"] += int(_number(result.get("input_tokens")))
            row["cachedInputTokens"] += int(_number(result.get("input_cached_tokens")))
            row["outputTokens"] += int(_number(result.get("output_tokens")))
            row["requests"] += int(_number(result.get("num_model_requests")))
            model = result.get("model") or "(unknown)"
            models[model] = models.get(model, 0) + int(
                _number(result.get("input_tokens")) + _number(result.get("input_cached_tokens"))
                + _number(result.get("output_tokens"))
            )
    daily = [{"date": d, **days[d]} for d in sorted(days)]

    def tokens(rows: list[dict[str, Any]]) -> int:
        return sum(r["inputTokens"] + r["cachedInputTokens"] + r["outputTokens"] for r in rows)

    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    today_rows = [r for r in daily if r["date"] == today]
    top = max(models.items(), key=lambda kv: kv[1]) if models else None
    return {
        "todayUsd": round(sum(r["costUsd"] for r in today_rows), 6),
        "weekUsd": round(sum(r["costUsd"] for r in daily[-7:]), 6),
        "monthUsd": round(sum(r["costUsd"] for r in daily[-30:]), 6),
        "todayTokens": tokens(today_rows),
        "weekTokens": tokens(daily[-7:]),
        "monthTokens": tokens(daily[-30:]),
        "topModel": {"model": top[0], "tokens": top[1]} if top else None,
        "daily": daily,
    }


def usd(value: float) -> str:
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.4f}"
    if value < 1:
        return f"${value:.3f}"
    return f"${value:.2f}"


def count(tokens: int) -> str:
    if tokens >= 1_000_000:
        return f"{tokens / 1_000_000:.1f}M"
    if tokens >= 1_000:
        return f"{tokens / 1_000:.1f}K"
    return str(tokens)
