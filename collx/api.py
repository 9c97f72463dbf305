"""The public API on buffers (numpy arrays and anything with the buffer protocol), with
Horovod's names and semantics plus MPI's reduce/gather/scatter/send/recv.

Every collective has a synchronous form and an ``*_async`` form returning a Handle for
``poll``/``synchronize``; both are thin wrappers over one ``prepare_*`` + engine call.
"""
from __future__ import annotations

import atexit
import threading
from typing import Any

import numpy as np

from . import _C
from .errors import CollxError, InvalidUsage
from .runtime import ops
from .runtime.bootstrap import init_communicator
from .runtime.communicator import Communicator
from .runtime.engine import Engine, Handle
from .runtime.servers import stop_servers

Sum: int = _C.SUM
Average: int = _C.AVERAGE
Min: int = _C.MIN
Max: int = _C.MAX
Product: int = _C.PROD

_state_lock = threading.Lock()
_comm: Communicator | None = None
_engine: Engine | None = None
# collx._C.Comm.allreduce_fast while it may be used: only synchronous calls so far (an
# async call queued behind the worker must not be overtaken), else None
_fast: Any = None


def init(timeout: float | None = None) -> None:
    """Join the job: reads collxrun's COLLX_* variables, or mpirun's (through mpi4py), or runs
    as a single process of size 1 when neither is set. Idempotent."""
    global _comm, _engine, _fast
    with _state_lock:
        if _comm is not None:
            return
        _comm = init_communicator(timeout)
        _engine = Engine()
        _fast = _comm.ccomm.allreduce_fast


def shutdown() -> None:
    """Finish pending work, say goodbye to the peers (a short barrier, so a peer still
    finishing its last collective never mistakes our exit for a crash) and close."""
    global _comm, _engine, _fast
    with _state_lock:
        comm, engine = _comm, _engine
        _comm = _engine = _fast = None
    if comm is None:
        return
    try:
        engine.drain(timeout=comm.timeout)
        if comm.size > 1 and not comm.ccomm.broken():
            engine.run(ops.prepare_barrier(comm, min(comm.timeout, 30.0)), "barrier")
        if comm.servers and not comm.ccomm.broken():
            stop_servers(comm, min(comm.timeout, 30.0))    # after the barrier: all done
    except Exception:  # noqa: BLE001 - best effort: we are leaving anyway
        pass
    finally:
        engine.close()
        comm.close()
        server = getattr(comm, "store_server", None)
        if server is not None:
            server.stop()


atexit.register(shutdown)


def is_initialized() -> bool:
    return _comm is not None


def _need(op: str = "call") -> tuple[Communicator, Engine]:
    comm, engine = _comm, _engine
    if comm is None or engine is None:
        raise InvalidUsage(f"collx.{op}: collx is not initialized; call collx.init() first "
                           f"(after collx.shutdown(), call collx.init() again)")
    return comm, engine


def rank() -> int:
    return _need("rank")[0].rank


def size() -> int:
    return _need("size")[0].size


def local_rank() -> int:
    return _need("local_rank")[0].local_rank


def local_size() -> int:
    return _need("local_size")[0].local_size


def cross_rank() -> int:
    return _need("cross_rank")[0].cross_rank


def cross_size() -> int:
    return _need("cross_size")[0].cross_size


def communicator() -> Communicator:
    """The world communicator (for tools: transports in use, plan cache)."""
    return _need("communicator")[0]


def _submit(engine: Engine, job: Any, name: str) -> Handle:
    """Queue an async job. From now on synchronous calls keep program order through the
    engine, so the C fast path (which would overtake the queue) is switched off."""
    global _fast
    _fast = None
    return engine.submit(job, name)


def _label(op: str, name: str | None) -> str:
    return f"{op}({name})" if name else op


# ---- allreduce -------------------------------------------------------------------------

def allreduce(x: Any, op: int = Average, name: str | None = None, out: Any = None,
              timeout: float | None = None) -> np.ndarray:
    """Reduce x over all ranks; every rank gets the result (a new array, or out=; out may be
    x itself for in-place). Integer Average truncates toward zero."""
    if out is not None and timeout is None:
        fast = _fast
        if fast is not None:
            # Latency path: a call identical in bytes, dtype and op to one the Python path
            # below already validated runs straight in C (thread-safe there); None means
            # "not known here", not an error.
            try:
                res = fast(x, out, op)
            except CollxError as exc:
                raise type(exc)(f"collx.allreduce: {exc}") from None
            if res is not None:
                return res
    comm, engine = _need("allreduce")
    return engine.run(ops.prepare_allreduce(comm, x, op, out, timeout), _label("allreduce", name))


def allreduce_(x: Any, op: int = Average, name: str | None = None,
               timeout: float | None = None) -> np.ndarray:
    """In-place allreduce: x holds the result."""
    return allreduce(x, op, name, out=x, timeout=timeout)


def allreduce_async(x: Any, op: int = Average, name: str | None = None, out: Any = None,
                    timeout: float | None = None) -> Handle:
    comm, engine = _need("allreduce_async")
    return _submit(engine, ops.prepare_allreduce(comm, x, op, out, timeout), _label("allreduce", name))


# ---- broadcast -------------------------------------------------------------------------

def broadcast(x: Any, root_rank: int, name: str | None = None, out: Any = None,
              timeout: float | None = None) -> np.ndarray:
    """Every rank gets root_rank's x (a new array, or out=); x is not modified."""
    comm, engine = _need("broadcast")
    return engine.run(ops.prepare_broadcast(comm, x, root_rank, out, timeout), _label("broadcast", name))


def broadcast_(x: Any, root_rank: int, name: str | None = None,
               timeout: float | None = None) -> np.ndarray:
    """In-place broadcast: x is overwritten with root_rank's values."""
    return broadcast(x, root_rank, name, out=x, timeout=timeout)


def broadcast_async(x: Any, root_rank: int, name: str | None = None, out: Any = None,
                    timeout: float | None = None) -> Handle:
    comm, engine = _need("broadcast_async")
    return _submit(engine, ops.prepare_broadcast(comm, x, root_rank, out, timeout), _label("broadcast", name))


# ---- allgather / reducescatter / alltoall ----------------------------------------------

def allgather(x: Any, name: str | None = None, out: Any = None,
              timeout: float | None = None) -> np.ndarray:
    """Concatenate every rank's x along the first dimension (which may differ per rank)."""
    comm, engine = _need("allgather")
    return engine.run(ops.prepare_allgather(comm, x, out, timeout), _label("allgather", name))


def allgather_async(x: Any, name: str | None = None, out: Any = None,
                    timeout: float | None = None) -> Handle:
    comm, engine = _need("allgather_async")
    return _submit(engine, ops.prepare_allgather(comm, x, out, timeout), _label("allgather", name))


def reducescatter(x: Any, op: int = Average, name: str | None = None,
                  timeout: float | None = None) -> np.ndarray:
    """Reduce x over ranks and give rank r the r-th part of the first dimension (split as
    evenly as possible, the first ranks getting one row more)."""
    comm, engine = _need("reducescatter")
    return engine.run(ops.prepare_reducescatter(comm, x, op, timeout), _label("reducescatter", name))


def reducescatter_async(x: Any, op: int = Average, name: str | None = None,
                        timeout: float | None = None) -> Handle:
    comm, engine = _need("reducescatter_async")
    return _submit(engine, ops.prepare_reducescatter(comm, x, op, timeout), _label("reducescatter", name))


def alltoall(x: Any, splits: Any = None, name: str | None = None,
             timeout: float | None = None) -> Any:
    """Send splits[d] rows of x to rank d (even split when splits is None). Returns the rows
    received in rank order, and with splits given also the received splits."""
    comm, engine = _need("alltoall")
    return engine.run(ops.prepare_alltoall(comm, x, splits, timeout), _label("alltoall", name))


def alltoall_async(x: Any, splits: Any = None, name: str | None = None,
                   timeout: float | None = None) -> Handle:
    comm, engine = _need("alltoall_async")
    return _submit(engine, ops.prepare_alltoall(comm, x, splits, timeout), _label("alltoall", name))


# ---- MPI-style rooted collectives ------------------------------------------------------

def reduce(x: Any, root_rank: int = 0, op: int = Sum, out: Any = None,
           timeout: float | None = None) -> np.ndarray | None:
    """Reduce x over ranks onto root_rank; returns the result there and None elsewhere."""
    comm, engine = _need("reduce")
    return engine.run(ops.prepare_reduce(comm, x, root_rank, op, out, timeout), "reduce")


def reduce_async(x: Any, root_rank: int = 0, op: int = Sum, out: Any = None,
                 timeout: float | None = None) -> Handle:
    comm, engine = _need("reduce_async")
    return _submit(engine, ops.prepare_reduce(comm, x, root_rank, op, out, timeout), "reduce")


def gather(x: Any, root_rank: int = 0, timeout: float | None = None) -> np.ndarray | None:
    """Concatenate every rank's x on root_rank (None elsewhere); first dims may differ."""
    comm, engine = _need("gather")
    return engine.run(ops.prepare_gather(comm, x, root_rank, timeout), "gather")


def gather_async(x: Any, root_rank: int = 0, timeout: float | None = None) -> Handle:
    comm, engine = _need("gather_async")
    return _submit(engine, ops.prepare_gather(comm, x, root_rank, timeout), "gather")


def scatter(x: Any, root_rank: int = 0, out: Any = None,
            timeout: float | None = None) -> np.ndarray:
    """Split root_rank's x along the first dimension; rank r gets part r. Every rank passes
    an array of the root's shape and dtype (only the root's values are read)."""
    comm, engine = _need("scatter")
    return engine.run(ops.prepare_scatter(comm, x, root_rank, out, timeout), "scatter")


def scatter_async(x: Any, root_rank: int = 0, out: Any = None,
                  timeout: float | None = None) -> Handle:
    comm, engine = _need("scatter_async")
    return _submit(engine, ops.prepare_scatter(comm, x, root_rank, out, timeout), "scatter")


def barrier(timeout: float | None = None) -> None:
    comm, engine = _need("barrier")
    engine.run(ops.prepare_barrier(comm, timeout), "barrier")


def barrier_async(timeout: float | None = None) -> Handle:
    comm, engine = _need("barrier_async")
    return _submit(engine, ops.prepare_barrier(comm, timeout), "barrier")


# ---- point to point --------------------------------------------------------------------

def send(x: Any, dst: int, tag: int = 0, timeout: float | None = None) -> None:
    """Send x to rank dst. Messages between two ranks match in order; the tags of a
    matching send and recv must agree (else MismatchError)."""
    comm, engine = _need("send")
    engine.run(ops.prepare_send(comm, x, dst, tag, timeout), "send")


def send_async(x: Any, dst: int, tag: int = 0, timeout: float | None = None) -> Handle:
    comm, engine = _need("send_async")
    return _submit(engine, ops.prepare_send(comm, x, dst, tag, timeout), "send")


def recv(out: Any, src: int, tag: int = 0, timeout: float | None = None) -> np.ndarray:
    """Receive into out (its size must equal the matching send's) from rank src."""
    comm, engine = _need("recv")
    return engine.run(ops.prepare_recv(comm, out, src, tag, timeout), "recv")


def recv_async(out: Any, src: int, tag: int = 0, timeout: float | None = None) -> Handle:
    comm, engine = _need("recv_async")
    return _submit(engine, ops.prepare_recv(comm, out, src, tag, timeout), "recv")


# ---- handles ---------------------------------------------------------------------------

def poll(handle: Handle) -> bool:
    """True when the async operation is finished (synchronize will not block)."""
    return handle.done()


def synchronize(handle: Handle, timeout: float | None = None) -> Any:
    """Wait for an async operation and return its result (or raise its error)."""
    return handle.wait(timeout)
