"""Tier 1: star (co-located parameter server) allreduce proven on the simulator against numpy
references on every rank, out of place and in place; all ranks bitwise identical on
non-integer floats; hazard-free in both modes; bytes per rank equal to the ring's."""
from __future__ import annotations

import numpy as np
import pytest

from collx.algos.ir import Buf, Kind
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule
from collx.algos.ring import ring_allreduce
from collx.algos.simulator import check_hazards, cost, simulate
from collx.algos.star import star_allreduce

pytestmark = pytest.mark.timeout(60)

WORLD = [1, 2, 3, 4, 5, 7, 8, 11, 13, 16, 24, 32]
REFS = {"sum": np.sum, "max": np.max, "prod": np.prod}
DTYPES = {"sum": np.float32, "max": np.int64, "prod": np.float64}


def counts_for(n: int) -> list[int]:
    return sorted({0, 1, max(n - 1, 0), 7, 1000, 1009})


def make_inputs(n, count, op, seed):
    rng = np.random.default_rng(seed)
    lo, hi = ((-1, 3) if op == "prod" else (-50, 51))
    xs = []
    for _ in range(n):
        x = rng.integers(lo, hi, size=count).astype(DTYPES[op])
        if op == "prod":
            x[x == 0] = 1          # values in {-1, 1, 2}: products stay exact
        xs.append(x)
    return xs


@pytest.mark.parametrize("n,count", [(n, c) for n in WORLD for c in counts_for(n)])
def test_star_allreduce(n, count):
    s = build_schedule("allreduce", n, count=count, algo="star")
    assert s.algo == "star"
    assert s.in_counts == [count] * n and s.out_counts == [count] * n
    assert s.scratch_counts == [0] * n
    check_hazards(s, in_place=False)
    check_hazards(s, in_place=True)
    for op in REFS:
        xs = make_inputs(n, count, op, seed=n * 1000 + count)
        ref = REFS[op](np.stack(xs), axis=0).astype(DTYPES[op])
        for ip in (False, True):
            outs = simulate(s, xs, op=op, in_place=ip, seed=count + ip)
            for r in range(n):
                np.testing.assert_array_equal(outs[r], ref, err_msg=f"rank {r} {op} ip {ip}")
    # non-integer floats: only the owner computes a shard, everyone else copies it
    rng = np.random.default_rng(n + count)
    xs = [rng.random(count, dtype=np.float32) for _ in range(n)]
    for ip in (False, True):
        outs = simulate(s, xs, op="sum", in_place=ip, seed=7 + ip)
        for r in range(1, n):
            assert outs[r].tobytes() == outs[0].tobytes(), f"rank {r} ip {ip}"


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
