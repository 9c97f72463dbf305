"""Tier 1: tree allreduce (binomial reduce to rank 0 + binomial broadcast) proven on the
simulator against numpy references on every rank, out of place and in place, unchunked and
chunked; all ranks bitwise identical on non-integer floats; rounds grow like log2 n."""
from __future__ import annotations

import math

import numpy as np
import pytest

from collx.algos.ir import Buf, Kind
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule
from collx.algos.simulator import check_hazards, cost, simulate
from collx.algos.tree import tree_allreduce

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
def test_tree_allreduce(n, count):
    for cc in (0, 3):
        s = build_schedule("allreduce", n, count=count, chunk_count=cc, algo="tree")
        assert s.algo == "tree"
        assert s.in_counts == [count] * n and s.out_counts == [count] * n
        check_hazards(s, in_place=False)
        check_hazards(s, in_place=True)
        for op in REFS:
            xs = make_inputs(n, count, op, seed=n * 1000 + count)
            ref = REFS[op](np.stack(xs), axis=0).astype(DTYPES[op])
            for ip in (False, True):
                outs = simulate(s, xs, op=op, in_place=ip, seed=count + cc + ip)
                for r in range(n):
                    np.testing.assert_array_equal(outs[r], ref,
                                                  err_msg=f"rank {r} {op} ip {ip} cc {cc}")
        # non-integer floats: rank 0 computes each element once, everyone else copies it
        rng = np.random.default_rng(n + count)
        xs = [rng.random(count, dtype=np.float32) for _ in range(n)]
        for ip in (False, True):
            outs = simulate(s, xs, op="sum", in_place=ip, seed=7 + ip)
            for r in range(1, n):
                assert outs[r].tobytes() == outs[0].tobytes(), f"rank {r} ip {ip} cc {cc}"


def test_registered_not_default():
    assert "tree" in ALGORITHMS["allreduce"] and DEFAULT["allreduce"] == "ring"


def test_small_cases():
    s = tree_allreduce(1, 5)
    assert [(st.kind, st.buf, st.src_buf) for st in s.steps[0]] == [(Kind.COPY, Buf.OUT, Buf.IN)]
    assert all(not st for st in tree_allreduce(4, 0).steps)
    # scratch only on interior ranks other than rank 0
    assert tree_allreduce(8, 10).scratch_counts == [0, 0, 10, 0, 10, 0, 10, 0]
    assert all(st.count <= 3 for st in tree_allreduce(8, 10, 3).steps[2])


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 5, 13, 24])
def test_rounds_grow_like_log2(n):
    L = math.ceil(math.log2(n))
    c = cost(tree_allreduce(n, 64), itemsize=4)
    # rank 0 reduces its L children one after another, then the broadcast goes down the
    # tree's depth (L for powers of two, possibly less otherwise)
    assert L < c["rounds"] <= 2 * L
    if n & (n - 1) == 0:
        assert c["rounds"] == 2 * L
    # every tree edge carries the vector once up, once down; the root sends L of them
    assert c["bytes_sent"][0] == L * 64 * 4
    assert c["total_bytes"] == 2 * (n - 1) * 64 * 4


def test_chunking_pipelines():
    plain = cost(tree_allreduce(16, 256), itemsize=4, alpha=1.0, beta=1.0)
    piped = cost(tree_allreduce(16, 256, 32), itemsize=4, alpha=1.0, beta=1.0)
    assert plain["bytes_sent"] == piped["bytes_sent"]
    assert piped["critical_bytes"] < plain["critical_bytes"]
