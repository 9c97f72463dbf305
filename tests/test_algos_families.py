"""Tier 1: the algorithm families beyond allreduce, proven on the simulator.

  allgather:hd, reducescatter:hd   recursive doubling / halving with the fold, any n, any
                                   per-rank counts (zeros, fewer than ranks, uneven)
  broadcast:tree, reduce:tree      the binomial trees under the name "tree"
  broadcast:hier, allgather:hier,  two-level, for several host shapes incl. uneven groups
  reducescatter:hier               and local orders that are not rank order

Every schedule: hazard-free out of place and in place, exact against numpy on every rank in
both modes and in several completion orders; reducescatter results are bitwise the same in
every completion order and mode (one chain reduces each element); allgather / broadcast
results bitwise the same on every rank. Cost: log2 p rounds for hd on powers of two, and the
minimum inter-host bytes for hier.
"""
from __future__ import annotations

import numpy as np
import pytest

from collx.algos.binomial import binomial_broadcast, binomial_reduce
from collx.algos.hd_allgather import hd_allgather
from collx.algos.hd_reducescatter import hd_reducescatter
from collx.algos.hier import default_groups
from collx.algos.hier_collectives import hier_allgather, hier_broadcast, hier_reducescatter
from collx.algos.ir import Kind
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule, even_split
from collx.algos.ring import ring_allgather, ring_reducescatter
from collx.algos.simulator import check_hazards, cost, simulate

from algo_support import WORLD

pytestmark = pytest.mark.timeout(60)

REFS = {"sum": np.add, "max": np.maximum, "prod": np.multiply}
DTYPES = {"sum": np.float32, "max": np.int64, "prod": np.float64}


def counts_cases(n: int) -> list[list[int]]:
    """Zeros, ones, fewer elements than ranks, uneven, one non-empty rank (first / last),
    a prime total split as evenly as possible."""
    rng = np.random.default_rng(n)
    few = [1 if r % 3 == 0 else 0 for r in range(n)]
    return [[0] * n, [1] * n, few, [int(c) for c in rng.integers(0, 9, n)],
            [0] * (n - 1) + [5], [7] + [0] * (n - 1), [(r * 7) % 5 + 3 for r in range(n)],
            even_split(1009, n)]


def values(k: int, op: str, rng) -> np.ndarray:
    x = rng.integers(-1, 3, size=k) if op == "prod" else rng.integers(-50, 51, size=k)
    if op == "prod":
        x[x == 0] = 1
    return x.astype(DTYPES[op])


def check_allgather(s, counts, seeds=(0, 1)):
    n = len(counts)
    assert s.in_counts == list(counts) and s.out_counts == [sum(counts)] * n
    for ip in (False, True):
        check_hazards(s, in_place=ip)
    rng = np.random.default_rng(sum(counts) + n)
    xs = [rng.random(c, dtype=np.float32) for c in counts]
    want = np.concatenate(xs)
    for ip in (False, True):
        for seed in seeds:
            outs = simulate(s, xs, in_place=ip, seed=seed + ip)
            for r in range(n):
                assert outs[r].tobytes() == want.tobytes(), f"rank {r} ip {ip} {counts}"


def check_reducescatter(s, counts, ops=tuple(REFS), seeds=(0, 1)):
    n, total = len(counts), sum(counts)
    assert s.in_counts == [total] * n and s.out_counts == list(counts)
    for ip in (False, True):
        check_hazards(s, in_place=ip)
    d = np.cumsum([0] + list(counts))
    rng = np.random.default_rng(total + n)
    for op in ops:
        xs = [values(total, op, rng) for _ in range(n)]
        ref = REFS[op].reduce(np.stack(xs), axis=0) if n else None
        for ip in (False, True):
            for seed in seeds:
                outs = simulate(s, xs, op=op, in_place=ip, seed=seed + ip)
                for r in range(n):
                    np.testing.assert_array_equal(outs[r], ref[d[r]:d[r + 1]],
                                                  err_msg=f"rank {r} {op} ip {ip} {counts}")
    # non-integer floats: the same bits whatever the completion order or mode
    xs = [rng.random(total, dtype=np.float32) for _ in range(n)]
    first = None
    for ip in (False, True):
        for seed in (3, 4, 5):
            got = b"".join(o.tobytes() for o in simulate(s, xs, in_place=ip, seed=seed))
            first = got if first is None else first
            assert got == first, f"bits depend on completion order / mode: {counts}"
    np.testing.assert_allclose(
        np.concatenate(simulate(s, xs, seed=3)) if total else np.zeros(0),
        np.sum(np.stack(xs).astype(np.float64), axis=0) if total else np.zeros(0), rtol=1e-5)


# ------------------------------------------------------------------ hd -------------------

@pytest.mark.parametrize("n", WORLD)
def test_hd_allgather(n):
    for counts in counts_cases(n):
        s = build_schedule("allgather", n, counts=counts, algo="hd")
        assert s.algo == "hd" and s.scratch_counts == [0] * n
        check_allgather(s, counts)


@pytest.mark.parametrize("n", WORLD)
def test_hd_reducescatter(n):
    for counts in counts_cases(n):
        s = build_schedule("reducescatter", n, counts=counts, algo="hd")
        assert s.algo == "hd"
        check_reducescatter(s, counts, ops=("sum", "max") if n > 13 else tuple(REFS))


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32])
def test_hd_power_of_two_rounds_and_bytes(n):
    k = n.bit_length() - 1
    counts = [16] * n
    for s, ring in ((hd_allgather(counts), ring_allgather(counts)),
                    (hd_reducescatter(counts), ring_reducescatter(counts))):
        c = cost(s, itemsize=4)
        assert c["rounds"] == k, s.op
        assert c["bytes_sent"] == [(n - 1) * 16 * 4] * n, s.op     # bandwidth-optimal
        assert c["bytes_sent"] == cost(ring, itemsize=4)["bytes_sent"]
        assert max(c["msgs_sent"]) == k


@pytest.mark.parametrize("n", [3, 5, 7, 11, 13, 24])
def test_hd_fold_adds_at_most_two_rounds(n):
    p = 1 << (n.bit_length() - 1)
    k = p.bit_length() - 1
    for s in (hd_allgather([8] * n), hd_reducescatter([8] * n)):
        assert cost(s)["rounds"] <= k + 2, s.op
        assert cost(s)["rounds"] < n - 1 or n <= 5


def test_hd_zero_counts_send_nothing():
    for s in (hd_allgather([0, 3, 0, 0, 2]), hd_reducescatter([0, 3, 0, 0, 2])):
        assert all(st.count > 0 for steps in s.steps for st in steps)
    assert all(not st for st in hd_allgather([0] * 6).steps)
    assert all(not st for st in hd_reducescatter([0] * 6).steps)


# ------------------------------------------------------------------ tree -----------------

@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13])
def test_tree_is_binomial_named_tree(n):
    for root in {0, n // 2, n - 1}:
        for cc in (0, 3):
            b = build_schedule("broadcast", n, count=10, root=root, chunk_count=cc, algo="tree")
            r = build_schedule("reduce", n, count=10, root=root, chunk_count=cc, algo="tree")
            assert b.algo == r.algo == "tree"
            assert b.steps == binomial_broadcast(n, 10, root, cc).steps
            assert r.steps == binomial_reduce(n, 10, root, cc).steps
            xs = [np.arange(10, dtype=np.int64) * (q + 1) for q in range(n)]
            for ip in (False, True):
                outs = simulate(b, [x if q == root else None for q, x in enumerate(xs)],
                                in_place=ip)
                assert all(np.array_equal(o, xs[root]) for o in outs)
                got = simulate(r, xs, in_place=ip)[root]
                np.testing.assert_array_equal(got, np.sum(np.stack(xs), axis=0))


def test_registered_names_and_defaults_unchanged():
    assert {"ring", "hd", "hier"} <= set(ALGORITHMS["allgather"])
    assert {"ring", "hd", "hier"} <= set(ALGORITHMS["reducescatter"])
    assert {"binomial", "tree", "hier", "dbtree"} <= set(ALGORITHMS["broadcast"])
    assert {"binomial", "tree", "dbtree"} <= set(ALGORITHMS["reduce"])
    assert DEFAULT["allgather"] == DEFAULT["reducescatter"] == "ring"
    assert DEFAULT["broadcast"] == DEFAULT["reduce"] == "binomial"


# ------------------------------------------------------------------ hier -----------------

SHAPES = [
    [[0]],
    [[1, 0]],
    [[0, 1], [2, 3]],
    [[0, 1, 2], [3, 4, 5]],
    [[0], [1], [2]],
    [[0, 1, 2, 3]],
    [[0, 1], [2, 3, 4]],                  # uneven: through leaders
    [[0, 1], [2, 3], [4, 5], [6, 7]],
    [[3, 0], [2, 5], [1, 4]],             # local order is not rank order
    [[4], [0, 1, 2, 3]],                  # uneven, a one-rank host first
    [[5, 2, 0], [1], [3, 4, 6]],          # uneven and scattered
    [[0, 1, 2], [3], [4, 5], [6, 7, 8, 9]],
]


def one_level(groups):
    """One host, or one rank per host: the registry's hier is the flat algorithm there."""
    return len(groups) == 1 or all(len(g) == 1 for g in groups)


def _n(groups):
    return sum(len(g) for g in groups)


@pytest.mark.parametrize("groups", SHAPES, ids=str)
def test_hier_allgather(groups):
    n = _n(groups)
    for counts in counts_cases(n):
        for cc in (0, 2):
            s = build_schedule("allgather", n, counts=counts, chunk_count=cc, algo="hier",
                               groups=groups)
            want = ring_allgather(counts, cc) if one_level(groups) else \
                hier_allgather(groups, counts, cc)
            assert s.algo == "hier" and s.steps == want.steps
            check_allgather(s, counts, seeds=(0,))


@pytest.mark.parametrize("groups", SHAPES, ids=str)
def test_hier_reducescatter(groups):
    n = _n(groups)
    for counts in counts_cases(n):
        for cc in (0, 2):
            s = build_schedule("reducescatter", n, counts=counts, chunk_count=cc,
                               algo="hier", groups=groups)
            want = ring_reducescatter(counts, cc) if one_level(groups) else \
                hier_reducescatter(groups, counts, cc)
            assert s.algo == "hier" and s.steps == want.steps
            check_reducescatter(s, counts, ops=tuple(REFS) if cc == 0 else ("sum",),
                                seeds=(0,))


@pytest.mark.parametrize("groups", SHAPES, ids=str)
def test_hier_broadcast(groups):
    n = _n(groups)
    rng = np.random.default_rng(n)
    for count in (0, 1, 7, 100):
        for cc in (0, 3):
            for root in range(n):
                s = build_schedule("broadcast", n, count=count, root=root, chunk_count=cc,
                                   algo="hier", groups=groups)
                assert s.algo == "hier"
                for ip in (False, True):
                    check_hazards(s, in_place=ip)
                x = rng.random(count, dtype=np.float32)
                xs = [x if r == root else None for r in range(n)]
                for ip in (False, True):
                    for o in simulate(s, xs, in_place=ip, seed=root + ip):
                        assert o.tobytes() == x.tobytes()


def _inter_host(s, groups):
    """Elements (received, sent) by each host from / to other hosts."""
    host = {r: h for h, g in enumerate(groups) for r in g}
    got, sent = [0] * len(groups), [0] * len(groups)
    for r, steps in enumerate(s.steps):
        for st in steps:
            if st.kind == Kind.SEND and host[st.peer] != host[r]:
                got[host[st.peer]] += st.count
                sent[host[r]] += st.count
    return got, sent


@pytest.mark.parametrize("groups", [g for g in SHAPES if len(g) > 1], ids=str)
def test_hier_inter_host_bytes_are_minimal(groups):
    n = _n(groups)
    counts = [(r * 5) % 7 + 1 for r in range(n)]
    per_host = [sum(counts[r] for r in g) for g in groups]
    others = [sum(counts) - h for h in per_host]
    # allgather: every host receives the other hosts' blocks exactly once (the minimum);
    # reducescatter, the mirror: every host sends its partials of the other hosts' blocks
    # exactly once, reduced with whatever passed through it on the way
    got, sent = _inter_host(hier_allgather(groups, counts), groups)
    assert got == others and sum(sent) == sum(others)
    got, sent = _inter_host(hier_reducescatter(groups, counts), groups)
    assert sent == others and sum(got) == sum(others)
    for flat in (ring_allgather(counts), ring_reducescatter(counts)):
        assert sum(_inter_host(flat, groups)[0]) >= sum(others)
    for root in range(n):
        got, _ = _inter_host(hier_broadcast(groups, 10, root), groups)
        assert sorted(got) == [0] + [10] * (len(groups) - 1)


def test_hier_equal_groups_parallel_by_local_index():
    groups = [[0, 1, 2], [3, 4, 5]]
    host = [0, 0, 0, 1, 1, 1]
    for s in (hier_allgather(groups, [4] * 6), hier_reducescatter(groups, [4] * 6)):
        for r in range(6):      # every rank talks across hosts, only to its local index
            across = {st.peer for st in s.steps[r] if st.peer >= 0 and host[st.peer] != host[r]}
            assert across == {(r + 3) % 6}


def test_hier_uneven_groups_only_leaders_cross():
    groups = [[0, 1], [2, 3, 4]]
    host = [0, 0, 1, 1, 1]
    for s in (hier_allgather(groups, [3] * 5), hier_reducescatter(groups, [3] * 5)):
        for r in (1, 3, 4):
            assert all(host[st.peer] == host[r] for st in s.steps[r] if st.peer >= 0)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_hier_registry_default_groups(n):
    counts = [3] * n
    g = default_groups(n)
    flat = one_level(g)
    assert build_schedule("allgather", n, counts=counts, algo="hier").steps == \
        (ring_allgather(counts) if flat else hier_allgather(g, counts)).steps
    assert build_schedule("reducescatter", n, counts=counts, algo="hier").steps == \
        (ring_reducescatter(counts) if flat else hier_reducescatter(g, counts)).steps
    assert build_schedule("broadcast", n, count=5, root=n - 1, algo="hier").steps == \
        (binomial_broadcast(n, 5, n - 1) if flat else hier_broadcast(g, 5, n - 1)).steps


def test_hier_bad_arguments():
    with pytest.raises(ValueError, match="groups"):
        hier_allgather([[0, 1], [1, 2]], [1, 1, 1])
    with pytest.raises(ValueError, match="world size"):
        hier_reducescatter([[0, 1], [2, 3]], [1, 1, 1])
    with pytest.raises(ValueError, match="root"):
        hier_broadcast([[0, 1], [2, 3]], 4, root=4)
    with pytest.raises(ValueError, match="groups"):
        build_schedule("allgather", 4, counts=[1] * 4, algo="hier", groups=[[0, 1], [2]])
