"""Tier 1: recursive halving-doubling allreduce (with the fold for non-powers of two) proven
on the simulator against numpy references on every rank, out of place and in place; all
ranks bitwise identical on non-integer floats; fewer rounds than the ring."""
from __future__ import annotations

import pytest

from collx.algos.hd import hd_allreduce
from collx.algos.ir import Buf, Kind
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule
from collx.algos.ring import ring_allreduce
from collx.algos.simulator import cost

from algo_support import WORLD, check_allreduce, counts_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("n,count", [(n, c) for n in WORLD for c in counts_for(n)])
def test_hd_allreduce(n, count):
    s = build_schedule("allreduce", n, count=count, algo="hd")
    assert s.algo == "hd" and s.scratch_counts == [0] * n
    check_allreduce(s, n, count, sim_seeds=(0, 1))


def test_registered_not_default():
    assert "hd" in ALGORITHMS["allreduce"] and DEFAULT["allreduce"] == "ring"
    # chunk_count is accepted (uniform kwargs) and ignored
    assert build_schedule("allreduce", 6, count=9, algo="hd", chunk_count=2).steps == \
        hd_allreduce(6, 9).steps


def test_small_cases():
    s = hd_allreduce(1, 5)
    assert [(st.kind, st.buf, st.src_buf) for st in s.steps[0]] == [(Kind.COPY, Buf.OUT, Buf.IN)]
    assert all(not st for st in hd_allreduce(6, 0).steps)
    # fewer elements than blocks: empty ranges send nothing
    assert all(st.count > 0 for r in range(8) for st in hd_allreduce(8, 3).steps[r])


def test_fewer_rounds_than_ring():
    hd, ring = cost(hd_allreduce(16, 16)), cost(ring_allreduce(16, 16))
    assert hd["rounds"] == 8 and ring["rounds"] == 30
    assert hd["rounds"] < ring["rounds"]


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_power_of_two_traffic_is_bandwidth_optimal(n):
    count = 64 * n
    c = cost(hd_allreduce(n, count), itemsize=4)
    assert c["bytes_sent"] == [2 * (n - 1) * count // n * 4] * n
    assert c["rounds"] == 2 * (n.bit_length() - 1)


@pytest.mark.parametrize("n", [3, 5, 7, 11, 13, 24])
def test_fold_costs_two_rounds(n):
    p = 1 << (n.bit_length() - 1)
    count = 64 * p
    c = cost(hd_allreduce(n, count), itemsize=4)
    assert c["rounds"] == 2 * (p.bit_length() - 1) + 2
    rem = n - p
    for r in range(n):
        if r < 2 * rem and r % 2:
            assert c["bytes_sent"][r] == count * 4
        elif r < 2 * rem:
            assert c["bytes_sent"][r] == (2 * (p - 1) * count // p + count) * 4
        else:
            assert c["bytes_sent"][r] == 2 * (p - 1) * count // p * 4
