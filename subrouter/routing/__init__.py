"""
Policy in motion: identifying a request, keeping usage known, and the exchange
(place, fresh token, send, retry elsewhere) that the HTTP proxy and the
WebSocket relay share.
"""
