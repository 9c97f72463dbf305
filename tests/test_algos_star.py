"""Tier 1: star (co-located parameter server) allreduce proven on the simulator against numpy
references on every rank, out of place and in place; all ranks bitwise identical on
non-integer floats; hazard-free in both modes; bytes per rank equal to the ring's."""
from __future__ import annotations

import pytest

from collx.algos.ir import Buf, Kind
from collx.algos.registry import ALGORITHMS, DEFAULT, build_schedule
from collx.algos.ring import ring_allreduce
from collx.algos.simulator import cost
from collx.algos.star import star_allreduce

from algo_support import WORLD, check_allreduce, counts_for

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("n,count", [(n, c) for n in WORLD for c in counts_for(n)])
def test_star_allreduce(n, count):
    s = build_schedule("allreduce", n, count=count, algo="star")
    assert s.algo == "star" and s.scratch_counts == [0] * n
    check_allreduce(s, n, count)


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


# ---------------------------------------------------------------- dedicated servers --------

from collx.algos.simulator import check_hazards, simulate  # noqa: E402
from collx.algos.star import star_servers_allreduce  # noqa: E402

import numpy as np  # noqa: E402

from algo_support import DTYPES, REFS, make_inputs  # noqa: E402


def _check_served(w: int, k: int, count: int, chunk: int) -> None:
    s = build_schedule("allreduce", w, count=count, chunk_count=chunk, algo="star", servers=k)
    assert s.world_size == w + k and s.in_counts == [count] * w + [0] * k
    assert s.out_counts == [count] * w + [0] * k          # servers hold no user buffer
    assert sum(s.scratch_counts[w:]) == count
    check_hazards(s, in_place=False)
    check_hazards(s, in_place=True)
    for op in REFS:
        xs = make_inputs(w, count, op, seed=w * 100 + k * 10 + count)
        ref = REFS[op](np.stack(xs), axis=0).astype(DTYPES[op])
        for ip in (False, True):
            outs = simulate(s, xs + [None] * k, op=op, in_place=ip, seed=count + ip)
            for r in range(w):
                np.testing.assert_array_equal(outs[r], ref, err_msg=f"worker {r} {op} ip {ip}")
    rng = np.random.default_rng(count)
    xs = [rng.random(count, dtype=np.float32) for _ in range(w)]
    outs = simulate(s, xs + [None] * k, op="sum", seed=5)
    np.testing.assert_allclose(outs[0], np.sum(np.stack(xs), axis=0), rtol=1e-5)
    assert all(outs[r].tobytes() == outs[0].tobytes() for r in range(w))


@pytest.mark.parametrize("w", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_star_servers(w, k):
    for count in sorted({0, 1, k - 1, 7, 1009}):
        for chunk in (0, 3, 256):
            _check_served(w, k, count, chunk)


def test_star_servers_bytes_per_worker():
    """Every worker sends S and receives S; each server moves W S / K each way."""
    w, k, count = 4, 4, 4096
    s = star_servers_allreduce(w, k, count, 256)
    for r in range(w):
        assert sum(st.count for st in s.steps[r] if st.kind == Kind.SEND) == count
        assert sum(st.count for st in s.steps[r] if st.kind == Kind.RECV) == count
    for r in range(w, w + k):
        assert sum(st.count for st in s.steps[r] if st.kind == Kind.SEND) == w * count // k
    ring = ring_allreduce(w, count, 256)
    assert sum(st.count for st in ring.steps[0] if st.kind == Kind.SEND) == 3 * count // 2


def test_star_servers_bad_args():
    with pytest.raises(ValueError):
        star_servers_allreduce(2, 0, 4)
    with pytest.raises(ValueError):
        build_schedule("allreduce", 2, count=4, algo="star", servers=-1)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(w=st.integers(1, 32), k=st.integers(1, 8), count=st.integers(0, 300),
       chunk=st.sampled_from([0, 1, 7, 64]), seed=st.integers(0, 1000))
def test_star_servers_property(w, k, count, chunk, seed):
    """Workers 1..32 (primes and 24 included by the range), any servers, counts below the
    number of servers and uneven, any chunking: every worker gets numpy's exact integer sum
    (each contribution counted once: worker r adds 4**r mod a prime), in and out of place."""
    s = star_servers_allreduce(w, k, count, chunk)
    check_hazards(s, in_place=False)
    check_hazards(s, in_place=True)
    rng = np.random.default_rng(seed)
    xs = [(rng.integers(-9, 10, size=count) + pow(4, r, 1_000_003)).astype(np.int64)
          for r in range(w)]
    want = np.sum(np.stack(xs), axis=0) if count else np.zeros(0, np.int64)
    for ip in (False, True):
        outs = simulate(s, xs + [None] * k, op="sum", in_place=ip, seed=seed)
        for r in range(w):
            np.testing.assert_array_equal(outs[r], want, err_msg=f"worker {r} ip {ip}")
