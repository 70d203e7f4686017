"""
Atomic private writes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from subrouter.files import atomic_write, dump_json


def test_atomic_write_creates_0600_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    old = os.umask(0)
    try:
        atomic_write(str(target), b"{}\n")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    os.chmod(target, 0o644)
    atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    with pytest.raises(TypeError):
        atomic_write(str(target), "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_dump_json_matches_the_cx_layout() -> None:
    assert dump_json({"a": [1]}) == b'{\n  "a": [\n    1\n  ]\n}\n'
