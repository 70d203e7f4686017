# -*- test-case-name: tests.test_placement -*-
"""
Who a request is: its conversation (agent and session key), its user and a
forced account, from the request's headers, query and (only when nothing else
names the conversation) its body.
"""

from __future__ import annotations

import attrs
from twisted.web.http_headers import Headers

from subrouter.sessions import keys
from subrouter.upstream.headers import raw_values
from subrouter.upstream.routing import ANTHROPIC, OPENAI


def provider_for_agent(agent: str) -> str:
    """
    Whose credentials an agent's conversations go out with: Claude Code's
    only ever on Anthropic's (Claude profiles, Anthropic keys), every other
    agent's (Codex and the like) on OpenAI's (ChatGPT logins, OpenAI keys).
    """
    return ANTHROPIC if agent == "claude" else OPENAI


@attrs.frozen
class Identity:
    """
    Who a request is: its conversation, its user, and a forced account.
    """

    session: keys.SessionKey
    email: str | None = None
    forced: str | None = None

    @property
    def provider(self) -> str:
        """
        The provider whose accounts may serve this conversation.
        """
        return provider_for_agent(self.session.agent)


def identify_headers(
    headers: Headers,
    query: bytes,
    path: bytes,
    remote: str,
    method: bytes,
    body: bytes | None = None,
    *,
    found: tuple[str, str] | None = None,
    looked: bool = False,
) -> Identity:
    """
    The identity of a request from its parts (an HTTP request, or the
    handshake of a WebSocket).

    :param found: the key the headers or query already gave, when the
        caller looked (so they are not searched twice).
    :param looked: the caller searched the headers and query already, and
        ``found`` is what that gave (None: neither names the conversation).
    :raises keys.BadAccountSelector: for an unusable ``X-Subrouter-Account-ID``.
    """
    agent = keys.agent_type(headers)
    if found is None and not looked:
        found = keys.key_from_headers(headers) or keys.key_from_query(query)
    if found is None and body is not None:
        ctype = raw_values(headers, b"content-type")
        found = keys.key_from_body(body, ctype[0] if ctype else None)
    if found is None:
        user_agent = (raw_values(headers, b"user-agent") or [b""])[0]
        found = (
            keys.fallback_key(
                remote,
                user_agent.decode("utf-8", "replace"),
                method.decode("ascii", "replace"),
                path.decode("ascii", "replace"),
            ),
            "fallback",
        )
    key, source = found
    return Identity(
        keys.SessionKey(agent, key, source), keys.user_email(headers), keys.forced_account(headers)
    )
