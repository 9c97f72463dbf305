"""The measurement contract of ``/work/shared/peers/bench_common.py``, re-implemented so that
collx stands alone (nothing is imported from the peers at run time).

Everything here must stay *identical in behaviour* to bench_common: the size grid, the
element-count rounding, the timing algorithm of ``measure`` and the bandwidth factors. That
is what lets ``compare.py`` put collx beside Open MPI, MPICH and Gloo. Additions that the
peers do not have (fixed iteration counts for ``-n``, per-call percentiles) are separate
functions and never change what ``measure`` reports.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

OPS: tuple[str, ...] = ("allreduce", "broadcast", "allgather", "reducescatter", "alltoall")
SPLIT_OPS: tuple[str, ...] = ("allgather", "reducescatter", "alltoall")

# 8 B, then 16 B .. 256 MiB by factors of 4 (lands on 1 KiB, 1 MiB, 16 MiB, 256 MiB).
DEFAULT_SIZES: list[int] = [8] + [4 ** k for k in range(2, 15)]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}

RunOp = Callable[[], object]
Barrier = Callable[[], object]
AllMax = Callable[[Sequence[float]], list[float]]


def parse_size(text: str) -> int:
    """'8' -> 8, '64K' -> 65536, '1M' / '1MiB' -> 1048576 (binary units)."""
    s = text.strip().upper().replace("IB", "").replace("B", "")
    num = s.rstrip("KMG")
    unit = s[len(num):]
    if unit not in _UNITS or not num:
        raise ValueError(f"bad size {text!r}: use e.g. 8, 64K, 1M, 1G")
    return int(float(num) * _UNITS[unit])


def parse_sizes(spec: str | None) -> list[int]:
    """'8,1K,1M' -> list; 'A:B' -> A, 4A, 16A, ... <= B; None/'' -> DEFAULT_SIZES."""
    if not spec:
        return list(DEFAULT_SIZES)
    if ":" in spec:
        lo, hi = (parse_size(x) for x in spec.split(":"))
        if lo <= 0:
            raise ValueError(f"bad size range {spec!r}: the lower bound must be > 0")
        out = []
        while lo <= hi:
            out.append(lo)
            lo *= 4
        return out
    return [parse_size(x) for x in spec.split(",")]


def nccl_grid(minbytes: int, maxbytes: int, factor: float) -> list[int]:
    """nccl-tests' -b/-e/-f grid: minbytes, minbytes*f, ... <= maxbytes (f > 1)."""
    if minbytes <= 0 or maxbytes < minbytes:
        raise ValueError(f"need 0 < minbytes <= maxbytes (got {minbytes}, {maxbytes})")
    if factor <= 1:
        return [minbytes] if minbytes == maxbytes else [minbytes, maxbytes]
    out, size = [], float(minbytes)
    while int(size) <= maxbytes:
        if not out or int(size) != out[-1]:
            out.append(int(size))
        size *= factor
    return out


def human(nbytes: int) -> str:
    """1048576 -> '1M' (exact binary multiples only), else the plain number."""
    for unit, div in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= div and nbytes % div == 0:
            return f"{nbytes // div}{unit}"
    return str(nbytes)


def busbw_factor(op: str, n: int) -> float:
    """nccl-tests' bus-bandwidth factor of op on n ranks."""
    if op == "allreduce":
        return 2.0 * (n - 1) / n
    if op in SPLIT_OPS:
        return (n - 1) / n
    return 1.0  # broadcast


def count_for(op: str, nbytes: int, n: int, itemsize: int = 4) -> int:
    """Element count of the op's 'bytes' buffer; ops that split the buffer into n blocks
    round down to a multiple of n (at least n elements), like nccl-tests."""
    count = max(1, nbytes // itemsize)
    if op in SPLIT_OPS:
        count = max(n, count - count % n)
    return count


def load1() -> float | None:
    """The 1-minute load average (the machine is shared: every record carries it)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def measure(run_op: RunOp, barrier: Barrier, allmax: AllMax, *, warmup: int = 5,
            batches: int = 10, target_batch_s: float = 0.02, max_iters: int = 1000,
            budget_s: float = 3.0, min_batches: int = 5
            ) -> tuple[float, float, float, int, int]:
    """Time run_op() exactly as bench_common.measure does.

    1. one untimed call, then up to `warmup` calls (capped at ~0.5 s) to estimate t_op =
       slowest rank's mean time per call;
    2. k calls per batch so a batch lasts ~target_batch_s (1 <= k <= max_iters); `batches`
       batches, reduced (not below min_batches) so one size takes ~budget_s at most;
    3. each batch: barrier(); t0; k x run_op(); per-call time = (t1 - t0) / k;
    4. per batch the slowest rank counts (allmax after the timed loop).
    Returns (median_s, min_s, max_s, total_iters, n_batches).
    """
    clock = time.perf_counter
    barrier()
    t0 = clock()
    run_op()
    first = allmax([clock() - t0])[0]
    nwarm = max(1, min(warmup, int(0.5 / max(first, 1e-9))))
    barrier()
    t0 = clock()
    for _ in range(nwarm):
        run_op()
    t_op = allmax([(clock() - t0) / nwarm])[0]
    k = max(1, min(max_iters, int(target_batch_s / max(t_op, 1e-9))))
    nb = batches
    if t_op * k * nb > budget_s:
        nb = max(min_batches, int(budget_s / (t_op * k)))
    samples = []
    for _ in range(nb):
        barrier()
        t0 = clock()
        for _ in range(k):
            run_op()
        samples.append((clock() - t0) / k)
    samples = allmax(samples)
    return statistics.median(samples), min(samples), max(samples), k * nb, nb


def measure_fixed(run_op: RunOp, barrier: Barrier, allmax: AllMax, *, iters: int,
                  warmup: int) -> tuple[float, float, float, int, int]:
    """nccl-tests' fixed count (-n/-w): one untimed call, `warmup` calls, then one timed
    loop of `iters` calls; the slowest rank's mean counts. Same return shape as measure()
    (one batch, so median = min = max)."""
    barrier()
    run_op()
    for _ in range(warmup):
        run_op()
    barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        run_op()
    t = allmax([(time.perf_counter() - t0) / max(1, iters)])[0]
    return t, t, t, iters, 1


def per_call_times(run_op: RunOp, barrier: Barrier, allmax: AllMax, calls: int) -> list[float]:
    """One extra pass timing each call on its own (perf_counter around every call); per
    call the slowest rank counts. Used for p50/p99 only, never for `us`."""
    clock = time.perf_counter
    out = []
    barrier()
    for _ in range(calls):
        t0 = clock()
        run_op()
        out.append(clock() - t0)
    return allmax(out)


def percentile(samples: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default method), written out so the definition is visible."""
    xs = sorted(samples)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def pct_calls(t_op: float, budget_s: float, max_calls: int = 1000, min_calls: int = 5) -> int:
    """How many calls the percentile pass times: ~budget_s/3 worth, within [min, max]."""
    return max(min_calls, min(max_calls, int(budget_s / 3.0 / max(t_op, 1e-9))))


def sig(x: float, digits: int = 5) -> float:
    """Round to significant digits (tiny bandwidths of 8 B messages stay readable)."""
    return float(f"{x:.{digits}g}")


def record(peer: str, op: str, n: int, nbytes: int, dtype: str, med_s: float, min_s: float,
           max_s: float, iters: int, batches: int, **extra: object) -> dict:
    """One JSON-lines record in bench_common.record's contract (plus `extra` keys)."""
    algbw = nbytes / med_s / 1e9 if med_s > 0 else 0.0
    rec: dict = {
        "peer": peer, "op": op, "np": n, "bytes": nbytes, "dtype": dtype,
        "us": round(med_s * 1e6, 3),
        "algbw_GBps": sig(algbw),
        "busbw_GBps": sig(algbw * busbw_factor(op, n)),
        "iters": iters,
        "us_min": round(min_s * 1e6, 3), "us_max": round(max_s * 1e6, 3),
        "batches": batches,
    }
    rec.update(extra)
    return rec
