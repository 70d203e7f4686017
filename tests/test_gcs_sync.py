"""
The gsutil mirror, driven with a fake ``gsutil`` that records its arguments
and can fail or hang.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.python import usage

from subrouter.jobs.transcript_sync import GsutilSync, normalise_gcs_uri
from subrouter.tap import Options
from tests.support.daemon import reactor

FAKE = """#!/bin/sh
printf '%s\\n' "$@" > "{log}.args"
printf '%s' "$HOME" > "{log}.home"
echo "Building synchronization state..." >&2
case "$FAKE_GSUTIL" in
  fail) echo "AccessDeniedException: 403" >&2; exit 1 ;;
  hang) exec sleep 30 ;;
esac
exit 0
"""


def fake_gsutil(tmp_path: Path) -> Path:
    script = tmp_path / "bin" / "gsutil"
    script.parent.mkdir()
    script.write_text(FAKE.format(log=tmp_path / "gsutil"))
    script.chmod(0o755)
    return script


def sync(tmp_path: Path, mode: str, timeout: float = 10.0) -> GsutilSync:
    (tmp_path / "tx").mkdir(exist_ok=True)
    return GsutilSync(
        directory=str(tmp_path / "tx"), uri="gs://bucket/prefix/",
        gsutil=str(fake_gsutil(tmp_path)), spawn=reactor.spawnProcess, clock=reactor,
        timeout=timeout, environ=dict(os.environ, FAKE_GSUTIL=mode, HOME="/home/test"),
    )


@pytest_twisted.ensureDeferred
async def test_a_run_mirrors_the_folder_with_the_environment_inherited(tmp_path: Path) -> None:
    mirror = sync(tmp_path, "ok")
    await mirror.run_once()
    args = (tmp_path / "gsutil.args").read_text().splitlines()
    assert args == ["-m", "rsync", "-r", str(tmp_path / "tx"), "gs://bucket/prefix/"]
    assert (tmp_path / "gsutil.home").read_text() == "/home/test"
    assert (mirror.runs, mirror.failures) == (1, 0)


@pytest_twisted.ensureDeferred
async def test_a_failure_is_logged_and_the_next_tick_tries_again(tmp_path: Path) -> None:
    mirror = sync(tmp_path, "fail")
    await mirror.run_once()
    await mirror.run_once()
    assert (mirror.runs, mirror.failures) == (2, 2)


@pytest_twisted.ensureDeferred
async def test_a_hanging_run_is_stopped_at_its_timeout(tmp_path: Path) -> None:
    mirror = sync(tmp_path, "hang", timeout=0.5)
    started = reactor.seconds()
    await mirror.run_once()
    assert reactor.seconds() - started < 10
    assert mirror.failures == 1


def test_uris_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert normalise_gcs_uri("gs://b/p") == "gs://b/p/"
    with pytest.raises(ValueError):
        normalise_gcs_uri("s3://b")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    opts = Options()
    opts.stderr = io.StringIO()
    with pytest.raises(usage.UsageError, match="gsutil is not on PATH"):
        opts.parseOptions(["--transcripts", str(tmp_path), "--transcript-gcs-uri", "gs://b/p"])
    with pytest.raises(usage.UsageError, match="needs --transcripts"):
        Options().parseOptions(["--transcript-gcs-uri", "gs://b/p"])
    script = fake_gsutil(tmp_path)
    monkeypatch.setenv("PATH", str(script.parent))
    opts = Options()
    opts.parseOptions(["--transcripts", str(tmp_path), "--transcript-gcs-uri", "gs://b/p",
                       "--transcript-max-body", "512K", "--transcript-exclude", "/v1/models",
                       "--transcript-retention", "30d"])
    config = opts.config
    assert config.gsutil == str(script) and config.transcript_gcs_uri == "gs://b/p/"
    assert config.transcript_max_body == 512 * 1024
    assert config.transcript_exclude == ("/v1/models",)
    assert config.transcript_retention == 30 * 86400
