"""
What every outbound call shares: the connection pool, TLS policy, Agent,
URL rules and header policy.
"""
