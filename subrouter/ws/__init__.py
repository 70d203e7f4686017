"""
The Responses WebSocket relay.
"""
