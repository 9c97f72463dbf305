"""The collectives on buffers: validate everything, then return a job that runs the plan.

Each ``prepare_*`` takes the Communicator to run on: the world's, or a process set's
(collx/runtime/process_sets.py: rank, size, roots and peers are then the set's, and the
Communicator maps them to world ranks when it packs a plan). Each
``prepare_*`` refuses bad input with InvalidUsage *before* anything is sent, allocates
the output, and returns a zero-argument job that the engine runs inline (synchronous
calls) or on its worker (async calls). A job may run several plans (e.g. allgather first
agrees on the per-rank first dimensions); they stay in one job so that every rank runs them
in the same order.
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Callable

import numpy as np

from .. import _C
from ..algos.ir import Schedule
from ..algos.registry import ALGORITHMS, DEFAULT, build_schedule, even_split
from ..errors import InvalidUsage, MismatchError
from ..topo.select import case_bytes
from .buffers import BYTE_CODE, as_array, check_out, dtype_code, reduce_code
from . import servers
from .communicator import Communicator

Job = Callable[[], Any]
# Pipelining chunk of the star through dedicated servers: a server returns a chunk only when
# all W workers' parts of it arrived, so its pipeline needs many chunks in flight; measured
# on 4 worker + 4 server netns hosts at 1 Gbit, 64 MiB: 1 MiB chunks 1.10x the ring's busbw,
# 256 KiB 1.32x, 64 KiB 1.37x.
SERVER_CHUNK_BYTES = 64 << 10
REDOPS = {_C.SUM, _C.PROD, _C.MIN, _C.MAX, _C.AVERAGE}
REDOP_NAMES = {_C.SUM: "Sum", _C.PROD: "Product", _C.MIN: "Min", _C.MAX: "Max", _C.AVERAGE: "Average"}


def _check_op(op: int, name: str) -> int:
    if op not in REDOPS:
        raise InvalidUsage(f"collx.{name}: unknown reduction op {op!r}; use collx.Sum, "
                           f"collx.Average, collx.Min, collx.Max or collx.Product")
    return op


def _check_timeout(timeout: Any, name: str) -> float | None:
    """None = the communicator's default (COLLX_TIMEOUT); else a positive number of seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)) \
            or not timeout > 0 or timeout != timeout:
        raise InvalidUsage(f"collx.{name}: timeout={timeout!r} must be a positive number of "
                           f"seconds (or None for COLLX_TIMEOUT)")
    return float(timeout)


def _splittable(x: Any, name: str) -> np.ndarray:
    """The input of a collective that splits dimension 0 across ranks."""
    arr = as_array(x, name)
    if arr.ndim == 0:
        raise InvalidUsage(f"collx.{name}: needs at least one dimension to split across ranks")
    return arr


def _scope(comm: Communicator) -> str:
    """What rank numbers mean on ``comm``: the job's, or a process set's (set ranks)."""
    if comm.peers is None:
        return "this job"
    return f"this process set (set ranks of world ranks {list(comm.peers)})"


def _check_root(comm: Communicator, root: int, name: str) -> int:
    if not isinstance(root, (int, np.integer)) or not 0 <= root < comm.size:
        raise InvalidUsage(f"collx.{name}: root_rank={root!r} is not a rank of {_scope(comm)} "
                           f"(0..{comm.size - 1})")
    return int(root)


def _check_peer(comm: Communicator, peer: int, name: str, what: str) -> int:
    if not isinstance(peer, (int, np.integer)) or not 0 <= peer < comm.size or peer == comm.rank:
        raise InvalidUsage(f"collx.{name}: {what}={peer!r} must be another rank of "
                           f"{_scope(comm)} (0..{comm.size - 1}, not this rank {comm.rank})")
    return int(peer)


def _move_code(arr: np.ndarray) -> tuple[int, int]:
    """(dtype code, item size) for a pure data move: any dtype travels as its bytes."""
    code = dtype_code(arr.dtype)
    return (code, arr.itemsize) if code is not None else (BYTE_CODE, 1)


def _elems(arr: np.ndarray, itemsize: int) -> int:
    return arr.nbytes // itemsize


def _row_elems(arr: np.ndarray) -> int:
    return math.prod(arr.shape[1:]) if arr.ndim > 1 else 1


def _signature(arr: np.ndarray) -> int:
    """What must agree across ranks apart from the first dimension."""
    return zlib.crc32(f"{arr.dtype.str}|{arr.shape[1:]}".encode()) & 0x7FFFFFFF


# ---------------------------------------------------------------- algorithm choice --------

def _choose(comm: Communicator, op: str, default: str | None = None, *, itemsize: int = 1,
            count: int = 0, counts: Any = None, root: int = 0) -> str:
    """Algorithm of ``op``'s main plan for this case (sizes as build_schedule takes them):
    the one COLLX_ALGO forces for this size (comm.spec, parsed once at init; a forced name
    that cannot serve the case is refused by _build, never silently replaced), else
    ``default`` when the caller has a rule of its own, else collx.topo's Selector (cost
    model on the job's topology and probed links, tune table; one cached decision per case,
    logged with its reason under COLLX_LOG=debug), else the registry's DEFAULT[op]. The
    name goes into the plan key so different algorithms never share a cached plan."""
    if comm.spec:
        nbytes, _ = case_bytes(op, comm.size, itemsize, count, counts, None)
        forced = comm.spec.forced(op, nbytes)
        if forced:
            return forced
    if default is not None:
        return default
    sel = comm.selector
    if sel is None or len(ALGORITHMS[op]) == 1:
        return DEFAULT[op]
    return sel.choose(op, itemsize=itemsize, count=count, counts=counts, root=root).algo


def _forced(comm: Communicator, op: str, algo: str) -> bool:
    return any(e.op == op and e.name == algo for e in comm.spec.entries)


def _build(comm: Communicator, op: str, algo: str, **kw: Any) -> Schedule:
    """build_schedule, except that a forced algorithm refusing this case (its builder raises
    ValueError, e.g. pair with 3 ranks) is InvalidUsage naming the algorithm and the knob."""
    kw.setdefault("groups", comm.host_groups)   # hierarchical algorithms use the real hosts
    try:
        return build_schedule(op, comm.size, algo=algo, **kw)
    except InvalidUsage:
        raise
    except ValueError as exc:
        if not _forced(comm, op, algo):
            raise
        raise InvalidUsage(f"collx.{op}: algorithm {algo} (forced by COLLX_ALGO) does not "
                           f"support {exc}") from None


def _precheck(comm: Communicator, op: str, algo: str, root: int = 0) -> None:
    """For ops whose main plan is built inside the job (after the metadata exchange that
    agrees on the sizes): if ``algo`` is forced, build it once for this world size, root and
    dummy sizes now, so that an algorithm that cannot serve this job at all is refused
    before anything is sent. (A forced algorithm refusing only particular sizes still
    raises inside the job, on every rank alike, after the metadata exchange.)"""
    if op not in comm.spec.ops() or (op, algo, root) in comm.forced_ok:
        return
    n = comm.size
    _build(comm, op, algo, counts=[1] * n, send_counts=[[1] * n for _ in range(n)], root=root)
    comm.forced_ok.add((op, algo, root))


# ---------------------------------------------------------------- allreduce ---------------

def prepare_allreduce(comm: Communicator, x: Any, op: int, out: Any, timeout: float | None,
                      name: str = "allreduce") -> Job:
    timeout = _check_timeout(timeout, name)
    arr = as_array(x, name)
    _check_op(op, name)
    code = reduce_code(arr, name)
    res = check_out(out, name, arr.shape, arr.dtype)
    run = allreduce_runner(comm, arr.itemsize, arr.size, code, op, timeout)
    if not run.served:   # type: ignore[attr-defined]
        comm.register_fast(run.plan, arr.nbytes, code, op)  # type: ignore[attr-defined]

    def job() -> np.ndarray:
        run(arr, res)
        return res
    return job


def allreduce_runner(comm: Communicator, itemsize: int, count: int, code: int, op: int,
                     timeout: float | None) -> Callable[[np.ndarray, np.ndarray], None]:
    """``run(arr, res)``: the allreduce of ``count`` items of ``code`` for buffers the caller
    validated (C-contiguous, that size and dtype, res writable). Selection and the plan are
    fixed here, so a caller that reduces the same case again (the negotiated engine, every
    training step) can keep ``run``, as long as ``comm.epoch`` has not changed (``run.plan``:
    the plan; ``run.served``: it goes through dedicated servers)."""
    # a job with dedicated servers uses them (star); else collx/topo's selection
    algo = _choose(comm, "allreduce", "star" if comm.servers else None,
                   itemsize=itemsize, count=count)
    chunk = comm.chunk_count(itemsize)
    if algo == "star" and comm.servers:
        chunk = min(chunk, max(1, SERVER_CHUNK_BYTES // itemsize))
    plan = comm.plan(("allreduce", count, algo), itemsize,
                     lambda: _build(comm, "allreduce", algo, count=count, chunk_count=chunk,
                                    servers=comm.servers))
    execute = comm.execute
    if algo == "star" and comm.servers:
        words = servers.allreduce_job_words(count, code, op, chunk, itemsize)

        def served(arr: np.ndarray, res: np.ndarray) -> None:
            servers.send_job(comm, words, timeout)
            execute(plan, arr, res, code, op, timeout)
        served.plan, served.served = plan, True  # type: ignore[attr-defined]
        return served

    def run(arr: np.ndarray, res: np.ndarray) -> None:
        execute(plan, arr, res, code, op, timeout)
    run.plan, run.served = plan, False  # type: ignore[attr-defined]
    return run


# ---------------------------------------------------------------- broadcast ---------------

def prepare_broadcast(comm: Communicator, x: Any, root: int, out: Any, timeout: float | None,
                      name: str = "broadcast") -> Job:
    timeout = _check_timeout(timeout, name)
    arr = as_array(x, name)
    root = _check_root(comm, root, name)
    res = check_out(out, name, arr.shape, arr.dtype)
    code, isz = _move_code(arr)
    count = _elems(arr, isz)
    algo = _choose(comm, "broadcast", itemsize=isz, count=count, root=root)
    plan = comm.plan(("broadcast", count, root, algo), isz,
                     lambda: _build(comm, "broadcast", algo, count=count, root=root,
                                    chunk_count=comm.chunk_count(isz)))
    src = arr if comm.rank == root else None

    def job() -> np.ndarray:
        comm.execute(plan, src, res, code, _C.SUM, timeout)
        return res
    return job


# ---------------------------------------------------------------- allgather / gather ------

def _exchange_rows(comm: Communicator, arr: np.ndarray, timeout: float | None, name: str,
                   root: int | None = None) -> list[int]:
    """Agree on every rank's first dimension (and check dtype/trailing shape agree)."""
    mine = np.array([arr.shape[0] if arr.ndim else 1, _signature(arr)], dtype=np.int64)
    table = np.empty(2 * comm.size, dtype=np.int64)
    # internal metadata plan, never forced by COLLX_ALGO: recursive doubling (hd), log2 n
    # dependent rounds for these 16 bytes per rank where the ring takes n - 1 (np 4 on 2
    # cores: 8 vs 43 us per exchange — every hop may wait for a descheduled rank)
    plan = comm.plan(("allgather-meta", 2, "hd"), 8,
                     lambda: build_schedule("allgather", comm.size, counts=[2] * comm.size,
                                            algo="hd"))
    comm.execute(plan, mine, table, _C.INT64, _C.SUM, timeout)
    rows, sigs = table[0::2].tolist(), table[1::2].tolist()
    bad = [r for r in range(comm.size) if sigs[r] != sigs[comm.rank]]
    if bad:
        raise MismatchError(f"collx.{name}: rank {comm.rank} has dtype {arr.dtype} and shape "
                            f"{arr.shape}, but rank(s) {bad} passed a different dtype or trailing "
                            f"shape; all ranks must agree on everything but the first dimension")
    return rows


def prepare_allgather(comm: Communicator, x: Any, out: Any, timeout: float | None,
                      name: str = "allgather") -> Job:
    timeout = _check_timeout(timeout, name)
    arr = as_array(x, name)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    code, isz = _move_code(arr)
    row = _row_elems(arr) * arr.itemsize // isz
    # Refuse a bad out= before anything is sent. Its first dimension can only be checked
    # once the ranks' rows are known: then we still take part (into a scratch array) so
    # that the other ranks complete, and raise afterwards.
    given = None
    if out is not None:
        given = as_array(out, name, "out", writable=True)
        if given.dtype != arr.dtype or given.shape[1:] != arr.shape[1:] or given.ndim != arr.ndim:
            raise InvalidUsage(f"collx.{name}: out has shape {given.shape} and dtype "
                               f"{given.dtype}; this call needs shape (sum of every rank's "
                               f"rows,) + {arr.shape[1:]} and dtype {arr.dtype}")
    forced = comm.spec.forced("allgather", 0) if comm.spec else None
    if forced:
        _precheck(comm, "allgather", forced)

    def job() -> np.ndarray:
        rows = _exchange_rows(comm, arr, timeout, name) if comm.size > 1 else [arr.shape[0]]
        shape = (sum(rows),) + arr.shape[1:]
        bad_rows = given is not None and given.shape != shape
        res = given if given is not None and not bad_rows else np.empty(shape, arr.dtype)
        counts = [r * row for r in rows]
        # chosen after the exchange: every rank knows the same counts, so chooses alike
        algo = _choose(comm, "allgather", itemsize=isz, counts=counts)
        # built after the metadata exchange: a forced algorithm refusing these sizes raises
        # InvalidUsage here, inside the job (on every rank alike); see _precheck
        plan = comm.plan(("allgather", tuple(counts), algo), isz,
                         lambda: _build(comm, "allgather", algo, counts=counts,
                                        chunk_count=comm.chunk_count(isz)))
        comm.execute(plan, arr, res, code, _C.SUM, timeout)
        if bad_rows:
            raise InvalidUsage(f"collx.{name}: out has shape {given.shape}, but the ranks' "
                               f"rows {rows} add up to shape {shape}; pass out=None or an "
                               f"array of that shape (the collective itself completed)")
        return res
    return job


def prepare_gather(comm: Communicator, x: Any, root: int, timeout: float | None,
                   name: str = "gather") -> Job:
    timeout = _check_timeout(timeout, name)
    arr = as_array(x, name)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    root = _check_root(comm, root, name)
    code, isz = _move_code(arr)
    row = _row_elems(arr) * arr.itemsize // isz
    algo = _choose(comm, "gather")
    _precheck(comm, "gather", algo, root)

    def job() -> np.ndarray | None:
        rows = _exchange_rows(comm, arr, timeout, name) if comm.size > 1 else [arr.shape[0]]
        counts = [r * row for r in rows]
        res = np.empty((sum(rows),) + arr.shape[1:], arr.dtype) if comm.rank == root else None
        # built inside the job (after the metadata exchange); see _precheck
        plan = comm.plan(("gather", tuple(counts), root, algo), isz,
                         lambda: _build(comm, "gather", algo, counts=counts, root=root))
        comm.execute(plan, arr, res, code, _C.SUM, timeout)
        return res
    return job


# ---------------------------------------------------------------- reducescatter / reduce --

def prepare_reducescatter(comm: Communicator, x: Any, op: int, timeout: float | None,
                          name: str = "reducescatter") -> Job:
    timeout = _check_timeout(timeout, name)
    arr = _splittable(x, name)
    _check_op(op, name)
    code = reduce_code(arr, name)
    rows = even_split(arr.shape[0], comm.size)
    row = _row_elems(arr)
    counts = [r * row for r in rows]
    res = np.empty((rows[comm.rank],) + arr.shape[1:], arr.dtype)
    algo = _choose(comm, "reducescatter", itemsize=arr.itemsize, counts=counts)
    plan = comm.plan(("reducescatter", tuple(counts), algo), arr.itemsize,
                     lambda: _build(comm, "reducescatter", algo, counts=counts,
                                    chunk_count=comm.chunk_count(arr.itemsize)))

    def job() -> np.ndarray:
        comm.execute(plan, arr, res, code, op, timeout)
        return res
    return job


def prepare_reduce(comm: Communicator, x: Any, root: int, op: int, out: Any,
                   timeout: float | None, name: str = "reduce") -> Job:
    timeout = _check_timeout(timeout, name)
    arr = as_array(x, name)
    root = _check_root(comm, root, name)
    _check_op(op, name)
    code = reduce_code(arr, name)
    res = check_out(out, name, arr.shape, arr.dtype) if comm.rank == root else None
    count = arr.size
    algo = _choose(comm, "reduce", itemsize=arr.itemsize, count=count, root=root)
    plan = comm.plan(("reduce", count, root, algo), arr.itemsize,
                     lambda: _build(comm, "reduce", algo, count=count, root=root))

    def job() -> np.ndarray | None:
        comm.execute(plan, arr, res, code, op, timeout)
        return res
    return job


# ---------------------------------------------------------------- scatter -----------------

def prepare_scatter(comm: Communicator, x: Any, root: int, out: Any, timeout: float | None,
                    name: str = "scatter") -> Job:
    """Root splits x's first dimension as evenly as possible (first ranks get one more row);
    every rank passes an array of the same shape and dtype (non-roots' values are unused)."""
    timeout = _check_timeout(timeout, name)
    arr = _splittable(x, name)
    root = _check_root(comm, root, name)
    code, isz = _move_code(arr)
    rows = even_split(arr.shape[0], comm.size)
    row = _row_elems(arr) * arr.itemsize // isz
    counts = [r * row for r in rows]
    res = check_out(out, name, (rows[comm.rank],) + arr.shape[1:], arr.dtype)
    algo = _choose(comm, "scatter")
    plan = comm.plan(("scatter", tuple(counts), root, algo), isz,
                     lambda: _build(comm, "scatter", algo, counts=counts, root=root))
    src = arr if comm.rank == root else None

    def job() -> np.ndarray:
        comm.execute(plan, src, res, code, _C.SUM, timeout)
        return res
    return job


# ---------------------------------------------------------------- alltoall ----------------

def prepare_alltoall(comm: Communicator, x: Any, splits: Any, timeout: float | None,
                     name: str = "alltoall") -> Job:
    timeout = _check_timeout(timeout, name)
    arr = _splittable(x, name)
    n = comm.size
    if splits is None:
        if arr.shape[0] % n:
            raise InvalidUsage(f"collx.{name}: first dimension {arr.shape[0]} is not divisible by "
                               f"{n} ranks; pass splits=[rows for each rank]")
        send_rows = [arr.shape[0] // n] * n
    else:
        send_rows = [int(s) for s in np.asarray(splits).reshape(-1).tolist()]
        if len(send_rows) != n or any(s < 0 for s in send_rows) or sum(send_rows) != arr.shape[0]:
            raise InvalidUsage(f"collx.{name}: splits={send_rows} must be {n} non-negative row "
                               f"counts adding up to the first dimension {arr.shape[0]}")
    code, isz = _move_code(arr)
    row = _row_elems(arr) * arr.itemsize // isz
    algo = _choose(comm, "alltoall", "pairwise_direct")
    _precheck(comm, "alltoall", algo)

    def job() -> Any:
        if n > 1:
            mine = np.array(send_rows + [_signature(arr)] * n, dtype=np.int64)
            # element r of block d goes to rank d: send [rows to d, signature] to each d
            send = np.empty(2 * n, np.int64)
            send[0::2], send[1::2] = mine[:n], mine[n:]
            recv = np.empty(2 * n, np.int64)
            # internal metadata plan: never forced by COLLX_ALGO
            meta = comm.plan(("alltoall-meta",), 8, lambda: build_schedule(
                "alltoall", n, send_counts=[[2] * n for _ in range(n)], algo="pairwise_direct"))
            comm.execute(meta, send, recv, _C.INT64, _C.SUM, timeout)
            recv_rows, sigs = recv[0::2].tolist(), recv[1::2].tolist()
            bad = [r for r in range(n) if sigs[r] != sigs[comm.rank]]
            if bad:
                raise MismatchError(f"collx.{name}: rank {comm.rank} has dtype {arr.dtype}, "
                                    f"shape {arr.shape}; rank(s) {bad} differ beyond the first "
                                    f"dimension")
        else:
            recv_rows = list(send_rows)
        res = np.empty((sum(recv_rows),) + arr.shape[1:], arr.dtype)
        matrix = [[0] * n for _ in range(n)]
        matrix[comm.rank] = [r * row for r in send_rows]
        for src in range(n):
            matrix[src][comm.rank] = recv_rows[src] * row
        key = ("alltoall", tuple(matrix[comm.rank]), tuple(recv_rows), algo)
        # the output is always a fresh array: the out-of-place variant (pairwise_direct, the
        # default) needs no detours. Built inside the job, after the metadata exchange; see
        # _precheck for a forced algorithm.
        plan = comm.plan(key, isz, lambda: _build(comm, "alltoall", algo, send_counts=matrix))
        # The key holds this rank's row and column of the matrix, which differ across ranks
        # when splits do; the fingerprint every message carries must not (each message's
        # size is checked on its own), so derive it from what all ranks share.
        plan.fingerprint = zlib.crc32(f"alltoall|{n}|{isz}|{algo}".encode())
        comm.execute(plan, arr, res, code, _C.SUM, timeout)
        if splits is None:
            return res
        return res, np.asarray(recv_rows, dtype=np.int64)
    return job


# ---------------------------------------------------------------- barrier, send/recv ------

def prepare_barrier(comm: Communicator, timeout: float | None) -> Job:
    timeout = _check_timeout(timeout, "barrier")
    algo = _choose(comm, "barrier")
    plan = comm.plan(("barrier", algo), 1, lambda: _build(comm, "barrier", algo))

    def job() -> None:
        comm.execute(plan, None, None, _C.UINT8, _C.SUM, timeout)
    return job


def _p2p_plan(comm: Communicator, kind: str, peer: int, nbytes: int, tag: int):
    from ..algos import ir
    from ..algos.ir import Schedule

    def build() -> Schedule:
        steps: list[list[ir.Step]] = [[] for _ in range(comm.size)]
        if kind == "send":
            steps[comm.rank] = [ir.send(peer, ir.Buf.IN, 0, nbytes)]
        else:
            steps[comm.rank] = [ir.recv(peer, ir.Buf.OUT, 0, nbytes)]
        ins = [0] * comm.size
        outs = [0] * comm.size
        (ins if kind == "send" else outs)[comm.rank] = nbytes
        return Schedule(f"p2p-{kind}", "direct", comm.size, steps, ins, outs)
    plan = comm.plan(("p2p", kind, peer, nbytes, tag), 1, build)
    # both sides must derive the same fingerprint: key it by the pair direction and tag
    lo, hi = (comm.rank, peer) if kind == "send" else (peer, comm.rank)
    plan.fingerprint = zlib.crc32(f"p2p|{lo}->{hi}|{nbytes}|{tag}".encode())
    return plan


def prepare_send(comm: Communicator, x: Any, dst: int, tag: int, timeout: float | None) -> Job:
    timeout = _check_timeout(timeout, "send")
    arr = as_array(x, "send")
    dst = _check_peer(comm, dst, "send", "dst")
    plan = _p2p_plan(comm, "send", dst, arr.nbytes, int(tag))

    def job() -> None:
        comm.execute(plan, arr, None, _C.UINT8, _C.SUM, timeout)
    return job


def prepare_recv(comm: Communicator, out: Any, src: int, tag: int, timeout: float | None) -> Job:
    timeout = _check_timeout(timeout, "recv")
    arr = as_array(out, "recv", "out", writable=True)
    src = _check_peer(comm, src, "recv", "src")
    plan = _p2p_plan(comm, "recv", src, arr.nbytes, int(tag))

    def job() -> np.ndarray:
        comm.execute(plan, None, arr, _C.UINT8, _C.SUM, timeout)
        return arr
    return job
