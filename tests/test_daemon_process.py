"""
The daemon as users run it: ``twistd -n subrouter`` and ``subrouter serve`` as
processes, proxying to a fake HTTPS backend trusted through ``--ca-bundle``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.web.client import Agent, HTTPConnectionPool

from tests.support.daemon import reactor, read_all, sleep
from tests.support.processes import BIN, Collect, free_port
from tests.support.tlsca import TestCA
from tests.support.upstream import FakeUpstream, StreamReader, sse, write_oauth_account


@pytest.mark.parametrize(
    "command",
    [
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "subrouter"],
        [os.path.join(BIN, "twistd"), "-n", "--pidfile=", "--logfile", "sub.log", "subrouter"],
        [os.path.join(BIN, "subrouter"), "serve"],
    ],
    ids=["twistd", "twistd-logfile", "subrouter-serve"],
)
@pytest_twisted.ensureDeferred
async def test_the_daemon_process_streams_through_to_the_backend(
    tmp_path: Path, upstream: FakeUpstream, ca: TestCA, command: list[str]
) -> None:
    fake = upstream
    accounts = tmp_path / "store"
    write_oauth_account(accounts, "alice@example.com", exp=time.time() + 86400)
    port = free_port()
    args = [
        *command,
        "--addr", f"127.0.0.1:{port}",
        "--accounts-dir", str(accounts),
        "--codex-upstream", fake.codex_url,
        "--openai-upstream", fake.openai_url,
        "--token-url", fake.token_url,
        "--ca-bundle", ca.ca_pem_path,
        "--codex-home", str(tmp_path / "codex"),
        "--usage-url", fake.base_url + "/backend-api/wham/usage",
        "--state-dir", str(tmp_path / "state"),
        # never touch this machine's OpenCode or pi files
        "--cx-switch-interval", "0",
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = Collect()
    transport = reactor.spawnProcess(proc, args[0], args, env=env, path=str(tmp_path))
    pool = HTTPConnectionPool(reactor, persistent=False)
    client = HTTPClient(Agent(reactor, pool=pool))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = await client.get(base + "/_subrouter/health")
                assert json.loads(await read_all(health))["ok"] is True
                break
            except ConnectionError:
                pass
            except Exception as e:
                if "refused" not in repr(e).lower():
                    raise
            assert not proc.ended.called, proc.output.decode()
            assert time.monotonic() < deadline, proc.output.decode()
            await sleep(0.1)

        fake.script(b"/backend-api/codex/responses", sse(["one", "two", "three"], gaps=0.05))
        response = await client.request(
            "POST", base + "/v1/responses", data=b'{"model":"m"}', unbuffered=True
        )
        assert response.code == 200
        reader = StreamReader()
        response.deliverBody(reader)
        assert await reader.done is None
        assert reader.received.count(b"data: ") == 3
        seen = fake.requests[-1]
        assert seen.path == b"/backend-api/codex/responses"
        assert (seen.header(b"authorization") or b"").startswith(b"Bearer ey")
        # a path that looks like it carries a key: proxied, logged scrubbed
        # (twistd -n logs through Subrouter's observer too, to stdout or its file)
        leaky = await client.get(base + "/v1/models/sk-proj-abcdefghijklmnop")
        await read_all(leaky)
    finally:
        await pool.closeCachedConnections()
        if not proc.ended.called:
            transport.signalProcess(signal.SIGTERM)
    # a stop by SIGTERM is a normal stop: status 0 under twistd too
    assert await proc.ended == (0, None), proc.output.decode()
    output = proc.output.decode()
    if "--logfile" in command:
        # the same lines, in the file twistd would have written them to
        output = (tmp_path / "sub.log").read_text()
    assert "listening on 127.0.0.1:" in output
    assert re.search(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[subrouter\.proxy\.resource#info\] "
        r"POST /v1/responses 200 ok account=alice@example\.com ", output, re.MULTILINE
    ), output
    assert "Bearer" not in output
    assert "GET /v1/models/<redacted>" in output
    assert "abcdefghijklmnop" not in output
    assert not (tmp_path / "twistd.pid").exists()


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["-n"], "stdout"),
        (["--nodaemon", "--logfile", "-"], "stdout"),
        ([], "twistd.log"),  # daemonized: twistd.log, rotated as twistd rotates it
        (["-n", "--logfile", "x.log"], "x.log"),
        (["--logfile", "-"], None),  # a daemon on stdout: twistd refuses it
        (["-n", "--syslog"], None),
        (["-n", "--logger", "subrouter.logs.json_observer"], None),
    ],
)
def test_twistd_logs_through_subrouters_observer_wherever_it_would_print_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], where: str | None
) -> None:
    from twisted.python.logfile import LogFile
    from twisted.scripts.twistd import ServerOptions

    from subrouter.tap import _twistd_text_log

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # not this test process's
    config = ServerOptions()
    config.parseOptions([*args, "subrouter", "--addr", "127.0.0.1:1",
                         "--accounts-dir", str(tmp_path), "--state-dir", str(tmp_path / "s")])
    found = _twistd_text_log(config.subOptions.parent)
    if where is None:
        assert found is None
    elif where == "stdout":
        assert found is sys.stdout
    else:
        assert isinstance(found, LogFile)
        assert found.path == str(tmp_path / where)
        assert found.rotateLength == 1_000_000  # twistd's own rotation
        found.close()


def test_twistd_with_a_log_file_it_cannot_open_exits_with_a_reason(tmp_path: Path) -> None:
    from twisted.scripts.twistd import ServerOptions

    from subrouter.tap import _twistd_text_log

    config = ServerOptions()
    config.parseOptions(["-n", "--logfile", str(tmp_path / "missing" / "x.log"), "subrouter",
                         "--addr", "127.0.0.1:1", "--accounts-dir", str(tmp_path),
                         "--state-dir", str(tmp_path / "s")])
    with pytest.raises(SystemExit) as exited:
        _twistd_text_log(config.subOptions.parent)
    assert str(exited.value) == (
        f"twistd: cannot open the log file {tmp_path / 'missing' / 'x.log'}: "
        "No such file or directory"
    )


@pytest.mark.parametrize("option", ["state_dir", "transcripts"])
def test_a_folder_the_daemon_cannot_make_stops_it_with_a_reason(
    tmp_path: Path, option: str
) -> None:
    import attrs

    from subrouter.config import Config
    from subrouter.tap import _make_folders

    config = Config(endpoint="tcp:0", addr="127.0.0.1:0", expose=False,
                    accounts_dir=str(tmp_path), codex_upstream="http://127.0.0.1:9",
                    openai_upstream="http://127.0.0.1:9", token_url="http://127.0.0.1:9",
                    ca_bundles=(), idle_timeout=1.0, codex_auth=str(tmp_path / "auth.json"))
    (tmp_path / "a-file").write_text("x")
    name = "--" + option.replace("_", "-")
    for path, reason in [
        (tmp_path / "a-file", "is a file, not a folder"),
        (tmp_path / "a-file" / "below", "cannot create"),
    ]:
        with pytest.raises(SystemExit) as exited:
            _make_folders(attrs.evolve(config, **{option: str(path)}))
        assert str(exited.value).startswith(f"subrouter: {name}: ")
        assert reason in str(exited.value)
    made = tmp_path / "new" / "folder"
    _make_folders(attrs.evolve(config, **{option: str(made)}))
    assert made.is_dir() and oct(made.stat().st_mode & 0o777) == "0o700"
