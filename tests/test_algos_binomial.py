"""Tier 1: binomial-tree broadcast / reduce / gather(v) / scatter(v) / barrier proven on the
simulator against numpy references, for roots 0, n // 2 and n - 1.

Thinned product: every world size x every count x both in-place modes; chunk_count 0 and 3
for broadcast and reduce, where chunk_count=3 runs only root n - 1 and, for reduce, only op
"sum" (chunking depends on neither; chunk_count=0 runs all roots and sum, max, prod, min)."""
from __future__ import annotations

import numpy as np
import pytest

from collx.algos.binomial import binomial_barrier, children, parent, subtree_size
from collx.algos.ir import Kind
from collx.algos.registry import build_schedule, even_split
from collx.algos.simulator import check_hazards, cost, simulate

WORLD = [1, 2, 3, 4, 5, 7, 8, 11, 13, 16, 24, 32]
REFS = {"sum": np.sum, "max": np.max, "prod": np.prod, "min": np.min}
DTYPES = {"sum": np.float32, "max": np.int64, "prod": np.float64, "min": np.int32}


def counts_for(n: int) -> list[int]:
    return sorted({0, 1, max(n - 1, 0), 7, 1000, 1009})


def roots_for(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


def make_inputs(in_counts, op, seed):
    rng = np.random.default_rng(seed)
    lo, hi = ((-1, 3) if op == "prod" else (-50, 51))
    xs = []
    for c in in_counts:
        x = rng.integers(lo, hi, size=c).astype(DTYPES[op])
        if op == "prod":
            x[x == 0] = 1
        xs.append(x)
    return xs


def vary(n: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 9, size=n)
    c[rng.random(n) < 0.3] = 0
    return [int(v) for v in c]


def count_cases(n: int) -> list[list[int]]:
    cases = [even_split(c, n) for c in counts_for(n)]
    cases += [vary(n, n), vary(n, n + 1), [0] * (n - 1) + [5], [3] + [0] * (n - 1)]
    return cases


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", WORLD)
def test_tree_shape(n):
    """Every non-root has one parent that lists it as a child; subtrees are contiguous
    relative ranges that partition [0, n)."""
    seen = {0}
    for v in range(n):
        for c in children(v, n):
            assert parent(c) == v and c not in seen
            seen.add(c)
            assert c + subtree_size(c, n) <= v + subtree_size(v, n)
        assert sum(subtree_size(c, n) for c in children(v, n)) == subtree_size(v, n) - 1
    assert seen == set(range(n))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", WORLD)
def test_broadcast(n):
    for count in counts_for(n):
        for cc in (0, 3):
            for root in (roots_for(n) if cc == 0 else [n - 1]):
                s = build_schedule("broadcast", n, count=count, root=root, chunk_count=cc)
                assert s.out_counts == [count] * n
                assert s.in_counts == [count if r == root else 0 for r in range(n)]
                check_hazards(s, in_place=False)
                check_hazards(s, in_place=True)
                for ip in (False, True):
                    xs = make_inputs(s.in_counts, "sum", seed=count + root)
                    outs = simulate(s, xs, in_place=ip, seed=root + cc)
                    for r in range(n):
                        np.testing.assert_array_equal(outs[r], xs[root], err_msg=f"rank {r}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", WORLD)
def test_reduce(n):
    for count in counts_for(n):
        for cc in (0, 3):
            for root in (roots_for(n) if cc == 0 else [n - 1]):
                s = build_schedule("reduce", n, count=count, root=root, chunk_count=cc)
                assert s.in_counts == [count] * n
                assert s.out_counts == [count if r == root else 0 for r in range(n)]
                assert set(s.scratch_counts) <= {0, count}
                check_hazards(s, in_place=False)
                check_hazards(s, in_place=True)
                for op in (REFS if cc == 0 else ["sum"]):
                    for ip in (False, True):
                        xs = make_inputs(s.in_counts, op, seed=count * 7 + root)
                        ref = REFS[op](np.stack(xs), axis=0).astype(DTYPES[op])
                        outs = simulate(s, xs, op=op, in_place=ip, seed=cc)
                        np.testing.assert_array_equal(outs[root], ref,
                                                      err_msg=f"root {root} {op} ip {ip}")
                        assert all(outs[r].size == 0 for r in range(n) if r != root)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", WORLD)
def test_gatherv(n):
    for case, counts in enumerate(count_cases(n)):
        for root in roots_for(n):
            s = build_schedule("gather", n, counts=counts, root=root)
            assert s.in_counts == counts
            assert s.out_counts == [sum(counts) if r == root else 0 for r in range(n)]
            assert sum(s.scratch_counts) <= sum(counts) * n
            check_hazards(s, in_place=False)
            check_hazards(s, in_place=True)
            for ip in (False, True):
                xs = make_inputs(counts, "max", seed=case)
                outs = simulate(s, xs, in_place=ip, seed=case + root)
                np.testing.assert_array_equal(outs[root], np.concatenate(xs),
                                              err_msg=f"root {root} counts {counts}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", WORLD)
def test_scatterv(n):
    for case, counts in enumerate(count_cases(n)):
        displ = np.cumsum([0] + counts)
        for root in roots_for(n):
            s = build_schedule("scatter", n, counts=counts, root=root)
            assert s.out_counts == counts
            assert s.in_counts == [sum(counts) if r == root else 0 for r in range(n)]
            check_hazards(s, in_place=False)
            check_hazards(s, in_place=True)
            for ip in (False, True):
                xs = make_inputs(s.in_counts, "min", seed=case)
                outs = simulate(s, xs, in_place=ip, seed=case + root)
                for r in range(n):
                    np.testing.assert_array_equal(outs[r], xs[root][displ[r]:displ[r + 1]],
                                                  err_msg=f"rank {r} root {root} {counts}")


def _heard_from(s):
    """Per rank, the set of ranks whose start causally precedes the rank's last step:
    information flows along deps and from a SEND to its matching RECV (a send's completion
    tells the sender nothing)."""
    n = s.world_size
    sends = {}
    for r in range(n):
        for i, st in enumerate(s.steps[r]):
            if st.kind == Kind.SEND:
                sends.setdefault((r, st.peer), []).append(i)
    know = [[0] * len(s.steps[r]) for r in range(n)]
    seen_recv = {}
    changed = True
    while changed:          # fixpoint; schedules here are tiny
        changed = False
        seen_recv.clear()
        for r in range(n):
            for i, st in enumerate(s.steps[r]):
                k = 1 << r
                for d in st.deps:
                    k |= know[r][d]
                if st.kind in (Kind.RECV, Kind.RECV_REDUCE):
                    j = seen_recv.get((st.peer, r), 0)
                    seen_recv[(st.peer, r)] = j + 1
                    k |= know[st.peer][sends[(st.peer, r)][j]]
                if k != know[r][i]:
                    know[r][i] = k
                    changed = True
    return [(1 << n) - 1 if not know[r] else max(know[r]) for r in range(n)], know


@pytest.mark.timeout(30)
@pytest.mark.parametrize("n", WORLD)
def test_barrier(n):
    s = build_schedule("barrier", n)
    assert s.in_counts == s.out_counts == s.scratch_counts == [0] * n
    assert all(st.count == 0 for steps in s.steps for st in steps)
    simulate(s, [None] * n)
    check_hazards(s, in_place=True)
    _, know = _heard_from(s)
    everyone = (1 << n) - 1
    for r in range(n):
        if n > 1:   # the rank's final steps have heard from every rank
            acc = 0
            for k in know[r]:
                acc |= k
            assert acc == everyone, f"rank {r} may leave the barrier before all arrived"
    if n > 1:
        depth = max(bin(v).count("1") for v in range(n))    # tree depth
        assert cost(binomial_barrier(n))["rounds"] == 2 * depth


@pytest.mark.timeout(30)
def test_broadcast_pipelines_and_costs_log_rounds():
    n = 16
    s = build_schedule("broadcast", n, count=1600, root=5)
    assert cost(s)["rounds"] == 4
    piped = cost(build_schedule("broadcast", n, count=1600, root=5, chunk_count=100),
                 alpha=1.0, beta=1.0)
    plain = cost(s, alpha=1.0, beta=1.0)
    assert piped["time"] < plain["time"]
