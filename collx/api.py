"""The public API on buffers (numpy arrays and anything with the buffer protocol), with
Horovod's names and semantics plus MPI's reduce/gather/scatter/send/recv.

Two engines (``init(negotiate=)``, or ``COLLX_ENGINE``):

* **ordered** (default): every rank calls collectives in the same program order (MPI). A
  synchronous call runs inline (the C fast path for repeated allreduces with ``out=``); an
  ``*_async`` call queues its job on the one worker (collx/runtime/engine.py).
* **negotiated** (Horovod): every call, synchronous ones too, becomes a named request handed
  to the background worker (collx/runtime/negotiated_engine.py), which agrees with the other
  ranks on what is ready, fuses small allreduces and runs them; ranks may submit in
  different orders. An op without ``name=`` is named ``f"{kind}.noname.{k}"`` with a
  counter per kind and process set (``f"{kind}.ps{id}.noname.{k}"`` on a set other than
  the global one), so un-named calls must still come in the same order per kind and set.
  send/recv need the ordered engine (InvalidUsage says so): a point-to-point pair cannot
  take part in a negotiation among all the ranks of a set without making every rank wait.

Every collective has a synchronous form and an ``*_async`` form returning a Handle for
``poll``/``synchronize``; both are thin wrappers over one ``prepare_*`` job (ordered) or
one request (negotiated). ``process_set=None`` is the global set.
"""
from __future__ import annotations

import atexit
import threading
from typing import Any, Callable, Sequence

import numpy as np

from . import _C, config
from .errors import CollxError, InvalidUsage
from .runtime import fusion, ops
from .runtime import timeline as _timeline
from .runtime.bootstrap import init_communicator
from .runtime.buffers import as_array, check_out, reduce_code
from .runtime.communicator import Communicator
from .runtime.engine import Engine, GroupHandle, Handle
from .runtime.negotiation import Request
from .runtime.servers import stop_servers

Sum: int = _C.SUM
Average: int = _C.AVERAGE
Min: int = _C.MIN
Max: int = _C.MAX
Product: int = _C.PROD

_state_lock = threading.Lock()
_comm: Communicator | None = None
_engine: Any = None          # Engine (ordered) or NegotiatedEngine
_negotiated = False
_table: Any = None           # process_sets.ProcessSetTable of the world communicator
# collx._C.Comm.allreduce_fast while it may be used: only synchronous calls so far (an
# async call queued behind the worker must not be overtaken), else None
_fast: Any = None


def _want_negotiated(negotiate: bool | None) -> bool:
    if negotiate is not None:
        return bool(negotiate)
    mode = (config.get("COLLX_ENGINE") or "ordered").strip().lower()
    if mode not in ("ordered", "negotiated"):
        raise InvalidUsage(f"COLLX_ENGINE={mode!r}: use 'ordered' or 'negotiated'")
    return mode == "negotiated"


def init(timeout: float | None = None, negotiate: bool | None = None) -> None:
    """Join the job: reads collxrun's COLLX_* variables, or mpirun's (through mpi4py), or runs
    as a single process of size 1 when neither is set. Idempotent (a second call asking for
    the other engine is InvalidUsage). ``negotiate=True`` starts the negotiated engine."""
    global _comm, _engine, _fast, _negotiated, _table
    want = _want_negotiated(negotiate)
    with _state_lock:
        if _comm is not None:
            if negotiate is not None and want != _negotiated:
                have = "negotiated" if _negotiated else "ordered"
                raise InvalidUsage(f"collx.init(negotiate={negotiate}): collx is already "
                                   f"running the {have} engine; call collx.shutdown() first")
            return
        comm = init_communicator(timeout)
        _timeline.set_rank(comm.rank)
        table = _make_table(comm)
        if want:
            from .runtime.negotiated_engine import NegotiatedEngine
            engine: Any = NegotiatedEngine(comm, table)
            fast = None
        else:
            engine, fast = Engine(), comm.ccomm.allreduce_fast
        _comm, _engine, _fast, _negotiated, _table = comm, engine, fast, want, table
        path = config.get("COLLX_TIMELINE")
        if path:
            _timeline.start(path, config.get("COLLX_TIMELINE_MARK_CYCLES"))


def _make_table(comm: Communicator) -> Any:
    try:
        from .runtime.process_sets import ProcessSetTable
    except ImportError:           # process sets not built into this tree
        return None
    return ProcessSetTable(comm)


def shutdown() -> None:
    """Finish pending work, say goodbye to the peers (ordered: a short barrier, so a peer
    still finishing its last collective never mistakes our exit for a crash; negotiated: a
    last coordination cycle that tells every rank's worker to stop) and close."""
    global _comm, _engine, _fast, _table
    with _state_lock:
        comm, engine, table, negotiated = _comm, _engine, _table, _negotiated
        _comm = _engine = _fast = _table = None
    if comm is None:
        return
    try:
        if negotiated:
            engine.shutdown(timeout=comm.timeout)
        else:
            engine.drain(timeout=comm.timeout)
            if comm.size > 1 and not comm.ccomm.broken():
                engine.run(ops.prepare_barrier(comm, min(comm.timeout, 30.0)), "barrier")
        if comm.servers and not comm.ccomm.broken():
            stop_servers(comm, min(comm.timeout, 30.0))    # after the barrier: all done
    except Exception:  # noqa: BLE001 - best effort: we are leaving anyway
        pass
    finally:
        engine.close()
        if table is not None:
            try:
                table.close()
            except Exception:  # noqa: BLE001
                pass
        _timeline.stop()
        comm.close()
        server = getattr(comm, "store_server", None)
        if server is not None:
            server.stop()


atexit.register(shutdown)


def is_initialized() -> bool:
    return _comm is not None


def _need(op: str = "call") -> tuple[Communicator, Any]:
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


def is_negotiated() -> bool:
    """True when the negotiated (Horovod) engine runs."""
    return _comm is not None and _negotiated


def _comm_for(comm: Communicator, process_set: Any, op: str) -> tuple[Communicator, int]:
    """(communicator, process set id) of ``process_set`` (None: the world, id 0)."""
    if process_set is None:
        return comm, 0
    if _table is None:
        raise InvalidUsage(f"collx.{op}: process sets are not available in this build")
    psid = getattr(process_set, "process_set_id", None)
    return _table.comm_for(process_set), (0 if psid is None else int(psid))


def _submit(engine: Engine, job: Any, name: str) -> Handle:
    """Queue an async job. From now on synchronous calls keep program order through the
    engine, so the C fast path (which would overtake the queue) is switched off."""
    global _fast
    _fast = None
    return engine.submit(job, name)


def _label(op: str, name: str | None) -> str:
    return f"{op}({name})" if name else op


def _call(op: str, name: str | None, process_set: Any, timeout: Any, sync: bool,
          prepare: Callable[[Communicator], Any], agree: Callable[[], dict]) -> Any:
    """One non-fused collective: ``prepare(comm)`` validates and returns the job; the ordered
    engine runs it in program order, the negotiated one once every rank of the set asked
    for ``name`` with the same ``agree()`` description."""
    comm, engine = _need(op if sync else op + "_async")
    c, psid = _comm_for(comm, process_set, op)
    job = prepare(c)
    if _negotiated:
        req = Request(engine.name_for(op, name, psid), op, psid, agree(), job=job,
                      timeout=ops._check_timeout(timeout, op))
        h = engine.enqueue([req])[0]
        return h.wait() if sync else h
    return engine.run(job, _label(op, name)) if sync else _submit(engine, job, _label(op, name))


_DTYPE_NAMES: dict = {}


def _dtype_name(dtype: np.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def _root(process_set: Any, root_rank: Any, op: str) -> Any:
    """Horovod semantics: with process_set=, root_rank is a *world* rank (a member of the
    set); the set's communicator numbers its members 0.., so translate."""
    if process_set is None or getattr(process_set, "process_set_id", None) == 0:
        return root_rank
    if isinstance(root_rank, bool) or not isinstance(root_rank, (int, np.integer)):
        return root_rank                         # ops.prepare_* explains
    ranks = list(getattr(process_set, "ranks", []))
    if int(root_rank) not in ranks:
        raise InvalidUsage(f"collx.{op}: root_rank={root_rank} is not a member of "
                           f"{process_set!r}; with process_set=, root_rank is the world rank "
                           f"of one of its members (as in Horovod)")
    return ranks.index(int(root_rank))


def _meta(x: Any, op: str, first: bool = True) -> dict:
    """What ranks must agree on about x: dtype and shape (``first=False``: all but dim 0)."""
    arr = as_array(x, op)
    shape = list(arr.shape) if first else list(arr.shape[1:])
    return {"dtype": _dtype_name(arr.dtype), "shape": shape}


# ---- allreduce -------------------------------------------------------------------------

def allreduce(x: Any, op: int = Average, name: str | None = None, out: Any = None,
              timeout: float | None = None, *, process_set: Any = None,
              prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> np.ndarray:
    """Reduce x over all ranks of the set; every rank gets the result (a new array, or out=;
    out may be x itself for in-place). Integer Average truncates toward zero. The result is
    ``postscale * reduce(prescale * x)`` (integer inputs: scaled in float64, truncated)."""
    fast = _fast
    if fast is not None and timeout is None and process_set is None \
            and prescale_factor == 1.0 and postscale_factor == 1.0 \
            and (out is not None or type(x) is np.ndarray):
        # Latency path: a call identical in bytes, dtype and op to one the Python path
        # below already validated runs straight in C (thread-safe there); None means
        # "not known here", not an error. Without out=, the result is a new array, as on
        # the Python path (0.7 us instead of 7 us for 8 B at np 2).
        try:
            res = fast(x, np.empty(x.shape, x.dtype) if out is None else out, op)
        except CollxError as exc:
            raise type(exc)(f"collx.allreduce: {exc}") from None
        if res is not None:
            return res
    engine = _engine
    if _negotiated and engine is not None and process_set is None and timeout is None \
            and type(x) is np.ndarray and (out is None or out is x):
        h = _negotiated_fast(engine, x, op, name, out, prescale_factor, postscale_factor)
        if h is not None:
            return h.wait()
    return _allreduce("allreduce", x, op, name, out, timeout, process_set, prescale_factor,
                      postscale_factor, True)


def _negotiated_fast(engine: Any, x: np.ndarray, op: Any, name: Any, out: Any, pre: Any,
                     post: Any) -> Handle | None:
    """The negotiated engine's hot path for an allreduce of the global set whose description
    (dtype, shape, op, scale factors) was validated before, with out None or x itself:
    straight to a request. None: take the general path (which validates and explains)."""
    try:
        hit = _AGREE.get(("allreduce", x.dtype, x.shape, op, pre, post))
    except TypeError:                            # unhashable op or factor
        return None
    if hit is None:
        return None
    flags = x.flags
    if not flags.c_contiguous or (out is not None and not flags.writeable):
        return None
    return engine.submit_allreduce("allreduce", name, hit, x,
                                   np.empty(x.shape, x.dtype) if out is None else x)


def allreduce_(x: Any, op: int = Average, name: str | None = None,
               timeout: float | None = None, *, process_set: Any = None,
               prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> np.ndarray:
    """In-place allreduce: x holds the result."""
    return allreduce(x, op, name, out=x, timeout=timeout, process_set=process_set,
                     prescale_factor=prescale_factor, postscale_factor=postscale_factor)


def allreduce_async(x: Any, op: int = Average, name: str | None = None, out: Any = None,
                    timeout: float | None = None, *, process_set: Any = None,
                    prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> Handle:
    engine = _engine
    if _negotiated and engine is not None and process_set is None and timeout is None \
            and type(x) is np.ndarray and (out is None or out is x):
        # _negotiated_fast, inline (the hot path of a burst of async calls)
        try:
            hit = _AGREE.get(("allreduce", x.dtype, x.shape, op, prescale_factor,
                              postscale_factor))
        except TypeError:
            hit = None
        if hit is not None:
            flags = x.flags
            if flags.c_contiguous and (out is None or flags.writeable):
                return engine.submit_allreduce("allreduce", name, hit, x, np.empty(
                    x.shape, x.dtype) if out is None else x)
    return _allreduce("allreduce", x, op, name, out, timeout, process_set, prescale_factor,
                      postscale_factor, False)


def _check_allreduce(kind: str, x: Any, op: int, out: Any, timeout: Any, pre: float,
                     post: float) -> tuple:
    """Everything an allreduce can refuse locally, before it is named or negotiated (a
    refusal on one rank must not consume a ``*.noname.*`` number the others use)."""
    t = ops._check_timeout(timeout, kind)
    arr = as_array(x, kind)
    ops._check_op(op, kind)
    code = reduce_code(arr, kind)
    res = check_out(out, kind, arr.shape, arr.dtype)
    if res is not arr and out is not None and np.may_share_memory(arr, res) and not (
            arr.__array_interface__["data"][0] == res.__array_interface__["data"][0]
            and arr.nbytes == res.nbytes):   # another view of the same buffer: in place
        raise InvalidUsage(f"collx.{kind}: out partly overlaps the input; pass the same array "
                           f"for an in-place call, or a separate one")
    if pre != 1.0 or post != 1.0:
        fusion.check_factors(pre, post, kind)
    return arr, res, code, t


# (kind, dtype, shape, op, prescale, postscale) -> (agree, its cache-key tuple): what every
# allreduce of that description shares (validated once; never modified)
_AGREE: dict[tuple, tuple[dict, tuple]] = {}


def _agree_of(kind: str, arr: np.ndarray, op: int, pre: float, post: float) -> tuple[dict, tuple]:
    key = (kind, arr.dtype, arr.shape, op, pre, post)
    try:
        hit = _AGREE.get(key)
    except TypeError:                            # an unhashable op or factor: refused below
        hit, key = None, None
    if hit is not None:
        return hit
    ops._check_op(op, kind)
    reduce_code(arr, kind)
    if pre != 1.0 or post != 1.0:
        fusion.check_factors(pre, post, kind)
    dt, opname, pre, post = _dtype_name(arr.dtype), ops.REDOP_NAMES[op], float(pre), float(post)
    agree = {"dtype": dt, "shape": list(arr.shape), "op": opname, "prescale": pre,
             "postscale": post}
    # == the agree part of negotiation.cache_key(name, kind, psid, agree)
    agree_t = (("dtype", dt), ("op", opname), ("postscale", post), ("prescale", pre),
               ("shape", arr.shape))
    hit = (agree, agree_t)
    if key is not None:
        if len(_AGREE) > 4096:
            _AGREE.clear()
        _AGREE[key] = hit
    return hit


def _allreduce_request(engine: Any, c: Communicator, psid: int, kind: str, name: str | None,
                       op: int, checked: tuple, pre: float, post: float) -> Any:
    """A fusible request from a checked allreduce (``_check_allreduce``)."""
    arr, res, code, t = checked
    agree, agree_t = _agree_of(kind, arr, op, pre, post)
    name = engine.name_for(kind, name, psid)
    return Request(name, kind, psid, agree, timeout=t, arr=arr, res=res,
                   ckey=(name, kind, psid, agree_t))


def _fast_request(engine: Any, psid: int, kind: str, x: Any, op: int, name: str | None,
                  out: Any, timeout: Any, pre: float, post: float) -> Any:
    """``_check_allreduce`` + ``_allreduce_request`` for one tensor, cheaper: the checks that
    depend only on (dtype, shape, op, scale factors) run once per description."""
    if type(x) is np.ndarray and x.flags.c_contiguous and out is None:
        arr = x
        agree, agree_t = _agree_of(kind, arr, op, pre, post)
        res = np.empty(arr.shape, arr.dtype)
        t = None if timeout is None else ops._check_timeout(timeout, kind)
    else:
        arr, res, _, t = _check_allreduce(kind, x, op, out, timeout, pre, post)
        agree, agree_t = _agree_of(kind, arr, op, pre, post)
    name = engine.name_for(kind, name, psid)
    return Request(name, kind, psid, agree, timeout=t, arr=arr, res=res,
                   ckey=(name, kind, psid, agree_t))


def _allreduce(kind: str, x: Any, op: int, name: str | None, out: Any, timeout: Any,
               process_set: Any, pre: float, post: float, sync: bool) -> Any:
    comm, engine = _need(kind if sync else kind + "_async")
    c, psid = (comm, 0) if process_set is None else _comm_for(comm, process_set, kind)
    if _negotiated:
        h = engine.enqueue1(_fast_request(engine, psid, kind, x, op, name, out, timeout, pre,
                                          post))
        return h.wait() if sync else h
    if pre == 1.0 and post == 1.0:
        job = ops.prepare_allreduce(c, x, op, out, timeout)
    else:
        job = fusion.scaled_allreduce_job(c, x, op, out, timeout, pre, post, kind)
    label = _label(kind, name)
    return engine.run(job, label) if sync else _submit(engine, job, label)


def grouped_allreduce(xs: Sequence[Any], op: int = Average, name: str | None = None,
                      outs: Sequence[Any] | None = None, timeout: float | None = None, *,
                      process_set: Any = None, prescale_factor: float = 1.0,
                      postscale_factor: float = 1.0) -> list:
    """Allreduce every array of xs (one result per array, or into outs). Arrays of one
    dtype travel as one fused collective."""
    return _grouped_allreduce(xs, op, name, outs, timeout, process_set, prescale_factor,
                              postscale_factor, True)


def grouped_allreduce_async(xs: Sequence[Any], op: int = Average, name: str | None = None,
                            outs: Sequence[Any] | None = None, timeout: float | None = None,
                            *, process_set: Any = None, prescale_factor: float = 1.0,
                            postscale_factor: float = 1.0) -> GroupHandle:
    return _grouped_allreduce(xs, op, name, outs, timeout, process_set, prescale_factor,
                              postscale_factor, False)


def _group_names(engine: Any, kind: str, name: str | None, n: int, psid: int = 0) -> list[str]:
    base = engine.name_for(kind, name, psid)
    return [f"{base}.{i}" for i in range(n)]


def _grouped_allreduce(xs: Sequence[Any], op: int, name: str | None, outs: Any, timeout: Any,
                       process_set: Any, pre: float, post: float, sync: bool) -> Any:
    kind = "grouped_allreduce"
    comm, engine = _need(kind if sync else kind + "_async")
    xs = list(xs)
    outs = [None] * len(xs) if outs is None else list(outs)
    if len(outs) != len(xs):
        raise InvalidUsage(f"collx.{kind}: {len(xs)} inputs but {len(outs)} outs")
    c, psid = _comm_for(comm, process_set, kind)
    if _negotiated:
        checked = [_check_allreduce(kind, x, op, o, timeout, pre, post) for x, o in zip(xs, outs)]
        names = _group_names(engine, kind, name, len(xs), psid)
        reqs = [_allreduce_request(engine, c, psid, kind, n, op, ch, pre, post)
                for ch, n in zip(checked, names)]
        handle = GroupHandle(engine.enqueue(reqs), name or kind)
        return handle.wait() if sync else handle
    job = fusion.grouped_allreduce_job(c, xs, op, outs, timeout, pre, post, kind)
    label = _label(kind, name)
    if sync:
        return engine.run(job, label)
    return _submit(engine, job, label)


# ---- quantized allreduce (int8 blocks; collx/runtime/quantize.py) ---------------------

def quantized_allreduce(x: Any, op: int = Average, name: str | None = None, out: Any = None,
                        timeout: float | None = None, *, block: int = 64,
                        process_set: Any = None) -> np.ndarray:
    """Sum/Average of float16/32/64 x sent as int8 with one float32 scale per ``block``
    elements (≈ 4x fewer bytes; error bound in collx/runtime/quantize.py). Results are
    bitwise identical on every rank."""
    return _quantized(x, op, name, out, timeout, block, process_set, True)


def quantized_allreduce_async(x: Any, op: int = Average, name: str | None = None,
                              out: Any = None, timeout: float | None = None, *,
                              block: int = 64, process_set: Any = None) -> Handle:
    return _quantized(x, op, name, out, timeout, block, process_set, False)


def _quantized(x: Any, op: int, name: str | None, out: Any, timeout: Any, block: int,
               process_set: Any, sync: bool) -> Any:
    from .runtime import quantize
    kind = "quantized_allreduce"
    return _call(kind, name, process_set, timeout, sync,
                 lambda c: quantize.prepare_quantized_allreduce(c, x, op, out, timeout, block=block),
                 lambda: {**_meta(x, kind), "op": ops.REDOP_NAMES.get(op, op),
                          "block": quantize.check_block(block, kind)})


# ---- broadcast -------------------------------------------------------------------------

def broadcast(x: Any, root_rank: int, name: str | None = None, out: Any = None,
              timeout: float | None = None, *, process_set: Any = None) -> np.ndarray:
    """Every rank gets root_rank's x (a new array, or out=); x is not modified. With
    process_set=, root_rank is the world rank of a member (Horovod)."""
    return _call("broadcast", name, process_set, timeout, True,
                 lambda c: ops.prepare_broadcast(c, x, _root(process_set, root_rank, "broadcast"),
                                           out, timeout),
                 lambda: {**_meta(x, "broadcast"), "root": int(root_rank)})


def broadcast_(x: Any, root_rank: int, name: str | None = None,
               timeout: float | None = None, *, process_set: Any = None) -> np.ndarray:
    """In-place broadcast: x is overwritten with root_rank's values."""
    return broadcast(x, root_rank, name, out=x, timeout=timeout, process_set=process_set)


def broadcast_async(x: Any, root_rank: int, name: str | None = None, out: Any = None,
                    timeout: float | None = None, *, process_set: Any = None) -> Handle:
    return _call("broadcast", name, process_set, timeout, False,
                 lambda c: ops.prepare_broadcast(c, x, _root(process_set, root_rank, "broadcast"),
                                           out, timeout),
                 lambda: {**_meta(x, "broadcast"), "root": int(root_rank)})


def broadcast_async_(x: Any, root_rank: int, name: str | None = None,
                     timeout: float | None = None, *, process_set: Any = None) -> Handle:
    return broadcast_async(x, root_rank, name, out=x, timeout=timeout, process_set=process_set)


# ---- allgather / reducescatter / alltoall ----------------------------------------------

def allgather(x: Any, name: str | None = None, out: Any = None,
              timeout: float | None = None, *, process_set: Any = None) -> np.ndarray:
    """Concatenate every rank's x along the first dimension (which may differ per rank)."""
    return _call("allgather", name, process_set, timeout, True,
                 lambda c: ops.prepare_allgather(c, x, out, timeout),
                 lambda: _meta(x, "allgather", first=False))


def allgather_async(x: Any, name: str | None = None, out: Any = None,
                    timeout: float | None = None, *, process_set: Any = None) -> Handle:
    return _call("allgather", name, process_set, timeout, False,
                 lambda c: ops.prepare_allgather(c, x, out, timeout),
                 lambda: _meta(x, "allgather", first=False))


def grouped_allgather(xs: Sequence[Any], name: str | None = None, timeout: float | None = None,
                      *, process_set: Any = None) -> list:
    return grouped_allgather_async(xs, name, timeout, process_set=process_set).wait()


def grouped_allgather_async(xs: Sequence[Any], name: str | None = None,
                            timeout: float | None = None, *, process_set: Any = None) -> GroupHandle:
    return _grouped("grouped_allgather", list(xs), name, lambda x, n: allgather_async(
        x, n, timeout=timeout, process_set=process_set), process_set)


def reducescatter(x: Any, op: int = Average, name: str | None = None,
                  timeout: float | None = None, *, process_set: Any = None,
                  prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> np.ndarray:
    """Reduce x over ranks and give rank r the r-th part of the first dimension (split as
    evenly as possible, the first ranks getting one row more)."""
    return _reducescatter(x, op, name, timeout, process_set, prescale_factor,
                          postscale_factor, True)


def reducescatter_async(x: Any, op: int = Average, name: str | None = None,
                        timeout: float | None = None, *, process_set: Any = None,
                        prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> Handle:
    return _reducescatter(x, op, name, timeout, process_set, prescale_factor,
                          postscale_factor, False)


def _reducescatter(x: Any, op: int, name: str | None, timeout: Any, process_set: Any,
                   pre: float, post: float, sync: bool) -> Any:
    kind = "reducescatter"
    fusion.check_factors(pre, post, kind)
    return _call(kind, name, process_set, timeout, sync,
                 lambda c: fusion.scaled_job(ops.prepare_reducescatter, c, x, pre, post, kind,
                                             op, timeout),
                 lambda: {**_meta(x, kind), "op": ops.REDOP_NAMES.get(op, op),
                          "prescale": float(pre), "postscale": float(post)})


def grouped_reducescatter(xs: Sequence[Any], op: int = Average, name: str | None = None,
                          timeout: float | None = None, *, process_set: Any = None,
                          prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> list:
    return grouped_reducescatter_async(xs, op, name, timeout, process_set=process_set,
                                       prescale_factor=prescale_factor,
                                       postscale_factor=postscale_factor).wait()


def grouped_reducescatter_async(xs: Sequence[Any], op: int = Average, name: str | None = None,
                                timeout: float | None = None, *, process_set: Any = None,
                                prescale_factor: float = 1.0,
                                postscale_factor: float = 1.0) -> GroupHandle:
    return _grouped("grouped_reducescatter", list(xs), name, lambda x, n: reducescatter_async(
        x, op, n, timeout, process_set=process_set, prescale_factor=prescale_factor,
        postscale_factor=postscale_factor), process_set)


def _grouped(kind: str, xs: list, name: str | None,
             start: Callable[[Any, str | None], Handle], process_set: Any = None) -> GroupHandle:
    """A group of async calls, named ``{name}.{i}`` (negotiated: one base name per group)."""
    engine = _need(kind)[1]
    if _negotiated:
        psid = 0 if process_set is None else int(getattr(process_set, "process_set_id", 0) or 0)
        names: list[str | None] = _group_names(engine, kind, name, len(xs), psid)
    else:
        names = [f"{name}.{i}" if name else None for i in range(len(xs))]
    return GroupHandle([start(x, n) for x, n in zip(xs, names)], name or kind)


def alltoall(x: Any, splits: Any = None, name: str | None = None,
             timeout: float | None = None, *, process_set: Any = None) -> Any:
    """Send splits[d] rows of x to rank d (even split when splits is None). Returns the rows
    received in rank order, and with splits given also the received splits."""
    return _call("alltoall", name, process_set, timeout, True,
                 lambda c: ops.prepare_alltoall(c, x, splits, timeout),
                 lambda: {**_meta(x, "alltoall", first=False), "splits": splits is not None})


def alltoall_async(x: Any, splits: Any = None, name: str | None = None,
                   timeout: float | None = None, *, process_set: Any = None) -> Handle:
    return _call("alltoall", name, process_set, timeout, False,
                 lambda c: ops.prepare_alltoall(c, x, splits, timeout),
                 lambda: {**_meta(x, "alltoall", first=False), "splits": splits is not None})


# ---- MPI-style rooted collectives ------------------------------------------------------

def reduce(x: Any, root_rank: int = 0, op: int = Sum, out: Any = None,
           timeout: float | None = None, *, name: str | None = None,
           process_set: Any = None) -> np.ndarray | None:
    """Reduce x over ranks onto root_rank; returns the result there and None elsewhere."""
    return _reduce(x, root_rank, op, out, timeout, name, process_set, True)


def reduce_async(x: Any, root_rank: int = 0, op: int = Sum, out: Any = None,
                 timeout: float | None = None, *, name: str | None = None,
                 process_set: Any = None) -> Handle:
    return _reduce(x, root_rank, op, out, timeout, name, process_set, False)


def _reduce(x, root_rank, op, out, timeout, name, process_set, sync) -> Any:  # noqa: ANN001
    return _call("reduce", name, process_set, timeout, sync,
                 lambda c: ops.prepare_reduce(c, x, _root(process_set, root_rank, "reduce"),
                                           op, out, timeout),
                 lambda: {**_meta(x, "reduce"), "root": int(root_rank),
                          "op": ops.REDOP_NAMES.get(op, op)})


def gather(x: Any, root_rank: int = 0, timeout: float | None = None, *,
           name: str | None = None, process_set: Any = None) -> np.ndarray | None:
    """Concatenate every rank's x on root_rank (None elsewhere); first dims may differ."""
    return _call("gather", name, process_set, timeout, True,
                 lambda c: ops.prepare_gather(c, x, _root(process_set, root_rank, "gather"),
                                           timeout),
                 lambda: {**_meta(x, "gather", first=False), "root": int(root_rank)})


def gather_async(x: Any, root_rank: int = 0, timeout: float | None = None, *,
                 name: str | None = None, process_set: Any = None) -> Handle:
    return _call("gather", name, process_set, timeout, False,
                 lambda c: ops.prepare_gather(c, x, _root(process_set, root_rank, "gather"),
                                           timeout),
                 lambda: {**_meta(x, "gather", first=False), "root": int(root_rank)})


def scatter(x: Any, root_rank: int = 0, out: Any = None, timeout: float | None = None, *,
            name: str | None = None, process_set: Any = None) -> np.ndarray:
    """Split root_rank's x along the first dimension; rank r gets part r. Every rank passes
    an array of the root's shape and dtype (only the root's values are read)."""
    return _call("scatter", name, process_set, timeout, True,
                 lambda c: ops.prepare_scatter(c, x, _root(process_set, root_rank, "scatter"),
                                           out, timeout),
                 lambda: {**_meta(x, "scatter"), "root": int(root_rank)})


def scatter_async(x: Any, root_rank: int = 0, out: Any = None, timeout: float | None = None,
                  *, name: str | None = None, process_set: Any = None) -> Handle:
    return _call("scatter", name, process_set, timeout, False,
                 lambda c: ops.prepare_scatter(c, x, _root(process_set, root_rank, "scatter"),
                                           out, timeout),
                 lambda: {**_meta(x, "scatter"), "root": int(root_rank)})


def barrier(timeout: float | None = None, *, process_set: Any = None) -> None:
    _call("barrier", None, process_set, timeout, True,
          lambda c: ops.prepare_barrier(c, timeout), dict)


def barrier_async(timeout: float | None = None, *, process_set: Any = None) -> Handle:
    return _call("barrier", None, process_set, timeout, False,
                 lambda c: ops.prepare_barrier(c, timeout), dict)


# ---- point to point (ordered engine only) ----------------------------------------------

def _p2p(op: str) -> tuple[Communicator, Engine]:
    comm, engine = _need(op)
    if _negotiated:
        raise InvalidUsage(f"collx.{op}: send/recv need the ordered engine: collx.init() "
                           f"(this job runs the negotiated engine, where every rank of a "
                           f"set takes part in agreeing what runs next)")
    return comm, engine


def send(x: Any, dst: int, tag: int = 0, timeout: float | None = None) -> None:
    """Send x to rank dst. Messages between two ranks match in order; the tags of a
    matching send and recv must agree (else MismatchError)."""
    comm, engine = _p2p("send")
    engine.run(ops.prepare_send(comm, x, dst, tag, timeout), "send")


def send_async(x: Any, dst: int, tag: int = 0, timeout: float | None = None) -> Handle:
    comm, engine = _p2p("send_async")
    return _submit(engine, ops.prepare_send(comm, x, dst, tag, timeout), "send")


def recv(out: Any, src: int, tag: int = 0, timeout: float | None = None) -> np.ndarray:
    """Receive into out (its size must equal the matching send's) from rank src."""
    comm, engine = _p2p("recv")
    return engine.run(ops.prepare_recv(comm, out, src, tag, timeout), "recv")


def recv_async(out: Any, src: int, tag: int = 0, timeout: float | None = None) -> Handle:
    comm, engine = _p2p("recv_async")
    return _submit(engine, ops.prepare_recv(comm, out, src, tag, timeout), "recv")


# ---- join, process sets, timeline ------------------------------------------------------

def join(timeout: float | None = None) -> int:
    """Negotiated engine: this rank has no more work; until every rank has joined, its
    worker keeps serving the others (contributing zeros to their allreduces, no rows to
    their allgathers; a broadcast, alltoall, gather, scatter or a Min/Max/Product reduction
    of theirs fails with InvalidUsage on every rank). Returns the last rank to join. A join
    that times out stays in force: until it returns (call join() again), this rank's
    submits are InvalidUsage."""
    comm, engine = _need("join")
    if not _negotiated:
        raise InvalidUsage("collx.join: needs the negotiated engine: collx.init(negotiate=True) "
                           "or COLLX_ENGINE=negotiated (collx.torch.init() starts it)")
    return engine.join(ops._check_timeout(timeout, "join"))


def add_process_set(ps_or_ranks: Any) -> Any:
    """Register a process set (collective over the world: every rank calls it with the same
    ranks, in the same order among process-set calls). Returns the ProcessSet."""
    try:
        ranks: Any = sorted(int(r) for r in getattr(ps_or_ranks, "ranks", ps_or_ranks))
    except (TypeError, ValueError):
        ranks = repr(ps_or_ranks)        # refused by the table's own check, on every rank
    return _ps_call("add_process_set", lambda t: t.add(ps_or_ranks), {"ranks": ranks})


def remove_process_set(ps: Any) -> Any:
    """Unregister a process set (collective over the world, like add_process_set)."""
    psid = getattr(ps, "process_set_id", None)
    return _ps_call("remove_process_set", lambda t: t.remove(ps), {"process_set_id": psid},
                    removed=psid)


def _ps_call(op: str, fn: Callable[[Any], Any], agree: dict, removed: Any = None) -> Any:
    comm, engine = _need(op)
    table = _table
    if table is None:
        raise InvalidUsage(f"collx.{op}: process sets are not available in this build")
    if _negotiated:
        req = Request(engine.name_for(op, None), op, 0, agree, job=lambda: fn(table),
                      timeout=None, removes=removed)
        return engine.enqueue([req])[0].wait()
    return engine.run(lambda: fn(table), op)


def start_timeline(path: str, mark_cycles: bool = False) -> None:
    """Rank 0 writes a Chrome trace of the negotiated engine's work to ``path``."""
    _need("start_timeline")
    _timeline.start(path, mark_cycles)


def stop_timeline() -> None:
    _timeline.stop()


# ---- handles ---------------------------------------------------------------------------

def poll(handle: Handle) -> bool:
    """True when the async operation is finished (synchronize will not block)."""
    return handle.done()


def synchronize(handle: Handle, timeout: float | None = None) -> Any:
    """Wait for an async operation and return its result (or raise its error)."""
    return handle.wait(timeout)


def __getattr__(name: str) -> Any:
    """ProcessSet and global_process_set come from collx/runtime/process_sets.py."""
    if name in ("ProcessSet", "global_process_set"):
        from .runtime import process_sets
        return getattr(process_sets, name)
    raise AttributeError(f"module 'collx.api' has no attribute {name!r}")
