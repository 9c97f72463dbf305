"""Tier 1: tree allreduce (binomial reduce to rank 0 + binomial broadcast) proven on the
simulator against numpy references on every rank, out of place and in place, unchunked and
chunked; all ranks bitwise identical on non-integer floats; rounds grow like log2 n."""
from __future__ import annotations

import math

import pytest

from collx.algos.ir import Buf, Kind
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule
from collx.algos.simulator import cost
from collx.algos.tree import tree_allreduce

from algo_support import WORLD, check_allreduce, counts_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("n,count", [(n, c) for n in WORLD for c in counts_for(n)])
def test_tree_allreduce(n, count):
    for cc in (0, 3):
        s = build_schedule("allreduce", n, count=count, chunk_count=cc, algo="tree")
        assert s.algo == "tree"
        check_allreduce(s, n, count, sim_seeds=(cc,), tag=f"cc {cc}")


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
