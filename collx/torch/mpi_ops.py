"""Horovod's ``horovod.torch`` operations on torch tensors, over collx's numpy-level API.

A contiguous CPU tensor is handed to collx as a numpy *view* of its storage (no copy): the
in-place ``*_`` forms write the result straight into the tensor, the out-of-place forms
allocate the result tensor first and pass its view as ``out=``. Two dtypes have no numpy
twin or no C kernel and take a detour, both stated here and tested:

* ``bfloat16`` moves (broadcast, allgather, alltoall) travel as their 16-bit patterns;
  reductions use the C core's bfloat16 kernel through ``ml_dtypes`` when it is installed
  (the ``torch`` extra installs it) and otherwise are reduced in float32 and rounded back.
* ``int16`` (no C kernel) is reduced in int32 and narrowed back; other dtypes without a
  kernel (bool, complex, ...) can be moved but not reduced (``ValueError``).

CUDA tensors are refused with a ``ValueError`` naming the fix: this build has no GPU
transport yet (DLPack/cupy is the planned path).

Argument order and defaults follow Horovod: ``allreduce(tensor, average, name, compression,
op, prescale_factor, postscale_factor, process_set)``; the deprecated ``average=`` is
honoured with a DeprecationWarning. ``process_set=None`` means the global set. Async forms
return a :class:`Handle` for :func:`poll` / :func:`synchronize`. Errors: local argument
errors are ``ValueError`` (collx's ``InvalidUsage`` is one); anything that fails across
ranks (mismatch, timeout, dead peer) surfaces as ``HorovodInternalError`` (a
``RuntimeError``) that is also an instance of the collx error it came from.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import numpy as np
import torch

import collx
from collx.errors import CollxError, InvalidUsage
from collx.runtime.buffers import dtype_code

# ---- constants -------------------------------------------------------------------------

Average: int = collx.Average
Sum: int = collx.Sum
Min: int = collx.Min
Max: int = collx.Max
Product: int = collx.Product
Adasum: int = -1          # accepted as a name; using it raises NotImplementedError
_OPS = {Average: "Average", Sum: "Sum", Min: "Min", Max: "Max", Product: "Product"}


class HorovodInternalError(RuntimeError):
    """An operation failed across ranks (Horovod's name). Raised by collx.torch as a class
    that is also the collx error it came from (MismatchError, CollxTimeout, ...)."""


class HostsUpdatedInterrupt(RuntimeError):
    """Horovod elastic's interrupt; collx has no elastic mode, so it is never raised."""

    def __init__(self, skip_sync: bool = False) -> None:
        super().__init__("hosts updated")
        self.skip_sync = skip_sync


_internal_classes: dict[type, type] = {}


def _internal(exc: CollxError, label: str | None = None) -> BaseException:
    """The same error as a HorovodInternalError subclass of its own collx type, its message
    led by the operation and tensor name when the engine's message lacks them."""
    cls = _internal_classes.get(type(exc))
    if cls is None:
        cls = type(type(exc).__name__, (HorovodInternalError, type(exc)),
                   {"__module__": __name__})
        _internal_classes[type(exc)] = cls
    text = str(exc)
    if label and label not in text:
        text = f"{label}: {text}"
    return cls(text)


def _call(fn: Callable[..., Any], *args: Any, label_: str | None = None, **kwargs: Any) -> Any:
    """Run a collx call, turning cross-rank failures into HorovodInternalError."""
    try:
        return fn(*args, **kwargs)
    except InvalidUsage:
        raise
    except CollxError as exc:
        raise _internal(exc, label_) from exc


# ---- basics ----------------------------------------------------------------------------

def init(comm: Any = None, process_sets: Any = None) -> None:
    """Join the job (collxrun's or mpirun's variables, else a single process). Can be called
    again after shutdown(). ``process_sets``: ProcessSets to register now, or "dynamic"."""
    if comm is not None:
        raise NotImplementedError("collx.torch.init(comm=...): collx builds its communicator "
                                  "itself; launch with collxrun (or mpirun) and call init()")
    collx.init(negotiate=True)        # Horovod semantics: the negotiated engine
    if process_sets is not None and process_sets != "dynamic":
        for ps in process_sets:
            collx.add_process_set(ps)


def shutdown() -> None:
    collx.shutdown()


def is_initialized() -> bool:
    return collx.is_initialized()


def size() -> int:
    return _call(collx.size)


def rank() -> int:
    return _call(collx.rank)


def local_size() -> int:
    return _call(collx.local_size)


def local_rank() -> int:
    return _call(collx.local_rank)


def cross_size() -> int:
    return _call(collx.cross_size)


def cross_rank() -> int:
    return _call(collx.cross_rank)


def is_homogeneous() -> bool:
    return local_size() * cross_size() == size()


def _false() -> bool:
    return False


# collx runs its own transports: no MPI, Gloo, NCCL, DDL, oneCCL or GPU build inside
mpi_threads_supported = mpi_enabled = mpi_built = _false
gloo_enabled = gloo_built = nccl_built = ddl_built = ccl_built = _false
cuda_built = rocm_built = _false


def start_timeline(file_path: str, mark_cycles: bool = False) -> None:
    collx.start_timeline(file_path, mark_cycles)


def stop_timeline() -> None:
    collx.stop_timeline()


def handle_average_backwards_compatibility(op: int | None, average: bool | None) -> int:
    """Horovod's rule: ``average=`` is deprecated; passing both is an error."""
    if op is not None:
        if average is not None:
            raise ValueError("The op parameter supersedes average: pass only one of them "
                             "(op=hvd.Average or op=hvd.Sum)")
        return op
    if average is not None:
        warnings.warn("Parameter `average` has been replaced with `op`; use op=hvd.Average "
                      "or op=hvd.Sum", DeprecationWarning, stacklevel=3)
        return Average if average else Sum
    return Average


def _check_op(op: int, what: str) -> int:
    if op == Adasum:
        raise NotImplementedError(f"collx.torch.{what}: op=Adasum is not supported yet; use "
                                  f"op=hvd.Average (or hvd.Sum)")
    if op not in _OPS:
        raise ValueError(f"collx.torch.{what}: unknown op {op!r}; use one of hvd.Average, "
                         f"hvd.Sum, hvd.Min, hvd.Max, hvd.Product")
    return op


# ---- process sets ----------------------------------------------------------------------

def _is_global(process_set: Any) -> bool:
    return process_set is None or getattr(process_set, "process_set_id", None) == 0


def _kw(process_set: Any = None, prescale_factor: float = 1.0,
        postscale_factor: float = 1.0) -> dict[str, Any]:
    """Keywords for collx: only what differs from its defaults."""
    kw: dict[str, Any] = {}
    if not _is_global(process_set):
        kw["process_set"] = process_set
    if prescale_factor != 1.0:
        kw["prescale_factor"] = float(prescale_factor)
    if postscale_factor != 1.0:
        kw["postscale_factor"] = float(postscale_factor)
    return kw


def _set_size(process_set: Any) -> int:
    return size() if _is_global(process_set) else process_set.size()


def _set_rank(process_set: Any) -> int:
    return rank() if _is_global(process_set) else process_set.rank()


# ---- tensors <-> numpy views -----------------------------------------------------------

def _bf16_numpy() -> np.dtype | None:
    try:
        import ml_dtypes  # type: ignore[import-not-found]
    except ImportError:
        return None
    dt = np.dtype(ml_dtypes.bfloat16)
    return dt if dtype_code(dt) is not None else None


_BF16: np.dtype | None = _bf16_numpy()
_NATIVE_REDUCE = {torch.float16, torch.float32, torch.float64, torch.int8, torch.uint8,
                  torch.int32, torch.int64}
_WIDEN = {torch.bfloat16: torch.float32, torch.int16: torch.int32}


def _label(what: str, name: str | None) -> str:
    return f"collx.torch.{what}" + (f"({name!r})" if name else "")


def _check_tensor(t: Any, what: str, name: str | None, inplace: bool = False) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{_label(what, name)}: expected a torch.Tensor, got "
                         f"{type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{_label(what, name)}: tensor is on {t.device}; this collx build "
                         f"moves CPU tensors only (CUDA needs the GPU build: DLPack/cupy). "
                         f"Move it with .cpu() first")
    if t.is_sparse:
        raise ValueError(f"{_label(what, name)}: sparse tensor; use sparse_allreduce_async "
                         f"or to_dense()")
    if not t.is_contiguous():
        if inplace:
            raise ValueError(f"{_label(what, name)}: tensor is required to be contiguous for "
                             f"an in-place operation (shape {tuple(t.shape)}, strides "
                             f"{t.stride()})")
        t = t.contiguous()
    return t


def _view(t: torch.Tensor) -> np.ndarray:
    """numpy view of a contiguous CPU tensor's storage, for moving bytes."""
    t = t.detach()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy()
    return t.numpy()


def _from_view(arr: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Wrap a numpy result of a move as a tensor of ``dtype`` (no copy)."""
    t = torch.from_numpy(arr)
    return t.view(torch.bfloat16) if dtype is torch.bfloat16 else t


def _from_reduced(res: np.ndarray, dtype: torch.dtype, widened: bool) -> torch.Tensor:
    """A new reduction result (numpy) as a tensor of ``dtype``."""
    if widened:
        return torch.from_numpy(res).to(dtype)
    if dtype is torch.bfloat16:
        return torch.from_numpy(res.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(res)


def _reduce_view(t: torch.Tensor, what: str, name: str | None) -> tuple[np.ndarray, bool]:
    """(array to reduce, widened): a view of t, or a widened copy when t's dtype has no C
    kernel (the caller narrows the result back)."""
    t = t.detach()
    if t.dtype in _NATIVE_REDUCE:
        return t.numpy(), False
    if t.dtype is torch.bfloat16 and _BF16 is not None:
        return t.view(torch.int16).numpy().view(_BF16), False
    wide = _WIDEN.get(t.dtype)
    if wide is None:
        raise ValueError(f"{_label(what, name)}: no reduction for dtype {t.dtype}; supported: "
                         f"float16, bfloat16, float32, float64, int8, uint8, int16, int32, "
                         f"int64")
    return t.to(wide).numpy(), True


# ---- handles ---------------------------------------------------------------------------

class Handle:
    """An async collx.torch operation: :func:`poll` it, :func:`synchronize` it once for its
    result. Keeps the tensors it reads and writes alive until then."""

    __slots__ = ("_handles", "_finish", "_keep", "_done", "_result", "label")

    def __init__(self, handles: Sequence[Any], finish: Callable[..., Any], keep: Any = None,
                 label: str | None = None):
        self.label = label
        self._handles = tuple(handles)
        self._finish = finish
        self._keep = keep
        self._done = False
        self._result: Any = None

    def poll(self) -> bool:
        return self._done or all(h.done() for h in self._handles)

    def wait(self) -> Any:
        if not self._done:
            results = [_call(collx.synchronize, h, label_=self.label) for h in self._handles]
            self._result = self._finish(*results)
            self._done, self._keep, self._handles = True, None, ()
        return self._result


def poll(handle: Handle) -> bool:
    """True when the operation has finished (synchronize() will not block)."""
    return handle.poll()


def synchronize(handle: Handle) -> Any:
    """Wait for an async operation; returns its output tensor (a tuple for alltoall, a list
    for grouped operations)."""
    if not isinstance(handle, Handle):
        raise ValueError(f"collx.torch.synchronize: expected a handle from an *_async call, "
                         f"got {type(handle).__name__}")
    return handle.wait()


# ---- allreduce -------------------------------------------------------------------------

def _quantized(compression: Any) -> bool:
    return bool(getattr(compression, "quantized", False))


def _allreduce_start(tensor: torch.Tensor, output: torch.Tensor | None, name: str | None,
                     op: int, prescale_factor: float, postscale_factor: float,
                     process_set: Any, asynchronous: bool, block: int | None = None,
                     what: str = "allreduce") -> Any:
    """Reduce ``tensor`` into ``output`` (None: into ``tensor`` itself). ``block`` set:
    int8 block-quantized (collx.quantized_allreduce). Returns a Handle or the output."""
    inplace = output is None
    tensor = _check_tensor(tensor, what, name, inplace)
    _check_op(op, what)
    if output is None:
        output = tensor
    if block is not None and not tensor.is_floating_point():
        block = None                            # compression applies to floating point only
    if block is not None and op not in (Sum, Average):
        raise ValueError(f"{_label(what, name)}: int8 compression reduces with Sum or "
                         f"Average only, not {_OPS[op]}")
    if block is not None and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        src, widened = tensor.detach().to(torch.float32).numpy(), True
    else:
        src, widened = _reduce_view(tensor, what, name)
    post = 1.0
    if block is not None:       # quantized_allreduce has no scale factors: apply them here
        if prescale_factor != 1.0:
            src, widened = (src * prescale_factor).astype(src.dtype, copy=False), True
        post, prescale_factor, postscale_factor = postscale_factor, 1.0, 1.0
    if widened:
        out = src                               # reduce the widened copy in place
    elif output is tensor:
        out = src
    else:
        out = _reduce_view(output, what, name)[0]
    kw = _kw(process_set, prescale_factor, postscale_factor)
    if block is not None:
        kw["block"] = block
        fn = collx.quantized_allreduce_async if asynchronous else collx.quantized_allreduce
    else:
        fn = collx.allreduce_async if asynchronous else collx.allreduce

    def finish(res: np.ndarray) -> torch.Tensor:
        if widened:
            output.copy_(torch.from_numpy(res))
        if post != 1.0:
            output.mul_(post)
        return output

    label = _label(what, name)
    res = _call(fn, src, op=op, name=name, out=out, label_=label, **kw)
    if asynchronous:
        return Handle((res,), finish, (tensor, output, src, out), label)
    return finish(res)


def allreduce_async(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                    op: int | None = None, prescale_factor: float = 1.0,
                    postscale_factor: float = 1.0, process_set: Any = None) -> Handle:
    """Start reducing ``tensor`` over the ranks; the input is not modified."""
    op = handle_average_backwards_compatibility(op, average)
    tensor = _check_tensor(tensor, "allreduce_async", name)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _allreduce_start(tensor, output, name, op, prescale_factor, postscale_factor,
                            process_set, True, what="allreduce_async")


def allreduce_async_(tensor: torch.Tensor, average: bool | None = None,
                     name: str | None = None, op: int | None = None,
                     prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                     process_set: Any = None) -> Handle:
    """Start reducing ``tensor`` in place."""
    op = handle_average_backwards_compatibility(op, average)
    return _allreduce_start(tensor, None, name, op, prescale_factor, postscale_factor,
                            process_set, True, what="allreduce_async_")


def allreduce_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
               op: int | None = None, prescale_factor: float = 1.0,
               postscale_factor: float = 1.0, process_set: Any = None) -> torch.Tensor:
    """Reduce ``tensor`` in place; returns it."""
    op = handle_average_backwards_compatibility(op, average)
    return _allreduce_start(tensor, None, name, op, prescale_factor, postscale_factor,
                            process_set, False, what="allreduce_")


def _allreduce_out(tensor: torch.Tensor, name: str | None, op: int, prescale_factor: float,
                   postscale_factor: float, process_set: Any, block: int | None = None
                   ) -> torch.Tensor:
    """Synchronous out-of-place allreduce (no autograd)."""
    tensor = _check_tensor(tensor, "allreduce", name)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _allreduce_start(tensor, output, name, op, prescale_factor, postscale_factor,
                            process_set, False, block=block)


# ---- grouped allreduce -----------------------------------------------------------------

def _grouped_start(tensors: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor] | None,
                   name: str | None, op: int, prescale_factor: float,
                   postscale_factor: float, process_set: Any, asynchronous: bool,
                   what: str) -> Any:
    tensors = [_check_tensor(t, what, name, outputs is None) for t in tensors]
    _check_op(op, what)
    outs_t = list(tensors) if outputs is None else list(outputs)
    pairs = [_reduce_view(t, what, name) for t in tensors]
    srcs = [a for a, _ in pairs]
    outs = [a if (w or o is t) else _reduce_view(o, what, name)[0]
            for (a, w), t, o in zip(pairs, tensors, outs_t)]
    kw = _kw(process_set, prescale_factor, postscale_factor)
    fn = collx.grouped_allreduce_async if asynchronous else collx.grouped_allreduce

    def finish(res: list) -> list:
        for (_, widened), r, o in zip(pairs, res, outs_t):
            if widened:
                o.copy_(torch.from_numpy(r))
        return outs_t

    label = _label(what, name)
    res = _call(fn, srcs, op=op, name=name, outs=outs, label_=label, **kw)
    if asynchronous:
        return Handle((res,), finish, (tensors, outs_t, srcs, outs), label)
    return finish(res)


def grouped_allreduce_async(tensors: Sequence[torch.Tensor], average: bool | None = None,
                            name: str | None = None, op: int | None = None,
                            prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                            process_set: Any = None) -> Handle:
    op = handle_average_backwards_compatibility(op, average)
    tensors = [_check_tensor(t, "grouped_allreduce_async", name) for t in tensors]
    outputs = [torch.empty_like(t) for t in tensors]
    return _grouped_start(tensors, outputs, name, op, prescale_factor, postscale_factor,
                          process_set, True, "grouped_allreduce_async")


def grouped_allreduce_async_(tensors: Sequence[torch.Tensor], average: bool | None = None,
                             name: str | None = None, op: int | None = None,
                             prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                             process_set: Any = None) -> Handle:
    op = handle_average_backwards_compatibility(op, average)
    return _grouped_start(tensors, None, name, op, prescale_factor, postscale_factor,
                          process_set, True, "grouped_allreduce_async_")


def grouped_allreduce_(tensors: Sequence[torch.Tensor], average: bool | None = None,
                       name: str | None = None, op: int | None = None,
                       prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                       process_set: Any = None) -> list:
    op = handle_average_backwards_compatibility(op, average)
    return _grouped_start(tensors, None, name, op, prescale_factor, postscale_factor,
                          process_set, False, "grouped_allreduce_")


def _grouped_out(tensors: Sequence[torch.Tensor], name: str | None, op: int,
                 prescale_factor: float, postscale_factor: float, process_set: Any) -> list:
    tensors = [_check_tensor(t, "grouped_allreduce", name) for t in tensors]
    outputs = [torch.empty_like(t) for t in tensors]
    return _grouped_start(tensors, outputs, name, op, prescale_factor, postscale_factor,
                          process_set, False, "grouped_allreduce")


# ---- sparse ----------------------------------------------------------------------------

def sparse_allreduce_async(tensor: torch.Tensor, name: str | None, op: int,
                           process_set: Any = None) -> Handle:
    """Reduce a sparse COO tensor by allgathering its indices and values (duplicates add
    up when the result is coalesced); Average divides the values by the set size."""
    _check_op(op, "sparse_allreduce_async")
    if op not in (Average, Sum):
        raise ValueError(f"collx.torch.sparse_allreduce_async: op must be Average or Sum, "
                         f"not {_OPS[op]}")
    indices = tensor._indices().transpose(0, 1).contiguous()
    values = tensor._values().contiguous()
    h_idx = allgather_async(indices, name=None if name is None else f"{name}.indices",
                            process_set=process_set)
    h_val = allgather_async(values, name=None if name is None else f"{name}.values",
                            process_set=process_set)
    n = _set_size(process_set)
    shape = tensor.size()

    def finish(idx_res: np.ndarray, val_res: np.ndarray) -> torch.Tensor:
        idx, vals = h_idx._finish(idx_res), h_val._finish(val_res)
        if op == Average:
            vals = vals / n
        return torch.sparse_coo_tensor(idx.transpose(0, 1), vals, shape,
                                       check_invariants=False)
    return Handle((*h_idx._handles, *h_val._handles), finish, (tensor, h_idx, h_val),
                  _label("sparse_allreduce_async", name))


# ---- allgather -------------------------------------------------------------------------

def _allgather_start(tensor: torch.Tensor, name: str | None, process_set: Any,
                     asynchronous: bool, what: str = "allgather") -> Any:
    tensor = _check_tensor(tensor, what, name)
    if tensor.dim() == 0:
        raise ValueError(f"{_label(what, name)}: needs at least one dimension (rows are "
                         f"concatenated along the first); use tensor.reshape(1)")
    src = _view(tensor)
    dtype = tensor.dtype

    def finish(res: np.ndarray) -> torch.Tensor:
        return _from_view(res, dtype)

    fn = collx.allgather_async if asynchronous else collx.allgather
    label = _label(what, name)
    res = _call(fn, src, name=name, label_=label, **_kw(process_set))
    if asynchronous:
        return Handle((res,), finish, (tensor, src), label)
    return finish(res)


def allgather_async(tensor: torch.Tensor, name: str | None = None,
                    process_set: Any = None) -> Handle:
    """Start concatenating every rank's tensor along the first dimension."""
    return _allgather_start(tensor, name, process_set, True, "allgather_async")


def grouped_allgather_async(tensors: Sequence[torch.Tensor], name: str | None = None,
                            process_set: Any = None) -> Handle:
    tensors = [_check_tensor(t, "grouped_allgather_async", name) for t in tensors]
    srcs = [_view(t) for t in tensors]
    dtypes = [t.dtype for t in tensors]
    label = _label("grouped_allgather_async", name)
    h = _call(collx.grouped_allgather_async, srcs, name=name, label_=label,
              **_kw(process_set))
    return Handle((h,), lambda res: [_from_view(r, d) for r, d in zip(res, dtypes)],
                  (tensors, srcs), label)


# ---- broadcast -------------------------------------------------------------------------

def _broadcast_start(tensor: torch.Tensor, output: torch.Tensor | None, root_rank: int,
                     name: str | None, process_set: Any, asynchronous: bool,
                     what: str = "broadcast") -> Any:
    tensor = _check_tensor(tensor, what, name, output is None)
    if output is None:
        output = tensor
    src, out = _view(tensor), _view(output)
    fn = collx.broadcast_async if asynchronous else collx.broadcast
    label = _label(what, name)
    res = _call(fn, src, root_rank, name=name, out=out, label_=label, **_kw(process_set))
    if asynchronous:
        return Handle((res,), lambda _r: output, (tensor, output, src, out), label)
    return output


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: str | None = None,
                    process_set: Any = None) -> Handle:
    """Start copying root_rank's tensor to every rank; the input is not modified."""
    tensor = _check_tensor(tensor, "broadcast_async", name)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _broadcast_start(tensor, output, root_rank, name, process_set, True,
                            "broadcast_async")


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: str | None = None,
                     process_set: Any = None) -> Handle:
    """Start overwriting ``tensor`` with root_rank's values."""
    return _broadcast_start(tensor, None, root_rank, name, process_set, True,
                            "broadcast_async_")


def broadcast_(tensor: torch.Tensor, root_rank: int, name: str | None = None,
               process_set: Any = None) -> torch.Tensor:
    """Overwrite ``tensor`` with root_rank's values; returns it."""
    return _broadcast_start(tensor, None, root_rank, name, process_set, False, "broadcast_")


def _broadcast_out(tensor: torch.Tensor, root_rank: int, name: str | None,
                   process_set: Any) -> torch.Tensor:
    tensor = _check_tensor(tensor, "broadcast", name)
    output = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    return _broadcast_start(tensor, output, root_rank, name, process_set, False)


# ---- alltoall --------------------------------------------------------------------------

def _alltoall_start(tensor: torch.Tensor, splits: Any, name: str | None, process_set: Any,
                    asynchronous: bool, what: str = "alltoall") -> Any:
    """Always yields (output, received_splits) as Horovod's handle does."""
    tensor = _check_tensor(tensor, what, name)
    if tensor.dim() == 0:
        raise ValueError(f"{_label(what, name)}: needs at least one dimension")
    n = _set_size(process_set)
    split_dtype = splits.dtype if isinstance(splits, torch.Tensor) else torch.int32
    if splits is None:
        if tensor.shape[0] % n:
            raise ValueError(f"{_label(what, name)}: first dimension {tensor.shape[0]} is not "
                             f"divisible by {n} ranks; pass splits=[rows for each rank]")
        rows = [tensor.shape[0] // n] * n
    elif isinstance(splits, torch.Tensor):
        rows = [int(s) for s in splits.reshape(-1).tolist()]
    else:
        rows = [int(s) for s in splits]
    src = _view(tensor)
    dtype = tensor.dtype

    def finish(res: Any) -> tuple[torch.Tensor, torch.Tensor]:
        out, recv = res
        return _from_view(out, dtype), torch.from_numpy(recv).to(split_dtype)

    fn = collx.alltoall_async if asynchronous else collx.alltoall
    label = _label(what, name)
    res = _call(fn, src, rows, name=name, label_=label, **_kw(process_set))
    if asynchronous:
        return Handle((res,), finish, (tensor, src), label)
    return finish(res)


def alltoall_async(tensor: torch.Tensor, splits: Any = None, name: str | None = None,
                   process_set: Any = None) -> Handle:
    """Start sending splits[d] rows of tensor to rank d (even split when None). Its
    synchronize() returns (output, received_splits)."""
    return _alltoall_start(tensor, splits, name, process_set, True, "alltoall_async")


# ---- reducescatter ---------------------------------------------------------------------

def _reducescatter_start(tensor: torch.Tensor, name: str | None, op: int, process_set: Any,
                         prescale_factor: float, postscale_factor: float,
                         asynchronous: bool, what: str = "reducescatter") -> Any:
    tensor = _check_tensor(tensor, what, name)
    _check_op(op, what)
    if tensor.dim() == 0:
        raise ValueError(f"{_label(what, name)}: needs at least one dimension")
    src, widened = _reduce_view(tensor, what, name)
    dtype = tensor.dtype

    def finish(res: np.ndarray) -> torch.Tensor:
        return _from_reduced(res, dtype, widened)

    fn = collx.reducescatter_async if asynchronous else collx.reducescatter
    label = _label(what, name)
    res = _call(fn, src, op=op, name=name, label_=label,
                **_kw(process_set, prescale_factor, postscale_factor))
    if asynchronous:
        return Handle((res,), finish, (tensor, src), label)
    return finish(res)


def reducescatter_async(tensor: torch.Tensor, name: str | None = None, op: int = Average,
                        process_set: Any = None, prescale_factor: float = 1.0,
                        postscale_factor: float = 1.0) -> Handle:
    """Start reducing tensor over ranks; rank r gets the r-th block of the first dimension
    (the first ranks one row more when it does not divide)."""
    return _reducescatter_start(tensor, name, op, process_set, prescale_factor,
                                postscale_factor, True, "reducescatter_async")


def grouped_reducescatter_async(tensors: Sequence[torch.Tensor], name: str | None = None,
                                op: int = Average, process_set: Any = None,
                                prescale_factor: float = 1.0,
                                postscale_factor: float = 1.0) -> Handle:
    what = "grouped_reducescatter_async"
    tensors = [_check_tensor(t, what, name) for t in tensors]
    _check_op(op, what)
    pairs = [_reduce_view(t, what, name) for t in tensors]
    dtypes = [t.dtype for t in tensors]

    def finish(res: list) -> list:
        return [_from_reduced(r, d, w) for r, (_, w), d in zip(res, pairs, dtypes)]

    label = _label(what, name)
    h = _call(collx.grouped_reducescatter_async, [a for a, _ in pairs], op=op, name=name,
              label_=label,
              **_kw(process_set, prescale_factor, postscale_factor))
    return Handle((h,), finish, (tensors, pairs), label)


# ---- join, barrier ---------------------------------------------------------------------

def join(device: int = -1) -> int:
    """This rank has no more data: until every rank has joined, it contributes zeros to the
    other ranks' allreduces. Returns the rank that joined last."""
    return int(_call(collx.join, label_="collx.torch.join"))


def barrier(process_set: Any = None) -> None:
    _call(collx.barrier, label_="collx.torch.barrier", **_kw(process_set))


# the differentiable synchronous forms live with their autograd Functions
from .autograd import (allgather, allreduce, alltoall, broadcast, grouped_allgather,  # noqa: E402
                       grouped_allreduce, grouped_reducescatter, reducescatter)

__all__ = [n for n in dir() if not n.startswith("_") and n not in (
    "annotations", "warnings", "np", "torch", "collx", "Any", "Callable", "Sequence",
    "CollxError", "InvalidUsage", "dtype_code")]
