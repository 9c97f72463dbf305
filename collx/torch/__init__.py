"""collx for PyTorch, with Horovod's API: ``import collx.torch as hvd`` runs a Horovod
PyTorch training script unchanged.

Everything in ``horovod.torch`` a training script uses is here: init/shutdown/rank/size
and friends, the collectives (sync, ``_async`` and in-place ``_`` forms, grouped and sparse
variants, differentiable under autograd), ``DistributedOptimizer``,
``broadcast_parameters``, ``broadcast_optimizer_state``, ``broadcast_object``,
``allgather_object``, ``SyncBatchNorm``, ``Compression`` (none, fp16, bf16, int8), ``join``,
process sets and the build-information helpers. See mpi_ops.py for tensors, dtypes and errors.
"""
from __future__ import annotations

from typing import Any

from .compression import Compression, Compressor
from .functions import (allgather_object, broadcast_object, broadcast_optimizer_state,
                        broadcast_parameters)
from .mpi_ops import (Adasum, Average, Handle, HorovodInternalError, HostsUpdatedInterrupt,
                      Max, Min, Product, Sum, allgather, allgather_async, allreduce,
                      allreduce_, allreduce_async, allreduce_async_, alltoall, alltoall_async,
                      barrier, broadcast, broadcast_, broadcast_async, broadcast_async_,
                      ccl_built, cross_rank, cross_size, cuda_built, ddl_built, gloo_built,
                      gloo_enabled, grouped_allgather, grouped_allgather_async,
                      grouped_allreduce, grouped_allreduce_, grouped_allreduce_async,
                      grouped_allreduce_async_, grouped_reducescatter,
                      grouped_reducescatter_async, init, is_homogeneous, is_initialized, join,
                      local_rank, local_size, mpi_built, mpi_enabled, mpi_threads_supported,
                      nccl_built, poll, rank, reducescatter, reducescatter_async, rocm_built,
                      shutdown, size, sparse_allreduce_async, start_timeline, stop_timeline,
                      synchronize)
from .optimizer import DistributedOptimizer
from .sync_batch_norm import SyncBatchNorm

__all__ = [
    "Adasum", "Average", "Compression", "Compressor", "DistributedOptimizer", "Handle",
    "HorovodInternalError", "HostsUpdatedInterrupt", "Max", "Min", "Product", "Sum",
    "allgather", "allgather_async", "allgather_object", "allreduce", "allreduce_",
    "allreduce_async", "allreduce_async_", "alltoall", "alltoall_async", "barrier",
    "broadcast", "broadcast_", "broadcast_async", "broadcast_async_", "broadcast_object",
    "broadcast_optimizer_state", "broadcast_parameters", "ccl_built", "cross_rank",
    "cross_size", "cuda_built", "ddl_built", "gloo_built", "gloo_enabled", "grouped_allgather",
    "grouped_allgather_async", "grouped_allreduce", "grouped_allreduce_",
    "grouped_allreduce_async", "grouped_allreduce_async_", "grouped_reducescatter",
    "grouped_reducescatter_async", "init", "is_homogeneous", "is_initialized", "join",
    "local_rank", "local_size", "mpi_built", "mpi_enabled", "mpi_threads_supported",
    "nccl_built", "poll", "rank", "reducescatter", "reducescatter_async", "rocm_built",
    "shutdown", "size", "sparse_allreduce_async", "start_timeline", "stop_timeline",
    "synchronize", "SyncBatchNorm", "ProcessSet", "global_process_set", "add_process_set",
    "remove_process_set",
]

# process sets come from collx itself (one table per job)
_FROM_COLLX = ("ProcessSet", "global_process_set", "add_process_set", "remove_process_set")


def __getattr__(name: str) -> Any:
    if name in _FROM_COLLX:
        import collx
        return getattr(collx, name)
    raise AttributeError(f"module 'collx.torch' has no attribute {name!r}")
