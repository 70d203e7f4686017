"""
Sticky assignments and live counts.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from subrouter.sessions.table import SessionTable


def test_assign_touch_and_live_counts_expire_after_the_idle_ttl() -> None:
    table = SessionTable(idle_ttl=60)
    table.assign("codex", "t1", "a", now=0)
    table.assign("codex", "t2", "a", now=10)
    table.assign("codex", "t3", "b", now=20)
    assert table.live_counts(20) == {"a": 2, "b": 1}
    assert table.live_counts(65) == {"a": 1, "b": 1}
    table.touch("codex", "t1", now=66)
    assert table.live_counts(66) == {"a": 2, "b": 1}
    assert table.live_counts(200) == {}
    assert table.get("codex", "t1").account_id == "a"  # type: ignore[union-attr]


def test_moving_a_session_moves_its_count() -> None:
    table = SessionTable(idle_ttl=60)
    table.assign("codex", "t", "a", now=0)
    table.assign("codex", "t", "b", now=1)
    assert table.live_counts(1) == {"b": 1}
    assert table.get("codex", "t").requests == 2  # type: ignore[union-attr]


def test_agents_do_not_share_keys() -> None:
    table = SessionTable(idle_ttl=60)
    table.assign("codex", "same", "a", now=0)
    assert table.get("claude", "same") is None


def test_email_is_inherited_and_replaced() -> None:
    table = SessionTable(idle_ttl=60)
    table.assign("codex", "t", "a", now=0, user_email="u@x.com")
    table.touch("codex", "t", now=1)
    assert table.get("codex", "t").user_email == "u@x.com"  # type: ignore[union-attr]
    table.touch("codex", "t", now=2, user_email="v@x.com")
    assert table.get("codex", "t").user_email == "v@x.com"  # type: ignore[union-attr]


def test_dump_and_load_round_trip() -> None:
    table = SessionTable(idle_ttl=60)
    table.assign("codex", "t", "a", now=5, user_email="u@x.com", fallback=True)
    other = SessionTable(idle_ttl=60)
    other.load([*table.dump(), {"bogus": 1}])
    restored = other.get("codex", "t")
    assert restored is not None and restored.as_json() == table.get("codex", "t").as_json()  # type: ignore[union-attr]
    assert other.live_counts(5) == {}  # restored sessions are not live until seen


@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from("abc"), st.integers(0, 3)),
                max_size=60))
def test_live_counts_always_equal_a_full_recount(ops: list[tuple[int, str, int]]) -> None:
    table = SessionTable(idle_ttl=10)
    now = 0.0
    for key, account, step in ops:
        now += step
        if table.get("codex", str(key)) is not None and step % 2:
            table.touch("codex", str(key), now)
        else:
            table.assign("codex", str(key), account, now)
        expected: dict[str, int] = {}
        for a in table:
            if a.last_seen > now - 10:
                expected[a.account_id] = expected.get(a.account_id, 0) + 1
        assert table.live_counts(now) == expected


def test_fallback_keys_are_not_live_conversations() -> None:
    table = SessionTable(idle_ttl=60)
    table.assign("codex", "fallback:abc", "a", now=0, fallback=True)
    table.touch("codex", "fallback:abc", now=1)
    table.assign("codex", "real", "b", now=2)
    assert table.live_counts(2) == {"b": 1}
    assert table.get("codex", "fallback:abc").requests == 2  # type: ignore[union-attr]


def test_a_snapshot_gives_dumps_rows_and_does_not_follow_later_changes() -> None:
    from subrouter.sessions.reasons import Reason
    from subrouter.sessions.table import rows

    table = SessionTable(idle_ttl=600)
    table.assign("codex", "k1", "a@x.com", 100.0, fallback=False, user_email="u@x.com",
                 reason=Reason(kind="new", at=100.0, account="a@x.com"))
    table.assign("codex", "k2", "b@x.com", 101.0, fallback=False, user_email=None, reason=None)
    snapshot = table.snapshot()
    before = table.dump()
    table.touch("codex", "k1", 150.0)
    table.assign("codex", "k3", "b@x.com", 152.0, fallback=False, user_email=None, reason=None)
    # encoded later (on another thread), it is the table as it was when taken
    assert rows(snapshot) == before
    assert len(table.dump()) == 3


def test_take_changed_gives_only_the_conversations_changed_since_in_the_tables_order() -> None:
    table = SessionTable(idle_ttl=60)
    for i in range(100):
        table.assign("codex", f"t{i}", "a", now=i)
    changed, forgotten = table.take_changed()
    assert [sid for sid, _ in changed] == [("codex", f"t{i}") for i in range(100)]
    assert forgotten == []
    assert table.take_changed() == ([], [])
    table.touch("codex", "t7", now=200)
    table.assign("codex", "new", "b", now=201)
    table.assign("codex", "t3", "b", now=202)  # moved
    changed_rows = dict(table.take_changed()[0])
    assert list(changed_rows) == [("codex", "t7"), ("codex", "new"), ("codex", "t3")]
    assert changed_rows[("codex", "t7")] == table.snapshot()[7]
    table.mark_changed([("codex", "t9")], [("codex", "gone")])
    changed, forgotten = table.take_changed()
    assert [sid for sid, _ in changed] == [("codex", "t9")] and forgotten == [("codex", "gone")]


def test_forget_drops_the_assignments_unseen_since_and_nothing_live() -> None:
    table = SessionTable(idle_ttl=60)
    table.assign("codex", "old", "a", now=0)
    table.assign("codex", "older", "b", now=-10)
    table.assign("codex", "recent", "a", now=500)
    table.touch("codex", "old", now=450)  # seen again: kept
    table.take_changed()
    version = table.version
    assert table.forget(before=400) == 1
    assert table.get("codex", "older") is None
    assert table.get("codex", "old") is not None and table.get("codex", "recent") is not None
    assert table.version > version
    assert table.take_changed() == ([], [("codex", "older")])
    assert table.live_counts(500) == {"a": 2}
    assert table.forget(before=400) == 0
    # back after being forgotten: placed anew
    table.assign("codex", "older", "a", now=600)
    assert table.get("codex", "older").first_seen == 600  # type: ignore[union-attr]


@example([("assign", 0, "a"), ("save", 0, "a"), ("forget", 0, "a"), ("fail", 0, "a")])
@example([("assign", 0, "a"), ("save", 0, "a"), ("touch", 0, "a"), ("fail", 0, "a")])
@given(st.lists(st.tuples(st.sampled_from(["assign", "touch", "adopt", "forget", "save",
                                            "fail"]),
                          st.integers(0, 12), st.sampled_from(["a", "b", "c"])),
                max_size=60))
def test_a_saved_state_file_is_every_row_as_it_stands_however_few_were_encoded_again(
    steps: list[tuple[str, int, str]],
) -> None:
    import json
    import tempfile

    from twisted.internet.defer import fail, succeed
    from twisted.internet.task import Clock

    from subrouter.jobs.state_file import FORMAT, StateSaver
    from subrouter.sessions.table import rows
    from subrouter.sessions.usage import UsageBook

    table = SessionTable(idle_ttl=60)
    clock = Clock()
    failing = [False]

    def run_blocking(f: object) -> object:
        if failing[0]:
            return fail(OSError("disk full"))  # before anything ran
        return succeed(f())  # type: ignore[operator]

    with tempfile.TemporaryDirectory() as folder:
        saver = StateSaver(folder, table, UsageBook(), run_blocking,  # type: ignore[arg-type]
                           clock)
        now = 0.0
        for action, n, account in steps:
            now += 1
            clock.advance(1)
            key = f"k{n}"
            if action == "assign":
                table.assign("codex", key, account, now=now, user_email=f"{account}@x")
            elif action == "touch":
                table.touch("codex", key, now=now)
            elif action == "adopt":
                table.adopt("codex", key, account, now, first_seen=now - 5, last_seen=now,
                            requests=n, fallback=False, user_email=None)
            elif action == "forget":
                table.forget(before=now - n)
            else:
                failing[0] = action == "fail"
                saver.save_if_changed()
        failing[0] = False
        table.assign("codex", "last", "a", now=now + 1)
        saver.save_if_changed()
        with open(saver.path, "rb") as f:
            written = f.read()
    document = json.loads(written)
    assert document["format"] == FORMAT
    assert document["sessions"] == rows(table.snapshot())
    # the same bytes as encoding the whole document at once
    whole = {"format": FORMAT, "saved_at": document["saved_at"],
             "sessions": rows(table.snapshot()), "exhausted": document["exhausted"]}
    assert written == json.dumps(whole, separators=(",", ":")).encode()


def test_failing_saves_are_said_once_a_minute_and_their_end_is_said() -> None:
    from typing import Any

    from twisted.internet.defer import fail, succeed
    from twisted.internet.task import Clock
    from twisted.logger import globalLogPublisher

    from subrouter.jobs.state_file import FAILURE_LOG_INTERVAL, StateSaver
    from subrouter.sessions.usage import UsageBook

    table = SessionTable(idle_ttl=60)
    clock = Clock()
    broken = [True]

    def run_blocking(f: Any) -> Any:
        if broken[0]:
            return fail(OSError(28, "No space left on device"))
        return succeed(None)

    events: list[dict[str, Any]] = []
    saver = StateSaver("/nonexistent", table, UsageBook(), run_blocking, clock)
    globalLogPublisher.addObserver(events.append)
    try:
        for second in range(int(FAILURE_LOG_INTERVAL) * 2 + 5):
            table.assign("codex", f"k{second}", "a", now=second)
            saver.save_if_changed()
            clock.advance(1)
        broken[0] = False
        saver.save_if_changed()
    finally:
        globalLogPublisher.removeObserver(events.append)
    said = [e for e in events if "saving" in e.get("log_format", "")]
    kinds = ["works again" if "works again" in e["log_format"] else
             "still fails" if "still fails" in e["log_format"] else "failed" for e in said]
    # the first failure, one more a minute while it lasts, and its end
    assert kinds == ["failed", "still fails", "still fails", "works again"]
    assert said[0]["error"] == "No space left on device"
    assert said[-1]["failures"] == int(FAILURE_LOG_INTERVAL) * 2 + 5
