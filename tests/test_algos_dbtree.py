"""Tier 1: double binary tree allreduce / broadcast / reduce proven on the simulator against
numpy references on every rank, out of place and in place, unchunked and chunked, at roots
{0, n // 2, n - 1}; allreduce ranks bitwise identical on non-integer floats; the two trees'
inner nodes are disjoint, and no rank sends more than 2x the vector (unlike a binomial root)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from collx.algos.binomial import binomial_reduce
from collx.algos.dbtree import (_kids, dbtree_allreduce, dbtree_broadcast, dbtree_parents,
                                dbtree_reduce)
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule
from collx.algos.simulator import check_hazards, cost, simulate
from collx.algos.tree import tree_allreduce

from algo_support import DTYPES, REFS, WORLD, check_allreduce, counts_for, make_inputs

pytestmark = pytest.mark.timeout(60)


def roots_for(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


CASES = [(n, c) for n in WORLD for c in counts_for(n)]


@pytest.mark.parametrize("n,count", CASES)
def test_dbtree_allreduce(n, count):
    for cc in (0, 3):
        s = build_schedule("allreduce", n, count=count, chunk_count=cc, algo="dbtree")
        assert s.algo == "dbtree" and s.op == "allreduce"
        check_allreduce(s, n, count, sim_seeds=(cc,), tag=f"cc {cc}")


@pytest.mark.parametrize("n,count", CASES)
def test_dbtree_broadcast(n, count):
    for root in roots_for(n):
        for cc in (0, 3):
            s = build_schedule("broadcast", n, count=count, root=root, chunk_count=cc,
                               algo="dbtree")
            assert s.algo == "dbtree" and s.op == "broadcast"
            assert s.in_counts == [count if r == root else 0 for r in range(n)]
            assert s.out_counts == [count] * n
            check_hazards(s, in_place=False)
            check_hazards(s, in_place=True)
            rng = np.random.default_rng(n * 7 + count + root)
            x = rng.random(count, dtype=np.float32)
            xs = [x if r == root else None for r in range(n)]
            for ip in (False, True):
                outs = simulate(s, xs, in_place=ip, seed=root + cc + ip)
                for r in range(n):
                    assert outs[r].tobytes() == x.tobytes(), f"rank {r} root {root} cc {cc}"


@pytest.mark.parametrize("n,count", CASES)
def test_dbtree_reduce(n, count):
    for root in roots_for(n):
        for cc in (0, 3):
            s = build_schedule("reduce", n, count=count, root=root, chunk_count=cc,
                               algo="dbtree")
            assert s.algo == "dbtree" and s.op == "reduce"
            assert s.in_counts == [count] * n
            assert s.out_counts == [count if r == root else 0 for r in range(n)]
            check_hazards(s, in_place=False)
            check_hazards(s, in_place=True)
            for op in REFS:
                xs = make_inputs(n, count, op, seed=n * 1000 + count + root)
                ref = REFS[op](np.stack(xs), axis=0).astype(DTYPES[op])
                for ip in (False, True):
                    outs = simulate(s, xs, op=op, in_place=ip, seed=count + cc + ip)
                    np.testing.assert_array_equal(outs[root], ref,
                                                  err_msg=f"root {root} {op} ip {ip} cc {cc}")
                    assert all(outs[r].size == 0 for r in range(n) if r != root)


def test_registered_not_default():
    for op in ("allreduce", "broadcast", "reduce"):
        assert "dbtree" in ALGORITHMS[op] and DEFAULT[op] != "dbtree"
    assert DEFAULT["allreduce"] == "ring"
    assert DEFAULT["broadcast"] == DEFAULT["reduce"] == "binomial"


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 11, 13, 16, 24, 32, 33, 100])
def test_trees_disjoint_binary(n):
    pa, pb = dbtree_parents(n)
    for par in (pa, pb):
        assert par[0] == -1 and all(0 <= par[v] < n for v in range(1, n))
        kids = _kids(par)
        assert len(kids[0]) == 1 and max(len(k) for k in kids) <= 2
        for v in range(n):           # every rank reaches the root in <= log2 n + 2 hops
            d = 0
            while v:
                v, d = par[v], d + 1
            assert d <= math.ceil(math.log2(n)) + 2
    ka, kb = _kids(pa), _kids(pb)
    assert not {v for v in range(1, n) if ka[v]} & {v for v in range(1, n) if kb[v]}


@pytest.mark.parametrize("n", [4, 8, 13, 16, 24, 32])
def test_bytes_per_rank(n):
    N = 1000
    c = cost(dbtree_allreduce(n, N), itemsize=1)
    assert c["max_bytes_sent"] <= 2 * N
    assert c["total_bytes"] == 2 * (n - 1) * N       # every edge: its half up and down
    t = cost(tree_allreduce(n, N), itemsize=1)
    assert t["bytes_sent"][0] == math.ceil(math.log2(n)) * N    # the binomial root
    for root in (0, n - 1):
        for s in (dbtree_broadcast(n, N, root), dbtree_reduce(n, N, root)):
            assert cost(s, itemsize=1)["max_bytes_sent"] <= N
    if n >= 8:
        assert cost(binomial_reduce(n, N), itemsize=1)["bytes_recv"][0] > 2 * N
        assert cost(dbtree_reduce(n, N), itemsize=1)["bytes_recv"][0] == N


@pytest.mark.parametrize("n", [4, 8, 16, 32])
def test_rounds_and_pipelining(n):
    L = math.ceil(math.log2(n))
    c = cost(dbtree_allreduce(n, 64), itemsize=4)
    # depth about log2 n each way, plus an inner rank's two RECV_REDUCEs one after the other
    assert 2 * L <= c["rounds"] <= 3 * L
    plain = cost(dbtree_allreduce(n, 256), itemsize=4, alpha=1.0, beta=1.0)
    piped = cost(dbtree_allreduce(n, 256, 16), itemsize=4, alpha=1.0, beta=1.0)
    assert plain["bytes_sent"] == piped["bytes_sent"]
    assert piped["critical_bytes"] < plain["critical_bytes"]
    assert piped["rounds"] <= 3 * L + 8 - 1      # 8 chunks per half


def test_small_cases():
    s = dbtree_allreduce(1, 5)
    assert len(s.steps[0]) == 1 and s.steps[0][0].buf.name == "OUT"
    assert all(not st for st in dbtree_allreduce(4, 0).steps)
    assert all(not st for st in dbtree_broadcast(4, 0, 2).steps)
    assert dbtree_reduce(1, 3).out_counts == [3]
    # scratch: one half on inner non-root ranks (trees' inner nodes are disjoint)
    s = dbtree_allreduce(8, 10)
    assert s.scratch_counts[0] == 0 and set(s.scratch_counts) <= {0, 5}
    assert all(st.count <= 3 for st in dbtree_allreduce(8, 10, 3).steps[2])
    assert dbtree_broadcast(8, 10, 3).scratch_counts == [0] * 8
    with pytest.raises(ValueError):
        dbtree_broadcast(4, 10, root=4)
