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
    "broadcast", "broadcast_", "broadcast_async", "communicator", "cross_rank", "cross_size",
    "gather", "gather_async", "init", "is_initialized", "local_rank", "local_size", "poll",
    "rank", "recv", "recv_async", "reduce", "reduce_async", "reducescatter",
    "reducescatter_async", "scatter", "scatter_async", "send", "send_async", "shutdown",
    "size", "synchronize",
)

__all__ = ["CollxError", "CollxTimeout", "InvalidUsage", "MismatchError", "TransportError",
           "Handle", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        api = importlib.import_module(".api", __name__)
        globals().update({n: getattr(api, n) for n in _API})   # later lookups skip this hook
        return globals()[name]
    if name == "Handle":
        return importlib.import_module(".runtime.engine", __name__).Handle
    raise AttributeError(f"module 'collx' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
