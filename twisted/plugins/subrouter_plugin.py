"""
The twistd dropin: ``twistd -n subrouter --addr 127.0.0.1:31415``.

It names the tap module and nothing else, so twistd can list plugins without
importing the reactor or any of Subrouter.
"""

from twisted.application.service import ServiceMaker

subrouter = ServiceMaker(
    "subrouter",
    "subrouter.tap",
    "Route AI coding agents across several Codex/OpenAI accounts.",
    "subrouter",
)
