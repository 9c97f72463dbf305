"""Tier 1: build_schedule dispatches every op to its algorithm, validates its arguments with
clear ValueErrors, and lets new algorithms register by name."""
from __future__ import annotations

import numpy as np
import pytest

from collx.algos import registry
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule, even_split, register
from collx.algos.simulator import simulate

pytestmark = pytest.mark.timeout(30)


def test_even_split():
    assert even_split(10, 4) == [3, 3, 2, 2]
    assert even_split(3, 5) == [1, 1, 1, 0, 0]
    assert even_split(0, 3) == [0, 0, 0]
    assert sum(even_split(1009, 32)) == 1009
    with pytest.raises(ValueError):
        even_split(-1, 2)
    with pytest.raises(ValueError):
        even_split(4, 0)


@pytest.mark.parametrize("op,kwargs,algo", [
    ("allreduce", dict(count=10), "ring"),
    ("allgather", dict(counts=[1, 2, 3]), "ring"),
    ("reducescatter", dict(counts=[1, 2, 3]), "ring"),
    ("alltoall", dict(send_counts=[[1, 2, 3]] * 3), "pairwise"),
    ("broadcast", dict(count=10, root=2), "binomial"),
    ("reduce", dict(count=10, root=1), "binomial"),
    ("gather", dict(counts=[1, 2, 3], root=1), "binomial"),
    ("scatter", dict(counts=[1, 2, 3], root=2), "binomial"),
    ("barrier", dict(), "binomial"),
])
def test_dispatch(op, kwargs, algo):
    s = build_schedule(op, 3, **kwargs)
    assert s.op == op and s.algo == algo and s.world_size == 3
    assert DEFAULT[op] == algo and algo in ALGORITHMS[op]
    assert build_schedule(op, 3, algo=algo, **kwargs).steps == s.steps


@pytest.mark.parametrize("op,n,kwargs,match", [
    ("allsum", 2, {}, "unknown op"),
    ("allreduce", 2, dict(count=4, algo="nope"), "no algorithm 'nope'"),
    ("allreduce", 0, dict(count=4), "world size"),
    ("allreduce", 2, dict(count=-1), "count"),
    ("allreduce", 2, dict(count=1.5), "count"),
    ("allreduce", 2, dict(count=4, chunk_count=-2), "chunk_count"),
    ("broadcast", 3, dict(count=4, root=3), "root"),
    ("reduce", 3, dict(count=4, root=-1), "root"),
    ("allgather", 3, dict(counts=None), "needs counts"),
    ("allgather", 3, dict(counts=[1, 2]), "2 entries for world size 3"),
    ("scatter", 2, dict(counts=[1, -2]), r"counts\[1\]"),
    ("alltoall", 2, dict(), "needs send_counts"),
    ("alltoall", 2, dict(send_counts=[[1, 1]]), "1 rows"),
    ("alltoall", 2, dict(send_counts=[[1, 1], [1]]), r"send_counts\[1\]"),
])
def test_validation(op, n, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_schedule(op, n, **kwargs)


def test_numpy_ints_are_accepted():
    s = build_schedule("allgather", np.int64(2), counts=np.array([2, 3]))
    assert s.out_counts == [5, 5]


def test_register_a_new_algorithm(monkeypatch):
    monkeypatch.setattr(registry, "ALGORITHMS", {k: dict(v) for k, v in ALGORITHMS.items()})
    monkeypatch.setattr(registry, "DEFAULT", dict(DEFAULT))

    def reversed_ring(n, count, chunk_count, **_):
        s = registry.ring_allreduce(n, count, chunk_count)
        s.algo = "reversed_ring"
        return s
    register("allreduce", "reversed_ring", reversed_ring)
    s = build_schedule("allreduce", 4, count=9, algo="reversed_ring")
    assert s.algo == "reversed_ring"
    assert registry.DEFAULT["allreduce"] == "ring"
    outs = simulate(s, [np.full(9, r, np.float64) for r in range(4)])
    assert all((o == 6).all() for o in outs)
    with pytest.raises(ValueError, match="unknown op"):
        register("allfoo", "x", reversed_ring)
