"""
The layout of the code and its tests stays honest: every ``test-case-name``
header names test modules that exist, and tests take their helpers from
``tests/support/``, never from another test module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
HEADER = re.compile(r"^# -\*- test-case-name: (?P<names>[\w.,]+) -\*-$")


def _sources() -> list[Path]:
    return sorted([*(ROOT / "subrouter").rglob("*.py"), *(ROOT / "twisted").rglob("*.py")])


def test_every_test_case_name_names_an_existing_test_module() -> None:
    wrong = []
    headers = 0
    for path in _sources():
        with path.open(encoding="utf-8") as f:
            first = f.readline().rstrip("\n")
        match = HEADER.match(first)
        if not match:
            assert "test-case-name" not in first, f"{path}: malformed header {first!r}"
            continue
        headers += 1
        for name in match.group("names").split(","):
            module = ROOT.joinpath(*name.split(".")).with_suffix(".py")
            if not (name.startswith("tests.test_") and module.is_file()):
                wrong.append(f"{path.relative_to(ROOT)}: {name}")
    assert headers > 0, "no test-case-name header found: is the pattern right?"
    assert wrong == [], "test-case-name headers naming no test module:\n" + "\n".join(wrong)


def test_tests_import_helpers_from_tests_support_only() -> None:
    wrong = []
    for path in sorted(TESTS.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("tests.") and not name.startswith("tests.support"):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert wrong == [], (
        "tests import from other test modules; move the helper into tests/support/ "
        "(tests/live.py is now tests/support/daemon.py):\n" + "\n".join(wrong)
    )
