"""
The Site's resource tree: the ``/_subrouter/`` pages and the proxy beside them.
"""
