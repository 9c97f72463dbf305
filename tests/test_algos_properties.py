"""Property tests (hypothesis) for every algorithm in ``collx.algos.registry.ALGORITHMS``.

The (op, algorithm) pairs are read from the registry when this module is collected, so an
algorithm registered later is covered without editing this file. Nothing is skipped silently:
an algorithm may reject a case only with a ValueError whose message says why (it must name
the world size or the offending argument); every algorithm must accept at least one drawn
case; the one visible skip is the in-place run of algorithms registry.py documents as
out-of-place only (``OUT_OF_PLACE_ONLY``).

Cases: world size 1..32 (primes, 24 and 32 through ``sampled_from``, plus ``integers``);
counts 0, 1, fewer than ranks, non-divisible, up to 2000 (fewer when chunk_count is small,
to bound the step count); per-rank count lists with zeros; n x n send_counts for alltoall;
every root; chunk_count in {0, 1, 3, 16}; reduction op sum/max/min/prod; dtype int64, int8,
float32, float64; in-place or not; the simulator's completion-order seed.

Properties:
  1. integer dtypes: ``simulate`` equals the numpy reference exactly on every rank (int8
     wraps modulo 2**8 exactly like numpy; sum/prod wrap consistently in any order).
  2. float dtypes, against a float64 reference computed from the same inputs:
       sum:  |out - ref| <= 2 * n * eps(dtype) * sum_r |x_r|   (eps of float32 = 1.2e-7;
             inputs uniform in [-1, 1], so for float32 this is about rtol 1e-5 of the scale)
       prod: |out - ref| <= 2 * n * eps(dtype) * |ref|          (factors in [0.5, 2])
       max/min and all data-movement ops (allgather, alltoall, broadcast, gather, scatter):
             bit-exact.
     For results every rank holds (allreduce; allgather and broadcast trivially) all ranks
     hold identical bits; reducescatter and reduce results have a single holder per element.
  3. ``check_hazards`` passes out of place and in place (except OUT_OF_PLACE_ONLY), and the
     schedule's in/out counts follow the registry's buffer conventions.
  4. symbolic: for sum reductions rank r contributes 4**r (int64), so each output element,
     read in base 4, gives how many times every rank was counted: each must be exactly once.
     For data-movement ops every input element carries a unique tag (rank, index) and every
     output element must hold the tag the reference says.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collx.algos.registry import ALGORITHMS, even_split
from collx.algos.registry import build_schedule
from collx.algos.simulator import check_hazards, simulate

pytestmark = pytest.mark.timeout(120)

BY_COUNT = ("allreduce", "broadcast", "reduce")
BY_COUNTS = ("allgather", "reducescatter", "gather", "scatter")
ROOTED = ("broadcast", "reduce", "gather", "scatter")
REDUCING = ("allreduce", "reducescatter", "reduce")
SAME_ON_ALL = ("allreduce", "allgather", "broadcast")
UFUNC = {"sum": np.add, "max": np.maximum, "min": np.minimum, "prod": np.multiply}
DTYPES = (np.int64, np.int8, np.float32, np.float64)

# registry.py: "out-of-place only (IN and OUT never alias)"
OUT_OF_PLACE_ONLY = {("alltoall", "pairwise_direct")}

# (test, op, algo) -> reason; applied as xfail(strict=True). Empty: every algorithm passes.
KNOWN_FAILURES: dict[tuple[str, str, str], str] = {}

PAIRS = [(op, name) for op in sorted(ALGORITHMS) for name in sorted(ALGORITHMS[op])]

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

WORLD = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13, 16, 17, 23, 24, 31, 32]),
                  st.integers(1, 32))


def params(test: str):
    out = []
    for op, algo in PAIRS:
        reason = KNOWN_FAILURES.get((test, op, algo))
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(op, algo, id=f"{op}-{algo}", marks=marks))
    return out


@st.composite
def cases(draw, op: str) -> dict:
    n = draw(WORLD)
    chunk = draw(st.sampled_from([0, 1, 3, 16]))
    # element budget: small chunks multiply the step count
    cap = {0: 2000, 1: 48, 3: 150, 16: 800}[chunk]
    c = {"n": n, "count": 0, "counts": None, "send_counts": None, "root": 0,
         "chunk_count": chunk}
    if op in BY_COUNT:
        special = [v for v in (0, 1, n - 1, n + 1, 7 * n + 3, 2000) if 0 <= v <= cap]
        c["count"] = draw(st.one_of(st.sampled_from(special), st.integers(0, max(n - 1, 0)),
                                    st.integers(0, cap)))
    elif op in BY_COUNTS:
        per = max(2, min(60, 2 * cap // n))
        c["counts"] = draw(st.one_of(
            st.lists(st.one_of(st.just(0), st.integers(0, 3), st.integers(0, per)),
                     min_size=n, max_size=n),
            st.integers(0, cap).map(lambda t: even_split(t, n))))
    elif op == "alltoall":
        per = 6 if chunk == 0 else 3
        row = st.lists(st.one_of(st.just(0), st.integers(0, per)), min_size=n, max_size=n)
        c["send_counts"] = draw(st.lists(row, min_size=n, max_size=n))
    if op in ROOTED:
        c["root"] = draw(st.integers(0, n - 1))
    return c


def build(op: str, algo: str, c: dict):
    """The schedule, or None where the algorithm rejects the case with a reasoned error."""
    try:
        return build_schedule(op, c["n"], count=c["count"], counts=c["counts"],
                              send_counts=c["send_counts"], root=c["root"],
                              chunk_count=c["chunk_count"], algo=algo)
    except ValueError as e:
        msg = str(e)
        keys = ("rank", "world size", "count", "root", "chunk", "group", str(c["n"]))
        assert len(msg) > 15 and any(k in msg for k in keys), \
            f"{op}/{algo} rejected {c} without saying why: {msg!r}"
        return None


def expected_counts(op: str, c: dict) -> tuple[list[int], list[int]]:
    n, root = c["n"], c["root"]
    if op == "allreduce":
        return [c["count"]] * n, [c["count"]] * n
    if op == "broadcast":
        return [c["count"] if r == root else 0 for r in range(n)], [c["count"]] * n
    if op == "reduce":
        return [c["count"]] * n, [c["count"] if r == root else 0 for r in range(n)]
    if op == "allgather":
        return list(c["counts"]), [sum(c["counts"])] * n
    if op == "reducescatter":
        return [sum(c["counts"])] * n, list(c["counts"])
    if op == "gather":
        return list(c["counts"]), [sum(c["counts"]) if r == root else 0 for r in range(n)]
    if op == "scatter":
        return [sum(c["counts"]) if r == root else 0 for r in range(n)], list(c["counts"])
    if op == "alltoall":
        sc = c["send_counts"]
        return [sum(sc[r]) for r in range(n)], [sum(sc[s][r] for s in range(n))
                                               for r in range(n)]
    return [0] * n, [0] * n          # barrier


def reference(op: str, c: dict, xs: list, red: str, acc) -> list:
    """Expected OUT per rank; reductions computed in ``acc`` (int64 for ints, float64)."""
    n, root = c["n"], c["root"]
    u = UFUNC[red]
    if op == "allreduce":
        v = u.reduce(np.stack([x.astype(acc) for x in xs]), axis=0)
        return [v] * n
    if op == "reduce":
        v = u.reduce(np.stack([x.astype(acc) for x in xs]), axis=0)
        return [v if r == root else v[:0] for r in range(n)]
    if op == "reducescatter":
        v = u.reduce(np.stack([x.astype(acc) for x in xs]), axis=0)
        d = np.cumsum([0] + list(c["counts"]))
        return [v[d[r]:d[r + 1]] for r in range(n)]
    if op == "broadcast":
        return [xs[root]] * n
    if op == "allgather":
        return [np.concatenate(xs)] * n
    if op == "gather":
        v = np.concatenate(xs)
        return [v if r == root else v[:0] for r in range(n)]
    if op == "scatter":
        d = np.cumsum([0] + list(c["counts"]))
        return [xs[root][d[r]:d[r + 1]] for r in range(n)]
    if op == "alltoall":
        sc = c["send_counts"]
        outs = []
        for r in range(n):
            parts = []
            for s in range(n):
                o = sum(sc[s][:r])
                parts.append(xs[s][o:o + sc[s][r]])
            outs.append(np.concatenate(parts))
        return outs
    return [xs[0][:0]] * n           # barrier


def make_inputs(in_counts, dtype, red: str, seed: int) -> list:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    xs = []
    for k in in_counts:
        if dt.kind == "i":
            info = np.iinfo(dt)
            lo, hi = (-1000, 1001) if dt.itemsize > 1 else (info.min, info.max + 1)
            x = rng.integers(lo, hi, size=k).astype(dt)
            if red == "prod":
                x[x == 0] = 3
        elif red == "sum":
            x = rng.uniform(-1, 1, size=k).astype(dt)
        elif red == "prod":
            x = (rng.uniform(0.5, 2, size=k) * rng.choice([-1, 1], size=k)).astype(dt)
        else:
            x = rng.uniform(-1e3, 1e3, size=k).astype(dt)
        xs.append(x)
    return xs


def run_property(op: str, algo: str, body) -> None:
    """Run ``body(case, data)`` over drawn cases; every algorithm must accept some case."""
    stats = Counter()

    @SETTINGS
    @given(c=cases(op), data=st.data())
    def prop(c, data):
        stats["examples"] += 1
        s = build(op, algo, c)
        if s is None:
            stats["rejected"] += 1
            return
        stats["accepted"] += 1
        assert (s.in_counts, s.out_counts) == expected_counts(op, c), \
            f"{op}/{algo} buffer sizes break the registry conventions for {c}"
        body(s, c, data)

    prop()
    assert stats["accepted"] > 0, f"{op}/{algo} rejected all {stats['examples']} cases"


@pytest.mark.parametrize("op,algo", params("test_matches_numpy_reference"))
def test_matches_numpy_reference(op, algo):
    """Properties 1 and 2."""
    def body(s, c, data):
        dtype = np.dtype(data.draw(st.sampled_from(DTYPES), label="dtype"))
        red = data.draw(st.sampled_from(sorted(UFUNC)), label="red") if op in REDUCING \
            else "sum"
        ip = False if (op, algo) in OUT_OF_PLACE_ONLY else data.draw(st.booleans(),
                                                                     label="in_place")
        seed = data.draw(st.integers(0, 2**16), label="seed")
        xs = make_inputs(s.in_counts, dtype, red, seed)
        outs = simulate(s, xs, op=red, in_place=ip, seed=seed)
        is_int = dtype.kind == "i"
        refs = reference(op, c, xs, red, np.int64 if is_int else np.float64)
        where = f"{op}/{algo} {c} dtype {dtype} op {red} in_place {ip} seed {seed}"
        for r in range(c["n"]):
            out, ref = outs[r], refs[r]
            # with every input empty the simulator documents float64 buffers
            assert out.shape == ref.shape, f"rank {r}: {where}"
            assert out.dtype == dtype or not sum(s.in_counts), f"rank {r}: {where}"
            if is_int or op not in REDUCING or red in ("max", "min"):
                np.testing.assert_array_equal(out, ref.astype(dtype), err_msg=f"rank {r} {where}")
                continue
            eps = np.finfo(dtype).eps
            if red == "sum":
                scale = np.add.reduce(np.stack([np.abs(x.astype(np.float64)) for x in xs]),
                                      axis=0)
                if op == "reducescatter":
                    d = np.cumsum([0] + list(c["counts"]))
                    scale = scale[d[r]:d[r + 1]]
                elif op == "reduce" and r != c["root"]:
                    scale = scale[:0]
            else:
                scale = np.abs(ref)
            tol = 2 * c["n"] * eps * scale + np.finfo(dtype).tiny
            err = np.abs(out.astype(np.float64) - ref)
            assert np.all(err <= tol), f"rank {r}: max err {err.max()} > tol; {where}"
        if op in SAME_ON_ALL and c["n"] > 1:
            ui = np.dtype(f"u{dtype.itemsize}")
            for r in range(1, c["n"]):
                np.testing.assert_array_equal(outs[r].view(ui), outs[0].view(ui),
                                              err_msg=f"rank {r} bits differ from rank 0; "
                                                      f"{where}")

    run_property(op, algo, body)


def hazard_params():
    out = []
    for p in params("test_no_hazards"):
        op, algo = p.values
        for ip in (False, True):
            marks = list(p.marks)
            if ip and (op, algo) in OUT_OF_PLACE_ONLY:
                marks.append(pytest.mark.skip(reason="registry.py: out-of-place only"))
            out.append(pytest.param(op, algo, ip, id=f"{p.id}-{'inplace' if ip else 'oop'}",
                                    marks=marks))
    return out


@pytest.mark.parametrize("op,algo,in_place", hazard_params())
def test_no_hazards(op, algo, in_place):
    """Property 3."""
    run_property(op, algo, lambda s, c, data: check_hazards(s, in_place=in_place))


@pytest.mark.parametrize("op,algo", params("test_each_contribution_once"))
def test_each_contribution_once(op, algo):
    """Property 4."""
    def body(s, c, data):
        n = c["n"]
        ip = False if (op, algo) in OUT_OF_PLACE_ONLY else data.draw(st.booleans(),
                                                                     label="in_place")
        seed = data.draw(st.integers(0, 2**16), label="seed")
        if op in REDUCING:
            xs = [np.full(k, 4 ** r, np.int64) for r, k in enumerate(s.in_counts)]
        else:       # unique tag per (rank, index)
            xs = [(r << 24) + np.arange(k, dtype=np.int64) for r, k in enumerate(s.in_counts)]
        outs = simulate(s, xs, op="sum", in_place=ip, seed=seed)
        refs = reference(op, c, xs, "sum", np.int64)
        for r in range(n):
            if op in REDUCING and outs[r].size:
                v = outs[r].astype(np.uint64)
                times = np.stack([(v >> np.uint64(2 * q)) & np.uint64(3) for q in range(n)])
                bad = np.argwhere(times != 1)
                assert bad.size == 0, (
                    f"{op}/{algo} {c} in_place {ip} seed {seed}: rank {r} element "
                    f"{bad[0][1]} counts rank {bad[0][0]} {times[tuple(bad[0])]} times")
            np.testing.assert_array_equal(outs[r], refs[r],
                                          err_msg=f"rank {r} {op}/{algo} {c} in_place {ip}")

    run_property(op, algo, body)
