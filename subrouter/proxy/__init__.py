"""
The HTTP reverse proxy: routing, header policy, streaming relay, errors.
"""
