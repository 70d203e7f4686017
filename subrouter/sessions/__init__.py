"""
Conversations and placement: which conversation a request belongs to, which
account it is pinned to, and where a new one goes.
"""
