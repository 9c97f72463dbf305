"""Tier 1: pairwise-exchange alltoall(v) proven on the simulator against a numpy reference,
out of place and in place (including the in-place scratch detour for non-uniform blocks)."""
from __future__ import annotations

import numpy as np
import pytest

from collx.algos.ir import Buf, Kind
from collx.algos.pairwise import pairwise_alltoall
from collx.algos.registry import build_schedule, even_split
from collx.algos.simulator import check_hazards, cost, simulate

WORLD = [1, 2, 3, 4, 5, 7, 8, 11, 13, 16, 24, 32]


def counts_for(n: int) -> list[int]:
    return sorted({0, 1, max(n - 1, 0), 7, 1000, 1009})


def matrices(n: int) -> list[list[list[int]]]:
    """Uniform (each rank's row is an even split of count), random with zeros, symmetric
    random (row total == column total on every rank, so in-place aliases non-uniform blocks),
    and one sender holding everything."""
    rng = np.random.default_rng(n)
    out = [[even_split(c, n) for _ in range(n)] for c in counts_for(n)]
    out.append([[int(c) for c in row] for row in rng.integers(0, 6, size=(n, n))])
    m = rng.integers(0, 6, size=(n, n))
    m[rng.random((n, n)) < 0.3] = 0
    sym = np.triu(m) + np.triu(m, 1).T
    out.append([[int(c) for c in row] for row in sym])
    lop = [[0] * n for _ in range(n)]
    lop[n - 1] = [3] * n
    out.append(lop)
    return out


def reference(xs, sc):
    n = len(sc)
    sd = [np.cumsum([0] + row) for row in sc]
    return [np.concatenate([xs[q][sd[q][r]:sd[q][r + 1]] for q in range(n)])
            for r in range(n)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", WORLD)
def test_alltoallv(n):
    for case, sc in enumerate(matrices(n)):
        s = build_schedule("alltoall", n, send_counts=sc)
        assert s.in_counts == [sum(row) for row in sc]
        assert s.out_counts == [sum(sc[q][r] for q in range(n)) for r in range(n)]
        check_hazards(s, in_place=False)
        check_hazards(s, in_place=True)
        for ip in (False, True):
            rng = np.random.default_rng(case)
            xs = [rng.integers(-100, 100, size=c).astype(np.int64) for c in s.in_counts]
            outs = simulate(s, xs, in_place=ip, seed=case)
            for r, ref in enumerate(reference(xs, sc)):
                np.testing.assert_array_equal(outs[r], ref, err_msg=f"rank {r} case {case}")


@pytest.mark.timeout(30)
def test_exchange_order():
    """Step s sends to (r + s) % n and receives from (r - s) % n; out of place nothing waits."""
    n = 5
    sc = [[1, 2, 3, 4, 5]] + [[1] * n for _ in range(n - 1)]   # rank 0: row != column
    s = pairwise_alltoall(sc)
    sends = [st.peer for st in s.steps[0] if st.kind == Kind.SEND]
    recvs = [st.peer for st in s.steps[0] if st.kind == Kind.RECV]
    assert sends == [1, 2, 3, 4] and recvs == [4, 3, 2, 1]
    assert all(not st.deps for st in s.steps[0])
    c = cost(s, itemsize=1)
    assert c["bytes_sent"][0] == 2 + 3 + 4 + 5 and c["rounds"] == 1


@pytest.mark.timeout(30)
def test_in_place_uniform_detours_about_half():
    n, k = 8, 10
    s = pairwise_alltoall([[k] * n for _ in range(n)])
    for r in range(n):
        direct = [st for st in s.steps[r] if st.kind == Kind.RECV and st.buf == Buf.OUT]
        detour = [st for st in s.steps[r] if st.kind == Kind.RECV and st.buf == Buf.SCRATCH]
        assert len(direct) + len(detour) == n - 1
        assert len(detour) == n // 2      # steps s <= n / 2 must wait their slot's send
        assert s.scratch_counts[r] == len(detour) * k


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", WORLD)
def test_alltoallv_direct_out_of_place(n):
    """The out-of-place variant the runtime uses: no scratch, receives straight into OUT."""
    for case, sc in enumerate(matrices(n)):
        s = build_schedule("alltoall", n, send_counts=sc, algo="pairwise_direct")
        assert s.algo == "pairwise_direct" and s.scratch_counts == [0] * n
        check_hazards(s, in_place=False)
        rng = np.random.default_rng(case)
        xs = [rng.integers(-100, 100, size=c).astype(np.int64) for c in s.in_counts]
        outs = simulate(s, xs, in_place=False, seed=case)
        for r, ref in enumerate(reference(xs, sc)):
            np.testing.assert_array_equal(outs[r], ref, err_msg=f"rank {r} case {case}")
