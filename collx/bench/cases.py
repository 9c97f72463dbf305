"""Buffers, calls and result checks of one (op, count, dtype, redop, root) benchmark case.

Inputs follow a small periodic pattern: element i of rank r's buffer is
``(i + 3 r + 2 j) % 7 + 1`` (j = destination block for alltoall, else 0). Values stay in
1..7 so sums, products and averages of a few ranks are exact even in int8 and float16, a
misplaced block or chunk changes the values (7 is prime, chunk sizes are powers of two), and
the expected result is periodic too: checks compare against a 7-element period without ever
materialising every rank's input. 0 never appears in a correct result, so outputs are reset
to 0 before the checked call.

All buffers are allocated once and touched (filled) before timing; out-of-place calls pass
a preallocated ``out=`` like MPI's benchmark does. reducescatter and alltoall pass ``out=``
only where collx's API accepts it (otherwise collx allocates the result each call).
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Callable

import numpy as np

import collx

PERIOD = 7

# -d names (nccl-tests' and numpy's) -> (numpy dtype, nccl-tests type column)
DTYPES: dict[str, tuple[type, str]] = {
    "float": (np.float32, "float"), "float32": (np.float32, "float"),
    "half": (np.float16, "half"), "float16": (np.float16, "half"),
    "double": (np.float64, "double"), "float64": (np.float64, "double"),
    "int32": (np.int32, "int32"), "int8": (np.int8, "int8"), "uint8": (np.uint8, "uint8"),
    "int64": (np.int64, "int64"),
}
REDOPS = ("sum", "prod", "min", "max", "avg")
REDUCING = ("allreduce", "reducescatter")
INPLACE_OPS = ("allreduce", "broadcast")
_RTOL = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def collx_redop(name: str) -> int:
    """-o name -> collx reduction op constant."""
    return {"sum": collx.Sum, "prod": collx.Product, "min": collx.Min, "max": collx.Max,
            "avg": collx.Average}[name]


def _accepts_out(fn: Callable) -> bool:
    try:
        return "out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _zeros(count: int, dtype: np.dtype) -> np.ndarray:
    """A zero-filled buffer whose pages are resident (np.zeros may map untouched pages
    that the first call would fault in, inside the timing and the --memory figure)."""
    buf = np.empty(count, dtype)
    buf.fill(0)
    return buf


def period(dtype: np.dtype, shift: int) -> np.ndarray:
    """The 7 values of the pattern starting at offset `shift`."""
    return ((np.arange(PERIOD) + shift) % PERIOD + 1).astype(dtype)


def fill(buf: np.ndarray, per: np.ndarray) -> None:
    """buf[i] = per[i % 7], in place, without an index array of buf's size."""
    m = buf.size - buf.size % PERIOD
    buf[:m].reshape(-1, PERIOD)[:] = per
    buf[m:] = per[:buf.size - m]


def count_wrong(out: np.ndarray, per: np.ndarray) -> int:
    """Elements of out that differ from per[i % 7] (floats: within the dtype's tolerance)."""
    rtol = _RTOL.get(out.dtype)
    m = out.size - out.size % PERIOD

    def bad(got: np.ndarray, want: np.ndarray) -> int:
        if rtol is None:
            return int(np.count_nonzero(got != want))
        ok = (np.abs(got - want) <= rtol * np.abs(want)) | (got == want)
        return int(ok.size - np.count_nonzero(ok))
    return bad(out[:m].reshape(-1, PERIOD), per) + bad(out[m:], per[:out.size - m])


def reduced_period(dtype: np.dtype, redop: str, n: int, offset: int = 0) -> np.ndarray:
    """Expected period of reducing every rank's pattern (rank r shifted by 3r), computed in
    the dtype like the C kernels (integer avg: wrapped sum, then truncation toward zero)."""
    rows = [period(dtype, offset + 3 * r) for r in range(n)]
    fn = {"sum": np.add, "avg": np.add, "prod": np.multiply, "min": np.minimum,
          "max": np.maximum}[redop]
    acc = functools.reduce(fn, rows)
    if redop != "avg":
        return acc
    if np.issubdtype(dtype, np.integer):
        wide = acc.astype(np.int64)
        return (np.sign(wide) * (np.abs(wide) // n)).astype(dtype)
    return (acc / dtype.type(n)).astype(dtype)


@dataclass
class Case:
    """One benchmark case: the calls to time and how to check them."""
    op: str
    count: int
    run: Callable[[], object]                       # out-of-place call
    check: Callable[[], int]                        # reset, call once, count wrong (this rank)
    run_inplace: Callable[[], object] | None = None
    check_inplace: Callable[[], int] | None = None
    nbytes_in: int = 0                              # this rank's input + output buffers
    nbytes_out: int = 0


def make_case(op: str, count: int, dtype: np.dtype, redop: str, root: int,
              inplace: bool = True) -> Case:
    """Allocate and touch the buffers of `op` with `count` elements (the op's 'bytes'
    buffer, see bench_common.count_for) and return the calls and their checks."""
    r, n = collx.rank(), collx.size()
    dtype = np.dtype(dtype)
    rop = collx_redop(redop)
    if op == "allreduce":
        x, out, ip = np.empty(count, dtype), _zeros(count, dtype), np.empty(count, dtype)
        fill(x, period(dtype, 3 * r))
        fill(ip, period(dtype, 3 * r))
        want = reduced_period(dtype, redop, n)

        def check() -> int:
            out.fill(0)
            collx.allreduce(x, op=rop, out=out)
            return count_wrong(out, want)

        def check_ip() -> int:
            fill(ip, period(dtype, 3 * r))
            collx.allreduce(ip, op=rop, out=ip)
            return count_wrong(ip, want)
        return Case(op, count, lambda: collx.allreduce(x, op=rop, out=out), check,
                    (lambda: collx.allreduce(ip, op=rop, out=ip)) if inplace else None,
                    check_ip if inplace else None, x.nbytes, out.nbytes)
    if op == "broadcast":
        x, out, ip = np.empty(count, dtype), _zeros(count, dtype), np.empty(count, dtype)
        fill(x, period(dtype, 3 * r))
        fill(ip, period(dtype, 3 * r))
        want = period(dtype, 3 * root)

        def check() -> int:
            out.fill(0)
            collx.broadcast(x, root, out=out)
            return count_wrong(out, want)

        def check_ip() -> int:
            fill(ip, period(dtype, 3 * r))
            collx.broadcast(ip, root, out=ip)
            return count_wrong(ip, want)
        return Case(op, count, lambda: collx.broadcast(x, root, out=out), check,
                    (lambda: collx.broadcast(ip, root, out=ip)) if inplace else None,
                    check_ip if inplace else None, x.nbytes, out.nbytes)
    blk = count // n
    if op == "allgather":
        x, out = np.empty(blk, dtype), _zeros(count, dtype)
        fill(x, period(dtype, 3 * r))

        def check() -> int:
            out.fill(0)
            collx.allgather(x, out=out)
            return sum(count_wrong(out[b * blk:(b + 1) * blk], period(dtype, 3 * b))
                       for b in range(n))
        return Case(op, count, lambda: collx.allgather(x, out=out), check,
                    nbytes_in=x.nbytes, nbytes_out=out.nbytes)
    if op == "reducescatter":
        x, out = np.empty(count, dtype), _zeros(blk, dtype)
        fill(x, period(dtype, 3 * r))
        want = reduced_period(dtype, redop, n, offset=r * blk)
        if _accepts_out(collx.reducescatter):
            run = lambda: collx.reducescatter(x, op=rop, out=out)  # noqa: E731
        else:
            run = lambda: collx.reducescatter(x, op=rop)  # noqa: E731

        def check() -> int:
            out.fill(0)
            got = run()
            return count_wrong(np.asarray(out if got is None else got), want)
        return Case(op, count, run, check, nbytes_in=x.nbytes, nbytes_out=out.nbytes)
    if op == "alltoall":
        x, out = np.empty(count, dtype), _zeros(count, dtype)
        for j in range(n):   # block j goes to rank j
            fill(x[j * blk:(j + 1) * blk], period(dtype, 3 * r + 2 * j))
        if _accepts_out(collx.alltoall):
            run = lambda: collx.alltoall(x, out=out)  # noqa: E731
        else:
            run = lambda: collx.alltoall(x)  # noqa: E731

        def check() -> int:
            out.fill(0)
            got = np.asarray(run())
            # block j of the result came from rank j's block r
            return sum(count_wrong(got[j * blk:(j + 1) * blk], period(dtype, 3 * j + 2 * r))
                       for j in range(n))
        return Case(op, count, run, check, nbytes_in=x.nbytes, nbytes_out=out.nbytes)
    raise ValueError(f"unknown op {op!r}")
