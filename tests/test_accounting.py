"""
Token accounting: reading usage from every body shape, finding it cheaply in
streams cut anywhere, the rows' store (restart, rollup, retention, damaged
files) and the reports (buckets in time zones, empty data, breakdowns).
"""

from __future__ import annotations

import itertools
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subrouter.accounting.extract import (
    BodyScan,
    Origin,
    Usage,
    openai_usage,
    usage_from_payloads,
)
from subrouter.accounting.ledger import Ledger
from subrouter.accounting.report import QueryError, edges, parse_query, report
from subrouter.accounting.rows import Row
from subrouter.accounting.store import FileUsageStore

ORIGIN = Origin("codex", "conv-1", "alice@example.com", "acct-a")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() if "+" not in text \
        else datetime.fromisoformat(text).timestamp()


def completed(input_tokens: int, cached: int, output: int, reasoning: int = 0,
              model: str = "gpt-5") -> dict[str, object]:
    return {"type": "response.completed", "response": {
        "id": "resp_1", "model": model, "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output}}}


def sse_body(*events: dict[str, object]) -> bytes:
    return b"".join(
        f"event: {e['type']}\ndata: {json.dumps(e, separators=(',', ':'))}\n\n".encode()
        for e in events
    )


CREATED = {"type": "response.created", "response": {"id": "resp_1", "usage": None,
                                                    "instructions": "x" * 500}}
DELTA = {"type": "response.output_text.delta", "delta": 'say \\"usage\\": {"usage": 1}'}


# -- reading usage ------------------------------------------------------------------


def test_a_responses_completion_gives_every_counter_and_the_model() -> None:
    usage = openai_usage(completed(1000, 900, 50, 20))
    assert usage == Usage(input_tokens=1000, cached_input_tokens=900, output_tokens=50,
                          reasoning_tokens=20, total_tokens=1050, model="gpt-5")


def test_chat_completions_shapes_are_read_too() -> None:
    answer = {"model": "gpt-4o", "usage": {"prompt_tokens": 30, "completion_tokens": 7,
                                          "prompt_tokens_details": {"cached_tokens": 10},
                                          "completion_tokens_details": {"reasoning_tokens": 2}}}
    assert openai_usage(answer) == Usage(30, 10, 0, 7, 2, 37, "gpt-4o")


def test_no_usage_or_only_zeros_gives_nothing() -> None:
    assert openai_usage(CREATED) is None
    assert openai_usage({"usage": {"input_tokens": 0, "output_tokens": 0}}) is None
    assert openai_usage({"usage": {"input_tokens": True}}) is None
    assert openai_usage([1]) is None


def test_anthropic_events_of_one_answer_fold_into_one_record() -> None:
    start = {"type": "message_start", "message": {"model": "claude-x", "usage": {
        "input_tokens": 10, "cache_read_input_tokens": 800, "cache_creation_input_tokens": 90,
        "output_tokens": 1}}}
    deltas = [{"type": "message_delta", "usage": {"output_tokens": n}} for n in (40, 75)]
    payloads = [b"data: " + json.dumps(e).encode() for e in (start, *deltas)]
    assert usage_from_payloads("anthropic", payloads) == [Usage(
        input_tokens=900, cached_input_tokens=800, cache_write_tokens=90, output_tokens=75,
        total_tokens=975, model="claude-x")]


def test_a_whole_anthropic_message_is_one_record() -> None:
    answer = {"type": "message", "model": "claude-x",
              "usage": {"input_tokens": 5, "output_tokens": 6}}
    assert usage_from_payloads("anthropic", [json.dumps(answer).encode()]) == [
        Usage(input_tokens=5, output_tokens=6, total_tokens=11, model="claude-x")]


# -- finding usage in a body cut anywhere ------------------------------------------------


def _scan(body: bytes, cuts: list[int], streaming: bool = True) -> list[bytes]:
    scan = BodyScan(streaming)
    last = 0
    for cut in sorted(set(cuts)):
        scan.feed(body[last:cut])
        last = cut
    scan.feed(body[last:])
    return scan.finish()


STREAM = sse_body(CREATED, DELTA, completed(1000, 900, 50, 20), {"type": "done"})


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=30))
def test_the_completion_line_is_found_however_the_stream_is_cut(cuts: list[int]) -> None:
    found = _scan(STREAM, cuts)
    assert usage_from_payloads("openai", found) == [openai_usage(completed(1000, 900, 50, 20))]
    # response.created's "usage":null and the escaped text are never even kept
    assert len(found) == 1


def test_a_stream_without_a_final_newline_still_counts() -> None:
    body = STREAM + b"data: " + json.dumps(completed(1, 0, 1)).encode()
    assert len(usage_from_payloads("openai", _scan(body, [17, 900]))) == 2


def test_a_pretty_printed_json_answer_is_read_whole() -> None:
    body = json.dumps(completed(12, 0, 3)["response"], indent=2).encode()
    found = _scan(body, [5, 40, 41], streaming=False)
    assert usage_from_payloads("openai", found) == [Usage(12, 0, 0, 3, 0, 15, "gpt-5")]


def test_an_oversized_line_is_skipped_and_the_next_one_read(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import subrouter.accounting.extract as extract

    monkeypatch.setattr(extract, "MAX_PAYLOAD", 400)
    big = b"data: " + json.dumps({"usage": {"input_tokens": 1}, "pad": "y" * 900}).encode()
    body = big + b"\n\n" + sse_body(completed(7, 0, 1))
    scan = BodyScan(True)
    for i in range(0, len(body), 16):
        scan.feed(body[i:i + 16])
    assert usage_from_payloads("openai", scan.finish()) == [openai_usage(completed(7, 0, 1))]
    assert scan.oversized == 1


# -- reports ---------------------------------------------------------------------------------


def row(at: float, *, session: str = "c1", user: str | None = "alice@example.com",
        account: str = "a", model: str = "gpt-5", agent: str = "codex", inp: int = 100,
        cached: int = 50, out: int = 10) -> Row:
    return Row.record(at, Origin(agent, session, user, account),
                      Usage(inp, cached, 0, out, 0, inp + out, model))


def test_hour_buckets_cover_the_range_and_empty_hours_are_zero() -> None:
    now = ts("2026-03-10T12:00:00")
    query = parse_query({"since": "6h", "bucket": "hour"}, now)
    result = report([row(now - 5.5 * 3600), row(now - 5.4 * 3600), row(now - 60)], query,
                    resolution="raw")
    totals = [b["usage"]["total_tokens"] for b in result["buckets"]]
    assert totals == [220, 0, 0, 0, 0, 110]
    assert result["totals"]["requests"] == 3
    assert result["totals"]["cache_hit_ratio"] == 0.5
    assert result["buckets"][1]["usage"]["cache_hit_ratio"] is None


def test_no_data_gives_zero_totals_and_every_bucket() -> None:
    now = ts("2026-03-10T12:00:00")
    result = report([], parse_query({"since": "24h"}, now), resolution="raw")
    assert result["totals"]["total_tokens"] == 0
    assert len(result["buckets"]) == 24
    assert result["by"]["user"] == {"rows": [], "more": 0}


def test_day_buckets_follow_local_midnight_across_a_dst_change() -> None:
    # Europe/Paris leaves summer time on 2026-10-25: that day lasts 25 hours
    query = parse_query({"since": "2026-10-24T00:00:00", "until": "2026-10-27T00:00:00",
                         "bucket": "day", "tz": "Europe/Paris"}, ts("2026-11-01T00:00:00"))
    starts = edges(query)
    assert [b - a for a, b in itertools.pairwise(starts)] == [86400, 90000]
    late = ts("2026-10-25T23:30:00+01:00")  # still the 25th in Paris, the 25th in UTC too
    early = ts("2026-10-26T00:30:00+01:00")  # the 26th in Paris, the 25th in UTC
    result = report([row(late), row(early)], query, resolution="raw")
    assert [b["usage"]["requests"] for b in result["buckets"]] == [0, 1, 1]
    assert result["buckets"][2]["label"].startswith("2026-10-26T00:00:00+01:00")


def test_hour_buckets_in_a_half_hour_zone_start_on_the_local_hour() -> None:
    query = parse_query({"since": "2026-03-10T10:00:00+05:30",
                         "until": "2026-03-10T12:00:00+05:30", "bucket": "hour",
                         "tz": "+05:30"}, ts("2026-03-11T00:00:00"))
    assert [datetime.fromtimestamp(e, query.tz).strftime("%H:%M") for e in edges(query)] == [
        "10:00", "11:00"]


def test_breakdowns_rank_by_tokens_then_name() -> None:
    now = ts("2026-03-10T12:00:00")
    rows = [row(now - 10, user="b@x.io"), row(now - 9, user="a@x.io"),
            row(now - 8, user="c@x.io", inp=1000), row(now - 7, user=None, model="o3")]
    result = report(rows, parse_query({"since": "1h", "by": "user,model,conversation"}, now),
                    resolution="raw")
    assert [r["key"] for r in result["by"]["user"]["rows"]] == ["c@x.io", "a@x.io", "b@x.io",
                                                               None]
    assert result["by"]["model"]["rows"][0] == {"key": "gpt-5", "usage": {
        "requests": 3, "input_tokens": 1200, "cached_input_tokens": 150,
        "cache_write_tokens": 0, "output_tokens": 30, "reasoning_tokens": 0,
        "total_tokens": 1230, "cache_hit_ratio": 0.125}}
    assert result["by"]["conversation"]["rows"][0]["key"] == "codex/c1"


@pytest.mark.parametrize("args, message", [
    ({"since": "soon"}, "since"),
    ({"since": "1h", "until": "2h"}, "before until"),
    ({"bucket": "fortnight"}, "bucket"),
    ({"bucket": "10s"}, "a minute or more"),
    ({"since": "3650d", "bucket": "minute"}, "buckets"),
    ({"by": "planet"}, "by"),
    ({"tz": "Mars/Olympus"}, "time zone"),
])
def test_unusable_parameters_are_named(args: dict[str, str], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        parse_query(args, 1_800_000_000.0)


def test_automatic_buckets_grow_with_the_range() -> None:
    now = 1_800_000_000.0
    assert parse_query({"since": "1h"}, now).bucket == 60.0
    assert parse_query({"since": "24h"}, now).bucket == 3600.0
    assert parse_query({"since": "30d"}, now).bucket == "day"


# -- the store -------------------------------------------------------------------------------

DAY = 86400.0
NOW = ts("2026-03-20T12:00:00")


def _store(path: Path, **kw: object) -> FileUsageStore:
    store = FileUsageStore(str(path), **kw)  # type: ignore[arg-type]
    return store


def _totals(store: FileUsageStore, since: float, until: float) -> tuple[int, int, str]:
    rows, resolution = store.rows(since, until)
    return sum(r.requests for r in rows), sum(r.total_tokens for r in rows), resolution


def test_rows_survive_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path / "usage")
    store.open(NOW)
    store.append([row(NOW - 100), row(NOW - 50, session="c2")])
    store.close()
    again = _store(tmp_path / "usage")
    again.open(NOW + 10)
    assert _totals(again, NOW - 3600, NOW + 10) == (2, 220, "raw")
    assert oct(os.stat(tmp_path / "usage").st_mode & 0o777) == "0o700"
    (raw,) = (tmp_path / "usage").glob("raw-*.jsonl")
    assert oct(os.stat(raw).st_mode & 0o777) == "0o600"


def test_old_raw_days_roll_up_into_hours_without_changing_the_totals(tmp_path: Path) -> None:
    store = _store(tmp_path / "usage", raw_days=2)
    store.open(NOW - 10 * DAY)
    old = [row(NOW - 10 * DAY + i * 60, session=f"c{i % 3}") for i in range(120)]
    store.append(old)
    store.close()
    before = _totals(store, NOW - 13 * DAY, NOW)
    assert before[2] == "hourly"
    again = _store(tmp_path / "usage", raw_days=2)
    again.open(NOW)
    names = sorted(p.name for p in (tmp_path / "usage").iterdir())
    assert names == ["hourly-2026-03-10.jsonl"]
    lines = (tmp_path / "usage" / names[0]).read_text().splitlines()
    assert len(lines) == 2 * 3  # two hours, three conversations
    assert _totals(again, NOW - 13 * DAY, NOW) == before == (120, 13200, "hourly")


def test_rollups_older_than_the_retention_are_deleted(tmp_path: Path) -> None:
    store = _store(tmp_path / "usage", raw_days=1, retention=30 * DAY)
    store.open(NOW - 40 * DAY)
    store.append([row(NOW - 40 * DAY)])
    store.append([row(NOW - 5 * DAY)])
    store.close()
    store.open(NOW)
    assert _totals(store, NOW - 60 * DAY, NOW)[:2] == (1, 110)
    assert [p.name for p in (tmp_path / "usage").iterdir()] == ["hourly-2026-03-15.jsonl"]


def test_a_damaged_line_is_reported_skipped_and_never_lost(tmp_path: Path) -> None:
    folder = tmp_path / "usage"
    store = _store(folder, raw_days=1)
    store.open(NOW - 5 * DAY)
    store.append([row(NOW - 5 * DAY)])
    store.close()
    (raw,) = folder.glob("raw-*.jsonl")
    with raw.open("a") as f:
        f.write("{not json\n")
        f.write('{"t": 1, "agent": "codex", "session": "x", "input_tokens": -4}\n')
        f.write(json.dumps(row(NOW - 5 * DAY + 5).as_json()) + "\n")
    damaged = raw.read_bytes()
    again = _store(folder, raw_days=1)
    again.open(NOW)
    assert any(f"{raw}: line 2" in p for p in again.problems)
    assert _totals(again, NOW - 6 * DAY, NOW)[:2] == (2, 220)
    assert (folder / (raw.name + ".corrupt")).read_bytes() == damaged


def test_a_line_torn_by_a_crash_does_not_swallow_the_next(tmp_path: Path) -> None:
    folder = tmp_path / "usage"
    store = _store(folder)
    store.open(NOW)
    store.append([row(NOW - 10)])
    store.close()
    (raw,) = folder.glob("raw-*.jsonl")
    with raw.open("a") as f:
        f.write('{"t": 17')
    store.append([row(NOW - 5)])
    store.close()
    again = _store(folder)
    again.open(NOW)
    assert _totals(again, NOW - 60, NOW)[:2] == (2, 220)
    assert len(again.problems) == 1


# -- the ledger ----------------------------------------------------------------------------------


def test_the_ledger_writes_what_the_request_path_hands_it_and_drains_at_stop(
    tmp_path: Path,
) -> None:
    clock = [NOW]
    ledger = Ledger(FileUsageStore(str(tmp_path / "usage")), clock=lambda: clock[0],
                    batch_wait=30.0)
    ledger.start()
    tap = ledger.body(ORIGIN, b"text/event-stream; charset=utf-8")
    for i in range(0, len(STREAM), 7):
        tap.feed(STREAM[i:i + 7])
    tap.finish()
    ledger.message(Origin("codex", "ws-1", None, "acct-b", transport="websocket"),
                   json.dumps(completed(10, 5, 2)).encode())
    ledger.message(ORIGIN, json.dumps(CREATED).encode())  # no usage object: not even queued
    ledger.record(Origin("claude", "c9", None, "acct-c", provider="anthropic"),
                  Usage(input_tokens=3, output_tokens=4, total_tokens=7, model="claude-x"))
    ledger.stop()  # long before the 30 s batch: stopping writes it all
    (raw,) = (tmp_path / "usage").glob("raw-*.jsonl")
    lines = [json.loads(line) for line in raw.read_text().splitlines()]
    assert [(r["session"], r["total_tokens"]) for r in lines] == [
        ("conv-1", 1050), ("ws-1", 12), ("c9", 7)]
    assert lines[0]["user"] == "alice@example.com" and lines[0]["model"] == "gpt-5"
    # a response finishing after the stop is written at once, not lost
    ledger.record(ORIGIN, Usage(input_tokens=1, total_tokens=1))
    assert len(raw.read_text().splitlines()) == 4


def test_the_ledger_answers_queries_from_what_it_wrote(tmp_path: Path) -> None:
    ledger = Ledger(FileUsageStore(str(tmp_path / "usage")), clock=lambda: NOW)
    heard: list[Row] = []
    ledger.subscribe(heard.extend)
    ledger.start()
    try:
        ledger.payloads(ORIGIN, [json.dumps(completed(100, 80, 5)).encode()])
        ledger.flush()
        assert [(r.account, r.total_tokens) for r in heard] == [("acct-a", 105)]
        result = ledger.query({"since": "1h", "by": "account"}, NOW + 1)
        assert result["totals"]["cached_input_tokens"] == 80
        assert result["by"]["account"]["rows"][0]["key"] == "acct-a"
        listing = ledger.conversations({"since": "7d"}, NOW + 1)["conversations"]
        assert listing[0]["session"] == "conv-1" and listing[0]["usage"]["requests"] == 1
    finally:
        ledger.stop()


def test_an_anthropic_stream_through_the_ledger_is_one_record(tmp_path: Path) -> None:
    ledger = Ledger(FileUsageStore(str(tmp_path / "usage")), clock=lambda: NOW)
    ledger.start()
    start = {"type": "message_start", "message": {"model": "claude-x", "usage": {
        "input_tokens": 12, "cache_read_input_tokens": 3000, "output_tokens": 1}}}
    delta = {"type": "message_delta", "usage": {"output_tokens": 90}}
    body = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode()
                    for e in (start, {"type": "ping"}, delta, {"type": "message_stop"}))
    tap = ledger.body(Origin("claude", "c1", None, "max-1", provider="anthropic"),
                      b"text/event-stream")
    for i in range(0, len(body), 11):
        tap.feed(body[i:i + 11])
    tap.finish()
    ledger.stop()
    (raw,) = (tmp_path / "usage").glob("raw-*.jsonl")
    (line,) = raw.read_text().splitlines()
    assert json.loads(line) | {"t": 0} == {
        "t": 0, "agent": "claude", "session": "c1", "user": None, "account": "max-1",
        "model": "claude-x", "provider": "anthropic", "input_tokens": 3012,
        "cached_input_tokens": 3000, "output_tokens": 90, "total_tokens": 3102}



@given(st.lists(st.tuples(st.floats(min_value=0, max_value=10 * DAY), st.sampled_from("abc"),
                          st.integers(min_value=0, max_value=5000)), max_size=60))
def test_rolling_up_keeps_every_sum_and_every_day(entries: list[tuple[float, str, int]]) -> None:
    from subrouter.accounting.rows import roll_up

    start = NOW - 10 * DAY
    rows = [row(start + at, session=who, inp=tokens, cached=tokens // 2)
            for at, who, tokens in entries]
    hourly = roll_up(rows)
    assert len(hourly) <= len(rows)
    assert all(r.start % 3600 == 0 for r in hourly)
    query = parse_query({"since": str(start - 3600), "until": str(NOW + 3600), "bucket": "day"},
                        NOW)
    exact = report(rows, query, resolution="raw")
    rolled = report(hourly, query, resolution="hourly")
    assert rolled["totals"] == exact["totals"]
    assert [b["usage"] for b in rolled["buckets"]] == [b["usage"] for b in exact["buckets"]]
    assert rolled["by"]["user"] == exact["by"]["user"]
