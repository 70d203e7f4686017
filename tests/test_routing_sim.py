"""
The routing simulation (bench/routing_sim.py), small and seeded: the real
placement, exchange and usage book through two days of work, against round
robin and least-loaded placement on the same workload. Keeps the policy
proven: if a change to placement makes it move conversations for nothing,
move more than the baselines, serve fewer turns or spend more on API keys
here, this fails.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def sim() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "routing_sim.py"
    spec = importlib.util.spec_from_file_location("routing_sim", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["routing_sim"] = module
    spec.loader.exec_module(module)
    return module


def test_the_policy_beats_round_robin_and_least_loaded(sim: ModuleType) -> None:
    rows = {row["policy"]: row for row in sim.compare(sim.SCENARIOS["small"])}
    ours = rows.pop("subrouter")
    assert ours["turns"] > 5000 and ours["served_by_api_key"] > 0  # the pool runs short
    assert ours["needless_moves"] == 0
    for other in rows.values():
        assert ours["served"] >= other["served"], (ours, other)
        assert ours["api_key_dollars"] <= other["api_key_dollars"] + 0.01, (ours, other)
        assert ours["moved"] < other["moved"], (ours, other)
        assert ours["usage_limit_answers"] < other["usage_limit_answers"], (ours, other)
    # the forecast was there before windows filled, and not wildly off
    assert ours["windows_filled"] > 0 and ours["fills_with_forecast"] > 0
    assert ours["forecast_median_abs_error_min"] is not None


def test_the_workload_is_seeded(sim: ModuleType) -> None:
    workload = sim.SCENARIOS["small"]
    first, again = sim.generate(workload), sim.generate(workload)
    assert first == again
    other = sim.generate(sim.Workload(seed=workload.seed + 1, days=2))
    assert [c.start for c in other] != [c.start for c in first]
