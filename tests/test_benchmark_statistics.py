"""The statistics `make bench` (analysis/bench.py) reports its start-up ratios with: the schedule that
interleaves every tool's pairs over the same rounds, and the distribution-free interval of a median."""

from __future__ import annotations

import sys
from collections import Counter

from conftest import REPO

sys.path.insert(0, str(REPO))
from analysis import bench  # noqa: E402 - needs the repository on sys.path


def test_interleaved_spreads_every_tools_pairs_over_the_same_rounds() -> None:
    pairs = {"lynshim run": 60, "in-process": 60, "control": 60, "importtime": 20, "viztracer": 10}
    plan = bench.interleaved(pairs)
    assert len(plan) == 60
    assert Counter(name for round_ in plan for name in round_) == pairs
    assert all(len(set(round_)) == len(round_) for round_ in plan)
    # Each tool's pairs are spread over the whole run, not bunched at its start: every tenth of the rounds
    # holds a tenth of each tool's pairs.
    for tenth in range(10):
        counts = Counter(name for round_ in plan[tenth * 6 : (tenth + 1) * 6] for name in round_)
        assert counts == {name: n // 10 for name, n in pairs.items()}, tenth
    # The order rotates: no tool runs first in every round.
    assert len({round_[0] for round_ in plan}) > 1
    assert bench.interleaved({}) == []


def test_median_interval_is_the_binomial_order_statistics() -> None:
    # 20 values: x(6)..x(15), 95.9 % (the docstring's example).
    assert bench.median_interval([float(v) for v in range(1, 21)]) == (6.0, 15.0)
    assert bench.median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert bench.median_interval([float(v) for v in range(1, 7)]) == (1.0, 6.0)
