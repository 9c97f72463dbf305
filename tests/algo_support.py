"""Shared by the tier-1 tests of the allreduce schedules: world sizes, awkward counts, exact
integer-valued inputs per op, and the one check every allreduce algorithm must pass."""
from __future__ import annotations

import numpy as np

from collx.algos.ir import Schedule
from collx.algos.simulator import check_hazards, simulate

WORLD = [1, 2, 3, 4, 5, 7, 8, 11, 13, 16, 24, 32]
REFS = {"sum": np.sum, "max": np.max, "prod": np.prod}
DTYPES = {"sum": np.float32, "max": np.int64, "prod": np.float64}


def counts_for(n: int) -> list[int]:
    """0, 1, fewer elements than ranks, small, and non-divisible counts."""
    return sorted({0, 1, max(n - 1, 0), 7, 1000, 1009})


def make_inputs(n: int, count: int, op: str, seed: int) -> list[np.ndarray]:
    """Small integers (prod: values in {-1, 1, 2}) so every partial result is exact."""
    rng = np.random.default_rng(seed)
    lo, hi = ((-1, 3) if op == "prod" else (-50, 51))
    xs = []
    for _ in range(n):
        x = rng.integers(lo, hi, size=count).astype(DTYPES[op])
        if op == "prod":
            x[x == 0] = 1
        xs.append(x)
    return xs


def check_allreduce(s: Schedule, n: int, count: int, sim_seeds: tuple[int, ...] = (0,),
                    tag: str = "") -> None:
    """Hazard-free in both modes; every rank equals numpy for every op, out of place and in
    place; on non-integer floats every rank holds bitwise the same result."""
    assert s.in_counts == [count] * n and s.out_counts == [count] * n
    check_hazards(s, in_place=False)
    check_hazards(s, in_place=True)
    for op in REFS:
        xs = make_inputs(n, count, op, seed=n * 1000 + count)
        ref = REFS[op](np.stack(xs), axis=0).astype(DTYPES[op])
        for ip in (False, True):
            for seed in sim_seeds:
                outs = simulate(s, xs, op=op, in_place=ip, seed=count + seed + ip)
                for r in range(n):
                    np.testing.assert_array_equal(outs[r], ref,
                                                  err_msg=f"rank {r} {op} ip {ip} {tag}")
    rng = np.random.default_rng(n + count)
    xs = [rng.random(count, dtype=np.float32) for _ in range(n)]
    ref = np.sum(np.stack(xs), axis=0)
    for ip in (False, True):
        outs = simulate(s, xs, op="sum", in_place=ip, seed=7 + ip)
        np.testing.assert_allclose(outs[0], ref, rtol=1e-5)
        for r in range(1, n):
            assert outs[r].tobytes() == outs[0].tobytes(), f"rank {r} ip {ip} {tag}"
