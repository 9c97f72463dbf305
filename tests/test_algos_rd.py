"""Tier 1: recursive doubling allreduce on the simulator: every world size of the shared set
(powers of two and not), awkward counts, every op, in and out of place, hazard-free, all
ranks bitwise identical; log2 p rounds (+2 with a fold)."""
from __future__ import annotations

import pytest

from collx.algos.rd import rd_allreduce
from collx.algos.registry import build_schedule
from collx.algos.simulator import cost

from algo_support import WORLD, check_allreduce, counts_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("n,count", [(n, c) for n in WORLD for c in counts_for(n)])
def test_rd_allreduce(n, count):
    s = build_schedule("allreduce", n, count=count, algo="rd")
    assert s.algo == "rd"
    check_allreduce(s, n, count)


@pytest.mark.parametrize("n,rounds", [(2, 1), (4, 2), (8, 3), (16, 4), (32, 5), (3, 3),
                                      (5, 4), (24, 6)])
def test_rounds_are_log2(n, rounds):
    assert cost(rd_allreduce(n, 2))["rounds"] == rounds


def test_tree_takes_twice_the_rounds():
    tree = build_schedule("allreduce", 8, count=2, algo="tree")
    assert cost(tree)["rounds"] == 2 * cost(rd_allreduce(8, 2))["rounds"]
