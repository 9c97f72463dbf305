"""collx: collective communication for Python processes, executed in C over shared memory
and TCP. Horovod's names and semantics; see README.md.

The API is loaded on first use (PEP 562), so that ``collx.runner`` (the launcher) and
``collx.rendezvous`` import without the compiled core."""
from __future__ import annotations

import importlib
from typing import Any

from .errors import CollxError, CollxTimeout, InvalidUsage, MismatchError, TransportError

__version__ = "0.1.0"

_API = (
    "Average", "Max", "Min", "Product", "Sum", "allgather", "allgather_async", "allreduce",
    "allreduce_", "allreduce_async", "alltoall", "alltoall_async", "barrier", "barrier_async",
    "broadcast", "broadcast_", "broadcast_async", "broadcast_async_", "communicator",
    "cross_rank", "cross_size", "gather", "gather_async", "init", "is_initialized",
    "is_negotiated", "local_rank", "local_size", "poll", "rank", "recv", "recv_async",
    "reduce", "reduce_async", "reducescatter", "reducescatter_async", "scatter",
    "scatter_async", "send", "send_async", "shutdown", "size", "synchronize",
    # issue 5: negotiated engine, grouped ops, int8 allreduce, join, process sets, timeline
    "grouped_allreduce", "grouped_allreduce_async", "grouped_allgather",
    "grouped_allgather_async", "grouped_reducescatter", "grouped_reducescatter_async",
    "quantized_allreduce", "quantized_allreduce_async", "join", "add_process_set",
    "remove_process_set", "start_timeline", "stop_timeline",
)
# from collx/runtime/process_sets.py through collx.api (loaded on first use)
_SETS = ("ProcessSet", "global_process_set")

__all__ = ["CollxError", "CollxTimeout", "InvalidUsage", "MismatchError", "TransportError",
           "Handle", *_API, *_SETS]


def __getattr__(name: str) -> Any:
    if name in _API:
        api = importlib.import_module(".api", __name__)
        globals().update({n: getattr(api, n) for n in _API})   # later lookups skip this hook
        return globals()[name]
    if name in _SETS:
        value = getattr(importlib.import_module(".api", __name__), name)
        globals()[name] = value
        return value
    if name == "Handle":
        return importlib.import_module(".runtime.engine", __name__).Handle
    raise AttributeError(f"module 'collx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
