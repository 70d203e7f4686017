"""
Shared state backends: the embedded default lives in ``subrouter.sessions``;
this package holds Redis, for several workers or instances sharing one pool
of logins.
"""
