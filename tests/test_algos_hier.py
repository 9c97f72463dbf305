"""Tier 1: hierarchical allreduce (per-host reduce-scatter, per-shard allreduce across hosts,
per-host allgather) and its leader-based variant, proven on the simulator against numpy on
every rank, out of place and in place, for even and uneven host shapes."""
from __future__ import annotations

import numpy as np
import pytest

from collx.algos.hier import (Composer, check_groups, default_groups, hier_allreduce,
                              hier_leader_allreduce)
from collx.algos.ir import Buf
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule
from collx.algos.ring import ring_allreduce
from collx.algos.simulator import check_hazards, simulate

pytestmark = pytest.mark.timeout(60)

SHAPES = [
    [[0, 1], [2, 3]],
    [[0, 1, 2], [3, 4, 5]],
    [[0], [1], [2]],
    [[0, 1, 2, 3]],
    [[0, 1], [2, 3, 4]],                  # uneven: hier falls back to the leader variant
    [[0, 1], [2, 3], [4, 5], [6, 7]],     # 4 hosts x 2
    [[3, 0], [2, 5], [1, 4]],             # local order is not rank order
]
COUNTS = [0, 1, 7, 1000, 1009]
BUILDERS = {"hier": hier_allreduce, "hier_leader": hier_leader_allreduce}
REFS = {"sum": np.sum, "max": np.max}


def inputs(n, count, seed, dtype):
    rng = np.random.default_rng(seed)
    return [rng.integers(-50, 51, size=count).astype(dtype) for _ in range(n)]


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("groups", SHAPES, ids=str)
def test_matches_numpy(name, groups):
    n = sum(len(g) for g in groups)
    for count in COUNTS:
        for cc in (0, 300):
            s = BUILDERS[name](groups, count, cc)
            assert s.world_size == n and s.in_counts == [count] * n == s.out_counts
            for ip in (False, True):
                check_hazards(s, ip)
            ops = REFS if cc == 0 else {"sum": np.sum}
            for op, ref in ops.items():
                xs = inputs(n, count, count + n, np.float32 if op == "sum" else np.int64)
                want = ref(np.stack(xs), axis=0) if count else np.zeros(0)
                for ip in (False, True):
                    outs = simulate(s, xs, op, in_place=ip, seed=count + ip)
                    for r in range(n):
                        np.testing.assert_array_equal(outs[r], want,
                                                      err_msg=f"rank {r} {op} ip={ip}")


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("groups", SHAPES, ids=str)
def test_bitwise_identical_random_float32(name, groups):
    n = sum(len(g) for g in groups)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal(1009).astype(np.float32) * 10.0 ** rng.integers(-3, 4)
          for _ in range(n)]
    s = BUILDERS[name](groups, 1009, 0)
    for ip in (False, True):
        outs = simulate(s, xs, "sum", in_place=ip, seed=5)
        for r in range(1, n):
            assert outs[r].tobytes() == outs[0].tobytes(), f"rank {r} differs"
        np.testing.assert_allclose(outs[0], np.sum(np.stack(xs).astype(np.float64), axis=0),
                                   rtol=1e-3, atol=1e-2)


def test_uneven_groups_use_leader_variant():
    g = [[0, 1], [2, 3, 4]]
    s = hier_allreduce(g, 10)
    assert s.algo == "hier"
    assert s.steps == hier_leader_allreduce(g, 10).steps
    # only leaders talk across hosts
    for r in (1, 3, 4):
        host = [0, 0, 1, 1, 1]
        assert all(host[st.peer] == host[r] for st in s.steps[r] if st.peer >= 0)


def test_even_groups_every_rank_crosses_hosts():
    g = [[0, 1], [2, 3]]
    s = hier_allreduce(g, 8)
    host = [0, 0, 1, 1]
    for r in range(4):
        assert any(st.peer >= 0 and host[st.peer] != host[r] for st in s.steps[r])


def test_bad_groups():
    for bad in ([], [[]], [[0, 1], [1, 2]], [[0, 2]], [[1], [2]]):
        with pytest.raises(ValueError):
            check_groups(bad)
        with pytest.raises(ValueError):
            hier_allreduce(bad, 4)


def test_default_groups():
    assert default_groups(4) == [[0, 1], [2, 3]]
    assert default_groups(5) == [[0, 1], [2, 3], [4]]
    assert default_groups(1) == [[0]]


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_registered(name, n):
    assert name in ALGORITHMS["allreduce"] and DEFAULT["allreduce"] == "ring"
    s = build_schedule("allreduce", n, count=37, chunk_count=5, algo=name)
    groups = default_groups(n)
    if len(groups) == 1:        # one host: the registry builds the flat ring, named hier
        assert s.algo == name and s.steps == ring_allreduce(n, 37, 5).steps
    else:
        assert s.algo == (name if n % 2 == 0 or name == "hier_leader" else "hier")
        assert s.steps == BUILDERS[name](groups, 37, 5).steps
    xs = inputs(n, 37, n, np.float32)
    for ip in (False, True):
        check_hazards(s, ip)
        for o in simulate(s, xs, "sum", in_place=ip):
            np.testing.assert_array_equal(o, np.sum(np.stack(xs), axis=0))


def test_composer_maps_ranks_offsets_and_chains_phases():
    # phase 1: allreduce of IN[4:8] into OUT[4:8] among global ranks [2, 0];
    # phase 2: allreduce of IN[0:4] into OUT[0:4] among all three ranks
    c = Composer(3)
    a = ring_allreduce(2, 4)
    c.add(a, [2, 0], lambda j: {Buf.IN: (Buf.IN, 4), Buf.OUT: (Buf.OUT, 4)})
    c.add(ring_allreduce(3, 4), [0, 1, 2], lambda j: {Buf.IN: (Buf.IN, 0),
                                                      Buf.OUT: (Buf.OUT, 0)})
    s = c.schedule("allreduce", "test", [8] * 3, [8] * 3, True)
    k = len(a.steps[0])
    assert {st.peer for st in s.steps[2][:k]} == {0}
    assert all(st.off >= 4 for st in s.steps[0][:k])
    assert all(st.off < 4 for st in s.steps[0][k:])
    # dep-free steps of phase 2 on rank 0 wait for phase 1's sinks; rank 1 had no phase 1
    assert all(st.deps and max(st.deps) < k or min(st.deps) >= k for st in s.steps[0][k:])
    assert not s.steps[1][0].deps
    xs = [np.arange(8, dtype=np.int64) * (r + 1) for r in range(3)]
    for ip in (False, True):
        check_hazards(s, ip)
        outs = simulate(s, xs, "sum", in_place=ip, seed=1)
        for r in range(3):
            np.testing.assert_array_equal(outs[r][:4], np.arange(4) * 6)
        for r in (0, 2):
            np.testing.assert_array_equal(outs[r][4:], np.arange(4, 8) * 4)
