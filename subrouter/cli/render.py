# -*- test-case-name: tests.test_cli_tty,tests.test_cx -*-
"""
How the command line shows things, in one place: colour (only on a terminal,
never with ``NO_COLOR``), usage bars, percentages, durations, masked keys and
aligned tables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import IO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

RED = "31"
YELLOW = "33"
GREEN = "32"
DIM = "2"
BOLD = "1"


def colour_wanted(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """
    Whether to colour what goes to ``stream``: never with ``NO_COLOR`` (any
    non-empty value, https://no-color.org), ``CX_NO_COLOR`` or
    ``TERM=dumb``; always with ``FORCE_COLOR`` (non-empty, not ``0``);
    otherwise only on a terminal.
    """
    if environ.get("NO_COLOR") or environ.get("CX_NO_COLOR") is not None:
        return False
    if environ.get("TERM") == "dumb":
        return False
    force = environ.get("FORCE_COLOR", "")
    if force and force != "0":
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, code: str | None, on: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if on and code and text else text


def visible_width(text: str) -> int:
    return len(_ANSI.sub("", text))


def used_colour(used_percent: float) -> str:
    """
    Red from 90% used, yellow from 70%, else green.
    """
    return RED if used_percent >= 90 else YELLOW if used_percent >= 70 else GREEN


def bar(used_percent: float, width: int = 10, colour: bool = False) -> str:
    """
    ``[####------]``: the used part of a window.
    """
    filled = max(0, min(width, round(used_percent / 100 * width)))
    inside = paint("#" * filled, used_colour(used_percent), colour) + "-" * (width - filled)
    return f"[{inside}]"


def percent(fraction: float) -> str:
    """
    ``0.7`` → ``70%``.
    """
    return f"{fraction * 100:.0f}%"


def duration(seconds: float) -> str:
    """
    ``2d 3h``, ``4h 12m``, ``9m``, ``<1m``; ``now`` when it is over.
    """
    seconds = int(seconds)
    if seconds <= 0:
        return "now"
    if seconds < 60:
        return "<1m"
    hours, rest = divmod(seconds, 3600)
    days, hours = divmod(hours, 24)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m"


def mask(key: str) -> str:
    """
    A key as ``cx`` shows it: the first 12 and last 6 characters of a long
    key, nothing of a short one.
    """
    return f"{key[:12]}***{key[-6:]}" if len(key) > 18 else "***"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], colour: bool = False,
          right: Sequence[int] = ()) -> str:
    """
    An aligned table with a header line (dimmed in colour); cells may hold
    colour codes.

    :param right: the columns aligned right (numbers).
    """
    widths = [visible_width(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], visible_width(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            pad = " " * (widths[i] - visible_width(cell))
            out.append(pad + cell if i in right else cell + pad)
        return "  ".join(out).rstrip()

    header = line([h.upper() for h in headers])
    lines = [paint(header, DIM, colour), *(line(r) for r in rows)]
    return "\n".join(lines) + "\n"
