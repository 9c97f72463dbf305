"""The synchronous collectives, usable inside autograd (Horovod's conventions):

* allreduce: the gradient is the allreduce of the incoming gradients with the same op and
  scale factors (Average of the ranks' gradients for op=Average, their Sum for op=Sum).
* allgather: each rank gets its own rows of the *average* over ranks of the incoming
  gradients (Horovod >= 0.21: the ranks' losses are averaged, as DistributedOptimizer does).
* broadcast: the root gets the average over ranks of the incoming gradients, the other
  ranks zeros.
* alltoall: the incoming gradients are sent back where their rows came from.
* reducescatter: the incoming gradient blocks are allgathered (divided by the set size
  for op=Average, scaled by prescale*postscale).
* grouped_allreduce: as allreduce, per tensor.

Without a tensor that requires grad (or under torch.no_grad) the plain operation runs.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from . import mpi_ops as _ops
from .compression import Compression


def _grad_needed(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(getattr(t, "requires_grad", False)
                                            for t in tensors)


# ---- allreduce -------------------------------------------------------------------------

class HorovodAllreduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, name: str | None, op: int, prescale: float,
                postscale: float, process_set: Any, block: int | None) -> torch.Tensor:
        ctx.args = (op, prescale, postscale, process_set)
        return _ops._allreduce_out(tensor, name, op, prescale, postscale, process_set, block)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        op, prescale, postscale, process_set = ctx.args
        out = _ops._allreduce_out(grad.contiguous(), None, op, prescale, postscale,
                                  process_set)
        return out, None, None, None, None, None, None


def allreduce(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
              compression: Any = Compression.none, op: int | None = None,
              prescale_factor: float = 1.0, postscale_factor: float = 1.0,
              process_set: Any = None) -> torch.Tensor:
    """Reduce ``tensor`` over the ranks (default op Average); returns a new tensor of its
    shape and dtype; the input is not modified. Differentiable."""
    op = _ops.handle_average_backwards_compatibility(op, average)
    tensor = _ops._check_tensor(tensor, "allreduce", name)
    if _ops._quantized(compression):
        block, compressed, cctx = compression.block, tensor, None
    else:
        block = None
        compressed, cctx = compression.compress(tensor)
    if _grad_needed(compressed):
        out = HorovodAllreduce.apply(compressed, name, op, prescale_factor, postscale_factor,
                                     process_set, block)
    else:
        out = _ops._allreduce_out(compressed, name, op, prescale_factor, postscale_factor,
                                  process_set, block)
    return out if block is not None else compression.decompress(out, cctx)


class HorovodGroupedAllreduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, name: str | None, op: int, prescale: float, postscale: float,
                process_set: Any, *tensors: torch.Tensor) -> tuple:
        ctx.args = (op, prescale, postscale, process_set)
        return tuple(_ops._grouped_out(tensors, name, op, prescale, postscale, process_set))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        op, prescale, postscale, process_set = ctx.args
        outs = _ops._grouped_out([g.contiguous() for g in grads], None, op, prescale,
                                 postscale, process_set)
        return (None, None, None, None, None, *outs)


def grouped_allreduce(tensors: Sequence[torch.Tensor], average: bool | None = None,
                      name: str | None = None, compression: Any = Compression.none,
                      op: int | None = None, prescale_factor: float = 1.0,
                      postscale_factor: float = 1.0, process_set: Any = None) -> list:
    """allreduce of each tensor of the list, as one operation; returns a list."""
    op = _ops.handle_average_backwards_compatibility(op, average)
    if _ops._quantized(compression):
        return [allreduce(t, name=None if name is None else f"{name}.{i}",
                          compression=compression, op=op, prescale_factor=prescale_factor,
                          postscale_factor=postscale_factor, process_set=process_set)
                for i, t in enumerate(tensors)]
    tensors = [_ops._check_tensor(t, "grouped_allreduce", name) for t in tensors]
    pairs = [compression.compress(t) for t in tensors]
    compressed = [c for c, _ in pairs]
    if _grad_needed(*compressed):
        outs = list(HorovodGroupedAllreduce.apply(name, op, prescale_factor, postscale_factor,
                                                  process_set, *compressed))
    else:
        outs = _ops._grouped_out(compressed, name, op, prescale_factor, postscale_factor,
                                 process_set)
    return [compression.decompress(o, c) for o, (_, c) in zip(outs, pairs)]


# ---- allgather -------------------------------------------------------------------------

class HorovodAllgather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, name: str | None,
                process_set: Any) -> torch.Tensor:
        ctx.rows, ctx.process_set = tensor.shape[0], process_set
        return _ops._allgather_start(tensor, name, process_set, False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        ps = ctx.process_set
        reduced = _ops._allreduce_out(grad.contiguous(), None, _ops.Average, 1.0, 1.0, ps)
        rows = _ops._allgather_start(torch.tensor([ctx.rows], dtype=torch.int64), None, ps,
                                     False)
        offset = int(rows[:_ops._set_rank(ps)].sum())
        return reduced.narrow(0, offset, ctx.rows), None, None


def allgather(tensor: torch.Tensor, name: str | None = None,
              process_set: Any = None) -> torch.Tensor:
    """Concatenate every rank's tensor along the first dimension (which may differ per
    rank); the input is not modified. Differentiable."""
    if _grad_needed(tensor):
        return HorovodAllgather.apply(tensor, name, process_set)
    return _ops._allgather_start(tensor, name, process_set, False)


def grouped_allgather(tensors: Sequence[torch.Tensor], name: str | None = None,
                      process_set: Any = None) -> list:
    """allgather of each tensor of the list, as one operation (per tensor under autograd)."""
    if _grad_needed(*tensors):
        return [allgather(t, None if name is None else f"{name}.{i}", process_set)
                for i, t in enumerate(tensors)]
    return _ops.synchronize(_ops.grouped_allgather_async(tensors, name, process_set))


# ---- broadcast -------------------------------------------------------------------------

class HorovodBroadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, root_rank: int, name: str | None,
                process_set: Any) -> torch.Tensor:
        ctx.root_rank, ctx.process_set = root_rank, process_set
        return _ops._broadcast_out(tensor, root_rank, name, process_set)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        reduced = _ops._allreduce_out(grad.contiguous(), None, _ops.Average, 1.0, 1.0,
                                      ctx.process_set)
        if _ops.rank() != ctx.root_rank:
            reduced.zero_()
        return reduced, None, None, None


def broadcast(tensor: torch.Tensor, root_rank: int, name: str | None = None,
              process_set: Any = None) -> torch.Tensor:
    """root_rank's tensor, on every rank, as a new tensor. Differentiable."""
    if _grad_needed(tensor):
        return HorovodBroadcast.apply(tensor, root_rank, name, process_set)
    return _ops._broadcast_out(tensor, root_rank, name, process_set)


# ---- alltoall --------------------------------------------------------------------------

class HorovodAlltoall(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, splits: Any, name: str | None,
                process_set: Any) -> Any:
        output, received = _ops._alltoall_start(tensor, splits, name, process_set, False)
        ctx.received, ctx.process_set = received, process_set
        if splits is None:
            return output
        ctx.mark_non_differentiable(received)
        return output, received

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *unused: Any) -> tuple:
        back, _ = _ops._alltoall_start(grad.contiguous(), ctx.received, None,
                                       ctx.process_set, False)
        return back, None, None, None


def alltoall(tensor: torch.Tensor, splits: Any = None, name: str | None = None,
             process_set: Any = None) -> Any:
    """Send splits[d] rows of tensor to rank d (even split when None). Returns the rows
    received, in rank order; with splits given, also the received splits. Differentiable."""
    if _grad_needed(tensor):
        return HorovodAlltoall.apply(tensor, splits, name, process_set)
    output, received = _ops._alltoall_start(tensor, splits, name, process_set, False)
    return output if splits is None else (output, received)


# ---- reducescatter ---------------------------------------------------------------------

class HorovodReducescatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, name: str | None, op: int, process_set: Any,
                prescale: float, postscale: float) -> torch.Tensor:
        ctx.args = (op, process_set, prescale * postscale)
        return _ops._reducescatter_start(tensor, name, op, process_set, prescale, postscale,
                                         False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        op, ps, scale = ctx.args
        full = _ops._allgather_start(grad.contiguous(), None, ps, False)
        if op == _ops.Average:
            scale /= _ops._set_size(ps)
        if scale != 1.0:
            full = full * scale
        return full, None, None, None, None, None


def reducescatter(tensor: torch.Tensor, name: str | None = None,
                  compression: Any = Compression.none, op: int = _ops.Average,
                  process_set: Any = None, prescale_factor: float = 1.0,
                  postscale_factor: float = 1.0) -> torch.Tensor:
    """Reduce over ranks; rank r gets the r-th block of rows. Differentiable."""
    tensor = _ops._check_tensor(tensor, "reducescatter", name)
    compressed, cctx = compression.compress(tensor)
    if _grad_needed(compressed):
        out = HorovodReducescatter.apply(compressed, name, op, process_set, prescale_factor,
                                         postscale_factor)
    else:
        out = _ops._reducescatter_start(compressed, name, op, process_set, prescale_factor,
                                        postscale_factor, False)
    return compression.decompress(out, cctx)


def grouped_reducescatter(tensors: Sequence[torch.Tensor], name: str | None = None,
                          compression: Any = Compression.none, op: int = _ops.Average,
                          process_set: Any = None, prescale_factor: float = 1.0,
                          postscale_factor: float = 1.0) -> list:
    """reducescatter of each tensor of the list, as one operation (per tensor under
    autograd)."""
    if _grad_needed(*tensors):
        return [reducescatter(t, None if name is None else f"{name}.{i}", compression, op,
                              process_set, prescale_factor, postscale_factor)
                for i, t in enumerate(tensors)]
    pairs = [compression.compress(t) for t in tensors]
    outs = _ops.synchronize(_ops.grouped_reducescatter_async(
        [c for c, _ in pairs], name, op, process_set, prescale_factor, postscale_factor))
    return [compression.decompress(o, c) for o, (_, c) in zip(outs, pairs)]
