"""Tier 1: star (co-located parameter server) allreduce proven on the simulator against numpy
references on every rank, out of place and in place; all ranks bitwise identical on
non-integer floats; hazard-free in both modes; bytes per rank equal to the ring's."""
from __future__ import annotations

import pytest

from collx.algos.ir import Buf, Kind
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule
from collx.algos.ring import ring_allreduce
from collx.algos.simulator import cost
from collx.algos.star import star_allreduce

from algo_support import WORLD, check_allreduce, counts_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("n,count", [(n, c) for n in WORLD for c in counts_for(n)])
def test_star_allreduce(n, count):
    s = build_schedule("allreduce", n, count=count, algo="star")
    assert s.algo == "star" and s.scratch_counts == [0] * n
    check_allreduce(s, n, count)


def test_registered_not_default():
    assert "star" in ALGORITHMS["allreduce"] and DEFAULT["allreduce"] == "ring"


def test_small_cases():
    s = star_allreduce(1, 5)
    assert [(st.kind, st.buf, st.src_buf) for st in s.steps[0]] == [(Kind.COPY, Buf.OUT, Buf.IN)]
    assert all(not st for st in star_allreduce(4, 0).steps)
    # count < n: empty shards send nothing; rank 2 owns nothing and only pushes / pulls
    s = star_allreduce(4, 2)
    assert [st.kind for st in s.steps[2]] == [Kind.SEND, Kind.SEND, Kind.RECV, Kind.RECV]
    with pytest.raises(ValueError):
        star_allreduce(0, 4)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8, 13, 16, 32])
@pytest.mark.parametrize("count", [64 * 32, 1009])
def test_cost(n, count):
    c = cost(star_allreduce(n, count), itemsize=4)
    ring = cost(ring_allreduce(n, count, 0), itemsize=4)
    # two phases of n - 1 messages per rank: push then pull
    assert c["msgs_sent"] == [2 * (n - 1)] * n and c["msgs_recv"] == [2 * (n - 1)] * n
    # the owner's fixed-order reduces are chained: n - 1 reduce rounds + 1 pull round
    assert c["rounds"] == n
    # bytes per rank as the ring's, up to the rounding of uneven shards
    for r in range(n):
        assert abs(c["bytes_sent"][r] - ring["bytes_sent"][r]) <= 4 * 2 * n
    assert abs(c["total_bytes"] - 2 * (n - 1) * count * 4) <= 4 * 2 * n * n
    if count % n == 0:
        assert c["bytes_sent"] == ring["bytes_sent"] == [2 * (n - 1) * count // n * 4] * n
