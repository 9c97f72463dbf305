"""Whole-model helpers: broadcast parameters, optimizer state and Python objects.

Objects travel pickled (``pickle``, protocol 5): a broadcast of the length, then of the
bytes. Optimizer state travels as tensors where it is tensors (in-place broadcasts, no
pickling of the big buffers) and as one pickled skeleton for the rest (hyper-parameters,
step counts, structure).
"""
from __future__ import annotations

import pickle
from typing import Any, Iterable

import numpy as np
import torch

from . import mpi_ops as _ops


def broadcast_parameters(params: Any, root_rank: int, prefix: str | None = None,
                         process_set: Any = None) -> None:
    """Overwrite every rank's tensors with root_rank's: ``params`` is a state_dict (or any
    name -> tensor mapping), ``model.named_parameters()`` or a list of tensors."""
    if isinstance(params, dict):
        items = sorted(params.items())
    elif isinstance(params, Iterable) and not isinstance(params, (str, torch.Tensor)):
        items = [p if isinstance(p, tuple) else (None, p) for p in params]
    else:
        raise ValueError(f"broadcast_parameters: invalid params of type {type(params).__name__}"
                         f"; pass model.state_dict(), model.named_parameters() or a list")
    handles = []
    for name, p in items:
        if p is None:
            continue
        full = None if name is None else (f"{prefix}.{name}" if prefix else name)
        handles.append(_ops.broadcast_async_(p.data if isinstance(p, torch.nn.Parameter) else p,
                                             root_rank, full, process_set))
    for h in handles:
        _ops.synchronize(h)


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None,
                     process_set: Any = None) -> Any:
    """root_rank's ``obj`` on every rank (pickled; other ranks' ``obj`` is ignored)."""
    # one default for every rank: the root's obj and the others' (often None) differ in type
    name = "broadcast_object" if name is None else name
    if _ops.rank() == root_rank:
        data = np.frombuffer(pickle.dumps(obj, protocol=5), dtype=np.uint8)
        length = torch.tensor([data.size], dtype=torch.int64)
        _ops.broadcast_(length, root_rank, f"{name}.sz", process_set)
        payload = torch.from_numpy(data.copy())
        _ops.broadcast_(payload, root_rank, f"{name}.t", process_set)
        return obj
    length = torch.zeros(1, dtype=torch.int64)
    _ops.broadcast_(length, root_rank, f"{name}.sz", process_set)
    payload = torch.empty(int(length.item()), dtype=torch.uint8)
    _ops.broadcast_(payload, root_rank, f"{name}.t", process_set)
    return pickle.loads(payload.numpy().tobytes())


def allgather_object(obj: Any, name: str | None = None, process_set: Any = None) -> list:
    """Every rank's ``obj``, in rank order (pickled)."""
    name = "allgather_object" if name is None else name
    data = torch.from_numpy(np.frombuffer(pickle.dumps(obj, protocol=5), dtype=np.uint8).copy())
    sizes = _ops.allgather(torch.tensor([data.numel()], dtype=torch.int64), f"{name}.sz",
                           process_set).tolist()
    gathered = _ops.allgather(data, f"{name}.t", process_set).numpy()
    out, start = [], 0
    for n in sizes:
        out.append(pickle.loads(gathered[start:start + n].tobytes()))
        start += n
    return out


class _TensorSlot:
    """Placeholder for the i-th state tensor inside the pickled skeleton."""

    def __init__(self, index: int, shape: tuple, dtype: torch.dtype) -> None:
        self.index, self.shape, self.dtype = index, shape, dtype


def _strip(obj: Any, tensors: list) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        return _TensorSlot(len(tensors) - 1, tuple(obj.shape), obj.dtype)
    if isinstance(obj, dict):
        return {k: _strip(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip(v, tensors) for v in obj)
    return obj


def _fill(obj: Any, tensors: list) -> Any:
    if isinstance(obj, _TensorSlot):
        return tensors[obj.index]
    if isinstance(obj, dict):
        return {k: _fill(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_fill(v, tensors) for v in obj)
    return obj


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int,
                              model: Any = None, process_set: Any = None) -> None:
    """Make every rank's optimizer state (hyper-parameters of each param group, per
    parameter buffers, step counts) equal to root_rank's. A rank with no state yet gets
    root_rank's; root_rank with no state makes every rank's empty. Unlike Horovod no
    optimizer step is taken to create state, so parameters are never touched."""
    state = optimizer.state_dict()
    tensors: list[torch.Tensor] = []
    skeleton = _strip(state, tensors) if _ops.rank() == root_rank else None
    skeleton = broadcast_object(skeleton, root_rank, "optimizer_state.skeleton", process_set)
    slots: list[_TensorSlot] = []

    def collect(obj: Any) -> None:
        if isinstance(obj, _TensorSlot):
            slots.append(obj)
        elif isinstance(obj, dict):
            for v in obj.values():
                collect(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                collect(v)
    collect(skeleton)
    slots.sort(key=lambda s: s.index)
    if _ops.rank() == root_rank:
        bufs = [t.detach().contiguous() for t in tensors]
    else:
        bufs = [torch.empty(s.shape, dtype=s.dtype) for s in slots]
    handles = [_ops.broadcast_async_(b.reshape(-1) if b.dim() == 0 else b, root_rank,
                                     f"optimizer_state.{i}", process_set)
               for i, b in enumerate(bufs)]
    for h in handles:
        _ops.synchronize(h)
    if _ops.rank() != root_rank:
        optimizer.load_state_dict(_fill(skeleton, bufs))
