"""Tensor fusion and pre/post scaling of allreduces.

Many small allreduces cost one collective each (latency, plus a coordination round in the
negotiated engine); fused, they cost one. A fused response packs its tensors back to back
(in response order, identical on every rank) into a reused buffer, runs one allreduce in
place on it, and copies each tensor's part out:

    FUSE     concatenate the inputs (one C call), scale by prescale if != 1
    reduce   one ops.prepare_allreduce job on the buffer, in place
    UNFUSE   scale by postscale if != 1, copy every part into its output

Bytes moved locally: 2 x the fused size (in and out) on top of the collective. The element
count is rounded up to one of 8 sizes per power of two (``nice_count``, <= 12.5% more) with
the tail zeroed, so that the plan cache sees a handful of sizes instead of one per fusion
grouping. Only tensors with equal (process set, dtype, op, prescale, postscale) are fused
(collx/runtime/negotiation.py decides which, up to COLLX_FUSION_THRESHOLD bytes).

Scaling: ``result = postscale * reduce(prescale * x)``; integer inputs are scaled in
float64 and truncated back (numpy's unsafe cast), floating inputs in their own dtype.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InvalidUsage
from . import ops
from .buffers import as_array, check_out, reduce_code
from .communicator import Communicator

Job = Callable[[], Any]


def check_factors(pre: Any, post: Any, op: str) -> None:
    for label, f in (("prescale_factor", pre), ("postscale_factor", post)):
        if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(f)):
            raise InvalidUsage(f"collx.{op}: {label}={f!r} must be a finite number")


def scale(dst: np.ndarray, src: np.ndarray, factor: float) -> None:
    """dst = src * factor (dst may be src); a copy when factor == 1."""
    if factor == 1.0:
        if dst is not src:
            np.copyto(dst, src)
        return
    np.multiply(src, factor, out=dst, casting="unsafe")


def nice_count(n: int) -> int:
    """n rounded up to 8 steps per power of two (<= 12.5% larger; exact below 16)."""
    if n <= 16:
        return n
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


def scaled_allreduce_job(comm: Communicator, x: Any, op: int, out: Any, timeout: Any,
                         pre: float, post: float, kind: str = "allreduce") -> Job:
    """An allreduce with scale factors (ordered engine): validated now, scaled at run time
    (prescale into a copy, so x is never modified unless it is also out)."""
    check_factors(pre, post, kind)
    arr = as_array(x, kind)
    src = np.empty_like(arr) if pre != 1.0 else arr
    job = ops.prepare_allreduce(comm, src, op, out, timeout, name=kind)

    def scaled() -> np.ndarray:
        if pre != 1.0:
            scale(src, arr, pre)
        res = job()
        scale(res, res, post)
        return res
    return scaled


def scaled_job(prepare: Callable[..., Job], comm: Communicator, x: Any, pre: float,
               post: float, kind: str, *args: Any) -> Job:
    """``prepare(comm, x', *args)`` with x' = prescale * x and the result scaled by post."""
    if pre == 1.0 and post == 1.0:
        return prepare(comm, x, *args)
    arr = as_array(x, kind)
    src = np.empty_like(arr) if pre != 1.0 else arr
    job = prepare(comm, src, *args)

    def scaled() -> Any:
        if pre != 1.0:
            scale(src, arr, pre)
        res = job()
        scale(res, res, post)
        return res
    return scaled


class FusionBuffer:
    """One reused byte buffer (grows by doubling, never shrinks; owned by one thread)."""

    def __init__(self) -> None:
        self._buf = np.empty(0, np.uint8)

    def view(self, count: int, dtype: np.dtype) -> np.ndarray:
        nbytes = count * dtype.itemsize
        if self._buf.nbytes < nbytes:
            self._buf = np.empty(max(nbytes, 2 * self._buf.nbytes, 1 << 16), np.uint8)
        return self._buf[:nbytes].view(dtype)


def fuse(arrays: Sequence[np.ndarray], view: np.ndarray, total: int, pre: float) -> None:
    """Pack ``arrays`` (of view's dtype) into view[:total], zero the padding, prescale."""
    if len(arrays) == 1:
        view[:total] = arrays[0].reshape(-1)
    else:
        np.concatenate(arrays, axis=None, out=view[:total])
    if view.size > total:
        view[total:] = 0
    if pre != 1.0:
        scale(view, view, pre)


def unfuse(view: np.ndarray, outs: Sequence[np.ndarray], post: float) -> None:
    """Postscale the fused result and copy each part into its output."""
    if post != 1.0:
        total = sum([o.size for o in outs])
        scale(view[:total], view[:total], post)
    off = 0
    for o in outs:
        n = off + o.size
        if o.ndim == 1:
            o[:] = view[off:n]
        else:
            o.reshape(-1)[:] = view[off:n]
        off = n


def fused_allreduce_job(comm: Communicator, arrays: Sequence[np.ndarray],
                        outs: Sequence[np.ndarray], op: int, timeout: Any, pre: float,
                        post: float, buf: FusionBuffer, kind: str = "allreduce") -> Job:
    """One allreduce over several same-dtype arrays through ``buf``."""
    dtype = arrays[0].dtype
    total = sum(a.size for a in arrays)
    count = nice_count(total)
    view = buf.view(count, dtype)
    job = ops.prepare_allreduce(comm, view, op, view, timeout, name=kind)

    def fused() -> None:
        fuse(arrays, view, total, pre)
        job()
        unfuse(view, outs, post)
    return fused


def grouped_allreduce_job(comm: Communicator, xs: Sequence[Any], op: int,
                          outs: Sequence[Any], timeout: Any, pre: float, post: float,
                          kind: str = "grouped_allreduce") -> Job:
    """Ordered engine's grouped_allreduce: every input validated now; one fused allreduce
    per dtype (groups in order of first appearance), results in input order."""
    ops._check_timeout(timeout, kind)
    ops._check_op(op, kind)
    check_factors(pre, post, kind)
    arrs = [as_array(x, kind) for x in xs]
    for a in arrs:
        reduce_code(a, kind)
    res = [check_out(o, kind, a.shape, a.dtype) for a, o in zip(arrs, outs)]
    groups: dict[np.dtype, list[int]] = {}
    for i, a in enumerate(arrs):
        groups.setdefault(a.dtype, []).append(i)
    jobs = [fused_allreduce_job(comm, [arrs[i] for i in idx], [res[i] for i in idx], op,
                                timeout, pre, post, FusionBuffer(), kind)
            for idx in groups.values()]

    def job() -> list:
        for j in jobs:
            j()
        return res
    return job
