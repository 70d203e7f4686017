"""
The periodic jobs, each a TimerService: account rescans, usage polling, the
state saver, auto-switch, transcript retention and the transcript mirror.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime


def every(name: str, interval: float, job: Callable[[], Any], clock: IReactorTime) -> TimerService:
    """
    A named TimerService that runs ``job`` now and every ``interval`` seconds
    on ``clock``.
    """
    timer = TimerService(interval, job)
    timer.clock = clock
    timer.setName(name)
    return timer
