"""
The console scripts: ``subrouter``, ``sr`` and ``cx``, the ``cx`` command
tree, and the agent wrappers.
"""
