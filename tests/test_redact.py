"""
Secrets never survive scrubbing; ordinary text does.
"""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import Logger, LogPublisher

from subrouter.logs import json_observer, text_observer
from subrouter.redact import fingerprint, scrub_text

JWT = "eyJhbGciOiJub25lIn0.eyJlbWFpbCI6ImFAYi5jIn0.c2ln"


def test_bearer_keys_and_jwts_are_scrubbed() -> None:
    text = f"Authorization: Bearer abcdefghijklmnop key sk-proj-ABCDEFGH123 token {JWT}"
    out = scrub_text(text)
    assert "abcdefghijklmnop" not in out
    assert "sk-proj-ABCDEFGH123" not in out
    assert JWT not in out
    assert out.startswith("Authorization: Bearer <redacted>")


def test_json_and_query_secrets_are_scrubbed() -> None:
    out = scrub_text('{"refresh_token": "rt-secret-1", "x": 1} ?access_token=abc&b=2')
    assert "rt-secret-1" not in out and "abc&" not in out
    assert '"x": 1' in out and "b=2" in out


def test_account_ids_and_plain_words_survive() -> None:
    text = "POST /v1/responses 200 account=apikey:work user a@example.com"
    assert scrub_text(text) == text


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-",
               min_size=8, max_size=40))
def test_any_api_key_is_scrubbed(body: str) -> None:
    secret = "sk-" + body
    assert secret not in scrub_text(f"failed with key {secret} today")


def test_fingerprint_is_short_stable_and_not_the_secret() -> None:
    assert fingerprint("sk-abc") == fingerprint("sk-abc")
    assert len(fingerprint("sk-abc")) == 16
    assert "sk-abc" not in fingerprint("sk-abc")
    assert fingerprint("") == ""


def test_log_observers_scrub_what_they_write() -> None:
    for make in (text_observer, json_observer):
        out = io.StringIO()
        publisher = LogPublisher(make(out))
        log = Logger(observer=publisher)
        log.info("upstream said {text}", text="bad key sk-LEAKEDKEY12345")
        written = out.getvalue()
        assert "sk-LEAKEDKEY12345" not in written
        assert "<redacted>" in written


def test_json_log_lines_carry_named_fields() -> None:
    out = io.StringIO()
    log = Logger(observer=LogPublisher(json_observer(out)))
    log.info("{method} {path}", method="POST", path="/v1/responses", status=200)
    record = json.loads(out.getvalue().splitlines()[0])
    assert record["method"] == "POST" and record["status"] == 200


@given(
    line=st.text(max_size=80),
    when=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    level=st.sampled_from(["info", "warn", "error"]),
)
def test_request_lines_come_out_as_twisted_would_write_them(
    line: str, when: float, level: str
) -> None:
    from twisted.logger import LogLevel, textFileLogObserver

    event = {"log_format": "{request_line}", "request_line": line, "log_time": when,
             "log_level": LogLevel.levelWithName(level), "log_namespace": "subrouter.proxy"}
    ours, twisted = io.StringIO(), io.StringIO()
    text_observer(ours)(dict(event))
    textFileLogObserver(twisted)(dict(event))
    from subrouter.redact import scrub_text as scrub

    assert ours.getvalue() == scrub(twisted.getvalue())


def test_a_request_line_is_scrubbed_and_other_events_are_twisteds() -> None:
    out = io.StringIO()
    log = Logger(namespace="subrouter.proxy.resource", observer=LogPublisher(text_observer(out)))
    log.info("{request_line}", request_line="POST /v1 502: Bearer sk-abcdefghijklmnopqrstuvwxyz12")
    log.info("placed {n} conversations", n=3)
    first, second = out.getvalue().splitlines()
    assert "sk-abcdefghijklmnop" not in first and "[subrouter.proxy.resource#info] POST" in first
    assert second.endswith("[subrouter.proxy.resource#info] placed 3 conversations")


@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=300)
       | st.sampled_from(["Authorization: BEARER abcdefgh123", "x SK-abc", "EyJhbGciOi",
                          "Refresh_Token=1", "pass word", "\u0131d_token=opaque",
                          "ba\u017fic abcdefghij"]))
def test_the_quick_look_for_secret_words_agrees_with_the_case_insensitive_pattern(
    text: str,
) -> None:
    from subrouter import redact

    assert redact._maybe_secret(text) == (redact._MAYBE_SECRET.search(text) is not None)


@given(level=st.sampled_from(["debug", "info", "warn", "error", "critical"]),
       threshold=st.sampled_from(["debug", "info", "warn", "error", "critical"]))
def test_the_observers_keep_the_levels_twisteds_level_filter_keeps(
    level: str, threshold: str
) -> None:
    from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate

    event = {"log_format": "x {n}", "n": 1, "log_time": 1.0,
             "log_level": LogLevel.levelWithName(level), "log_namespace": "subrouter.proxy"}
    for make in (text_observer, json_observer):
        ours: list[str] = []
        theirs: list[dict[str, object]] = []
        ours_out = io.StringIO()
        make(ours_out, LogLevel.levelWithName(threshold))(dict(event))
        ours.extend(ours_out.getvalue().splitlines())
        predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(threshold))
        FilteringLogObserver(theirs.append, [predicate])(dict(event))
        assert len(ours) == len(theirs)


def test_events_without_a_level_are_dropped_as_twisted_drops_them() -> None:
    out = io.StringIO()
    text_observer(out)({"log_format": "no level", "log_time": 1.0})
    assert out.getvalue() == ""


def test_subrouters_logger_emits_the_events_twisteds_emits() -> None:
    from twisted.logger import LogLevel

    from subrouter.logs import Logger as FastLogger

    events: dict[str, list[dict[str, object]]] = {"ours": [], "theirs": []}
    for name, cls in (("ours", FastLogger), ("theirs", Logger)):
        log = cls(namespace="subrouter.proxy.resource", observer=events[name].append)
        log.info("{request_line}", request_line="POST /v1 200", status=200)
        log.warn("w {n}", n=2)
        log.emit(LogLevel.error, "e")
    for ours, theirs in zip(events["ours"], events["theirs"], strict=True):
        assert isinstance(ours["log_logger"], FastLogger)
        assert {k: v for k, v in ours.items() if k not in ("log_time", "log_logger")} == {
            k: v for k, v in theirs.items() if k not in ("log_time", "log_logger")
        }
        assert abs(float(ours["log_time"]) - float(theirs["log_time"])) < 5  # type: ignore[arg-type]


def test_subrouters_logger_reports_an_invalid_level_as_twisted_does() -> None:
    from subrouter.logs import Logger as FastLogger

    events: list[dict[str, object]] = []
    FastLogger(observer=events.append).emit("loud", "x")  # type: ignore[arg-type]
    assert len(events) == 1
    assert "invalid log level" in str(events[0]["log_format"])
