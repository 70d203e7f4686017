"""
Where each client path goes, per account kind.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subrouter.accounts.store import AccountKind
from subrouter.upstream.routing import OPENAI, Upstreams, split_uri

UP = Upstreams.from_text("https://chatgpt.com/backend-api/codex/", "https://api.openai.com")
OAUTH, KEY = AccountKind.OAUTH, AccountKind.APIKEY


@pytest.mark.parametrize(
    ("kind", "path", "expected"),
    [
        (OAUTH, b"/v1/responses", b"https://chatgpt.com/backend-api/codex/responses"),
        (OAUTH, b"/responses", b"https://chatgpt.com/backend-api/codex/responses"),
        (OAUTH, b"/v1/models", b"https://chatgpt.com/backend-api/codex/models"),
        (OAUTH, b"/v1/responses/compact",
         b"https://chatgpt.com/backend-api/codex/responses/compact"),
        (OAUTH, b"/v1", b"https://chatgpt.com/backend-api/codex/"),
        (OAUTH, b"/v10/x", b"https://chatgpt.com/backend-api/codex/v10/x"),
        (OAUTH, b"/backend-api/wham/usage", b"https://chatgpt.com/backend-api/wham/usage"),
        (OAUTH, b"/backend-api/codex/responses",
         b"https://chatgpt.com/backend-api/codex/responses"),
        (KEY, b"/responses", b"https://api.openai.com/v1/responses"),
        (KEY, b"/v1/responses", b"https://api.openai.com/v1/responses"),
        (KEY, b"/v1", b"https://api.openai.com/v1"),
        (KEY, b"/models", b"https://api.openai.com/v1/models"),
        (KEY, b"/v1x", b"https://api.openai.com/v1/v1x"),
    ],
)
def test_path_rules(kind: AccountKind, path: bytes, expected: bytes) -> None:
    assert UP.provider(kind, OPENAI).url(path, b"") == expected


def test_query_string_is_kept_byte_for_byte() -> None:
    assert (
        UP.provider(KEY, OPENAI).url(b"/responses", b"a=1+2&b=%20&a=3")
        == b"https://api.openai.com/v1/responses?a=1+2&b=%20&a=3"
    )


def test_split_uri() -> None:
    assert split_uri(b"/v1/responses?x=1") == (b"/v1/responses", b"x=1")
    assert split_uri(b"/v1/models") == (b"/v1/models", b"")
    assert split_uri(b"http://127.0.0.1:31415/v1/x?q") == (b"/v1/x", b"q")
    assert split_uri(b"http://127.0.0.1:31415") == (b"/", b"")


_segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=8)


@given(st.lists(_segment, min_size=1, max_size=5), st.booleans())
def test_api_keys_always_get_exactly_one_v1(segments: list[str], with_v1: bool) -> None:
    path = ("/v1/" if with_v1 else "/") + "/".join(segments)
    url = UP.provider(KEY, OPENAI).url(path.encode(), b"")
    assert url.startswith(b"https://api.openai.com/v1/")
    assert url.endswith(("/" + "/".join(segments)).encode())


@given(st.lists(_segment, min_size=1, max_size=5))
def test_oauth_never_sends_a_leading_v1(segments: list[str]) -> None:
    rest = "/" + "/".join(segments)
    with_v1 = UP.provider(OAUTH, OPENAI).url(("/v1" + rest).encode(), b"")
    without = UP.provider(OAUTH, OPENAI).url(rest.encode(), b"")
    if not rest.startswith("/backend-api"):
        assert with_v1 == without == b"https://chatgpt.com/backend-api/codex" + rest.encode()
