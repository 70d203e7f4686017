"""
``cx usage`` and ``cx attach-project`` against fake organization endpoints.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from subrouter.accounts.spend import count, summarise, usd
from tests.support.daemon import reactor
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, json_response, write_apikey_account

TODAY = time.strftime("%Y-%m-%d", time.gmtime())


def costs() -> dict[str, object]:
    return {"data": [
        {"start_time_iso": "2026-01-01T00:00:00Z", "results": [{"amount": {"value": "1.5"}}]},
        {"start_time_iso": f"{TODAY}T00:00:00Z", "results": [{"amount": {"value": 0.25}}]},
    ]}


def completions() -> dict[str, object]:
    return {"data": [{"start_time_iso": f"{TODAY}T00:00:00Z", "results": [
        {"model": "gpt-5-codex", "input_tokens": 1000, "input_cached_tokens": 500,
         "output_tokens": 200, "num_model_requests": 3},
        {"model": "", "input_tokens": 10, "output_tokens": 1, "num_model_requests": 1},
    ]}]}


def test_summaries_and_formats() -> None:
    summary = summarise(costs(), completions(), time.time())
    assert summary["todayUsd"] == 0.25 and summary["monthUsd"] == 1.75
    assert summary["todayTokens"] == 1711
    assert summary["topModel"] == {"model": "gpt-5-codex", "tokens": 1700}
    assert [usd(0), usd(0.004), usd(0.25), usd(12.345)] == ["$0", "$0.0040", "$0.250", "$12.35"]
    assert [count(12), count(3400), count(1_200_000)] == ["12", "3.4K", "1.2M"]


async def run(tmp_path: Path, ca: TestCA, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    cx_script = os.path.join(os.path.dirname(sys.executable), "cx")
    env = dict(os.environ, HOME=str(tmp_path), SUBROUTER_CA_BUNDLE=ca.ca_pem_path)
    out, err, code = await getProcessOutputAndValue(
        cx_script, ["--accounts-dir", str(tmp_path / "store"), *args], env=env,
        reactor=reactor)
    return code, bytes(out).decode(), bytes(err).decode()


@pytest_twisted.ensureDeferred
async def test_usage_reports_spend_per_api_key_and_caches_it(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    upstream.script(b"/v1/organization/costs", json_response(200, costs()))
    upstream.script(b"/v1/organization/usage/completions", json_response(200, completions()))
    write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    admin = tmp_path / "store" / "admin-keys"
    admin.mkdir(parents=True)
    (admin / "org.json").write_text(json.dumps({"label": "org", "key": "sk-admin-secret-1"}))
    code, out, err = await run(tmp_path, ca, "usage", "7", "--openai-url", upstream.base_url)
    assert code == 0, err
    assert "Fetching 7-day usage for 1 API-key account(s)..." in out
    assert "  work via org: ok (" in out
    assert "  scope: org-wide via org, just now" in out
    assert f"  today: $0.250 ({count(1711)} tok)" in out
    assert "  top model: gpt-5-codex (1.7K tok 7d)" in out
    seen = [r for r in upstream.requests if r.path.startswith(b"/v1/organization/")]
    assert all(r.header(b"authorization") == b"Bearer sk-admin-secret-1" for r in seen)
    assert any(b"group_by" in r.query and b"model" in r.query for r in seen)
    cached = json.loads((tmp_path / "store" / "usage-cache" / "org__all.json").read_text())
    assert cached["snapshot"]["todayUsd"] == 0.25
    assert "sk-admin-secret-1" not in out + err
    code, _, err = await run(tmp_path, ca, "usage", "31")
    assert code != 0 and "days must be 1..30" in err


@pytest_twisted.ensureDeferred
async def test_attach_project_by_name_then_org_wide(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA
) -> None:
    upstream.script(b"/v1/organization/projects", json_response(200, {
        "data": [{"id": "proj_1", "name": "Agents"}, {"id": "proj_2", "name": "Other"}],
        "has_more": False}))
    path = write_apikey_account(tmp_path / "store", "work", "sk-work-1")
    admin = tmp_path / "store" / "admin-keys"
    admin.mkdir(parents=True)
    (admin / "org.json").write_text(json.dumps({"label": "org", "key": "sk-admin-x"}))
    code, out, err = await run(tmp_path, ca, "attach-project", "work", "--project-id", "Agents",
                               "--openai-url", upstream.base_url)
    assert code == 0, err
    assert out == "Updated work: project=Agents via admin=org\n"
    stored = json.loads(path.read_text())
    assert (stored["projectId"], stored["projectName"], stored["adminKeyLabel"]) == (
        "proj_1", "Agents", "org")
    code, out, _ = await run(tmp_path, ca, "attach-project", "work", "--project-id", "none")
    assert out == "Updated work: project=<org-wide> via admin=org\n"
    assert "projectId" not in json.loads(path.read_text())
    code, _, err = await run(tmp_path, ca, "attach-project", "work", "--project-id", "nope",
                             "--openai-url", upstream.base_url)
    assert code == 1 and 'no project matching "nope"' in err
