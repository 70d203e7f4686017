"""
Test support: a throwaway certificate authority and a scriptable fake upstream
(Codex backend, OpenAI API and OAuth token endpoint) on 127.0.0.1.
"""
