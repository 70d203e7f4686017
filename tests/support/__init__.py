"""
What the tests share (test modules import helpers from here, never from each
other):

- ``fakeserver``: the base of every fake server (a site on 127.0.0.1, TLS or
  not, whose ``stop()`` closes every connection it has);
- ``upstream``: the scriptable fake Codex backend / OpenAI API / OAuth token
  endpoint, and the credential helpers (tokens, ``cx`` account files);
- ``codex_backend``: the fake backend the real Codex CLI accepts (SSE and the
  Responses WebSocket); ``codex_cli``: running that CLI;
- ``daemon``: the real daemon on a loopback port (start, talk to it, wait for
  its accounts, stop);
- ``store``: raw account files for tests of the store; ``cx``: running a
  ``cx`` command on a temporary HOME;
- ``tlsca``: a throwaway certificate authority.
"""
