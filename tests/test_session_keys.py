"""
Session keys, agent types, user emails and forced accounts.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.web.http_headers import Headers

from subrouter.sessions.keys import (
    SESSION_HEADERS,
    BadAccountSelector,
    agent_type,
    canonical_thread,
    fallback_key,
    forced_account,
    key_from_body,
    key_from_headers,
    key_from_query,
    match_account,
    normalise_email,
    user_email,
)


def h(**values: str) -> Headers:
    return Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in values.items()})


def test_subrouter_header_wins() -> None:
    headers = h(x_subrouter_session="mine", session_id="codex-thread")
    assert key_from_headers(headers) == ("mine", "header:x-subrouter-session")


def test_codex_window_id_is_reduced_to_its_thread() -> None:
    assert key_from_headers(h(x_codex_window_id="thr-1:3", session_id="s")) == (
        "thr-1",
        "header:x-codex-window-id",
    )
    assert canonical_thread("a:b:12") == "a:b"
    assert canonical_thread(":12") == ":12"
    assert canonical_thread("abc:x") == "abc:x"


def test_codex_session_and_thread_headers() -> None:
    assert key_from_headers(h(session_id="s1", thread_id="t1")) == ("s1", "header:session-id")
    assert key_from_headers(h(thread_id="t1")) == ("t1", "header:thread-id")
    underscore = Headers({b"session_id": [b"old-codex"]})
    assert key_from_headers(underscore) == ("old-codex", "header:session_id")


def test_blank_and_oversized_values_are_skipped() -> None:
    assert key_from_headers(h(x_subrouter_session="   ", session_id="s")) == (
        "s", "header:session-id"
    )
    assert key_from_headers(h(session_id="x" * 300)) is None


def test_query_keys() -> None:
    assert key_from_query(b"a=1&conversation_id=c&thread_id=t") == ("c", "query:conversation_id")
    assert key_from_query(b"") is None


def test_body_scan_prefers_session_id_and_ignores_text_inside_strings() -> None:
    body = json.dumps(
        {
            "input": [{"content": 'the user typed "session_id": "fake" here'}],
            "prompt_cache_key": "pck-1",
            "metadata": {"thread_id": "t-9"},
        }
    ).encode()
    assert key_from_body(body, b"application/json") == ("t-9", "body:thread_id")
    assert key_from_body(json.dumps({"prompt_cache_key": "p"}).encode(), None) == (
        "p", "body:prompt_cache_key"
    )
    assert key_from_body(b'{"session_id": "s"}', b"text/plain") is None
    assert key_from_body(b'{"session_id": "s"}' + b" " * (1 << 20), b"application/json") is None


def test_fallback_key_is_stable_and_marked() -> None:
    a = fallback_key("127.0.0.1", "curl/8", "POST", "/v1/responses")
    assert a == fallback_key("127.0.0.1", "curl/8", "POST", "/v1/responses")
    assert a.startswith("fallback:") and len(a) == len("fallback:") + 24
    assert a != fallback_key("127.0.0.1", "curl/9", "POST", "/v1/responses")


@pytest.mark.parametrize(
    ("headers", "agent"),
    [
        (h(x_subrouter_agent="Gemini"), "gemini"),
        (h(x_subrouter_agent="bad agent!", user_agent="claude-cli/1.0"), "claude"),
        (h(x_claude_session_id="c"), "claude"),
        (h(google_conversation_id="g"), "gemini"),
        (h(x_codex_window_id="w:1"), "codex"),
        (h(), "codex"),
    ],
)
def test_agent_type(headers: Headers, agent: str) -> None:
    assert agent_type(headers) == agent


def test_emails() -> None:
    assert normalise_email("Alice <A@X.com>") == "a@x.com"
    assert normalise_email("not an email") is None
    assert normalise_email("a@b") is None
    assert user_email(h(x_subrouter_user="bad", x_user_email="U@Example.COM")) == "u@example.com"
    assert user_email(Headers({b"X-Subrouter-Client": [b"ci"]})) == "ci"
    assert user_email(h(user_agent="codex_cli_rs/0.50.0")) is None


def test_forced_account() -> None:
    assert forced_account(h(x_subrouter_account_id=" work ")) == "work"
    assert forced_account(h()) is None
    with pytest.raises(BadAccountSelector):
        forced_account(h(x_subrouter_account_id=" "))
    twice = Headers({b"x-subrouter-account-id": [b"a"], b"x-subrouter-account": [b"b"]})
    with pytest.raises(BadAccountSelector):
        forced_account(twice)
    accounts = [("apikey:Work", None), ("a@x.com", "a@x.com")]
    assert match_account("work", accounts) == "apikey:Work"
    assert match_account("A@X.COM", accounts) == "a@x.com"
    assert match_account("nobody", accounts) is None


@given(st.text(min_size=1, max_size=40).filter(lambda s: ":" not in s and s.strip() == s
                                                and s.isprintable()),
       st.integers(0, 999))
def test_every_window_of_a_thread_shares_its_key(thread: str, window: int) -> None:
    assert canonical_thread(f"{thread}:{window}") == thread


def _probe_each_name(headers: Headers) -> tuple[str, str] | None:
    # the plain reading of the rule: each session header in the order trusted
    for name in SESSION_HEADERS:
        for raw in headers.getRawHeaders(name) or ():
            text = raw.decode("utf-8", "replace").strip()
            if text:
                if name == b"x-codex-window-id":
                    text = canonical_thread(text)
                text = text.strip()
                if text and len(text) <= 256 and not any(
                    ord(c) < 0x20 or ord(c) == 0x7F for c in text
                ):
                    return text, "header:" + name.decode()
                break
    return None


_VALUES = st.sampled_from(["", "  ", "s-1", " s-2 ", "thr:4", "x" * 300, "a\x01b", "t-9"])


@given(
    st.lists(
        st.tuples(
            st.sampled_from([*SESSION_HEADERS, b"user-agent", b"content-type", b"x-other"]),
            st.lists(_VALUES, min_size=1, max_size=3),
        ),
        max_size=6,
    )
)
def test_one_pass_over_the_headers_matches_probing_each_name(
    entries: list[tuple[bytes, list[str]]],
) -> None:
    headers = Headers()
    for name, values in entries:
        for value in values:
            headers.addRawHeader(name, value.encode())
    assert key_from_headers(headers) == _probe_each_name(headers)
