"""Worker (2 ranks): every bad input is refused with InvalidUsage before anything is sent.

Before init, every rank checks that a collective raises InvalidUsage naming the call and
saying to call collx.init(). Then, for each case of CASES, rank 0 makes the bad call and
must get InvalidUsage whose message holds every expected fragment (the op's name
``collx.<op>`` and the hint), while rank 1 makes no call; then both ranks run a good
allreduce whose values depend on the case, and check its result exactly. Had the bad call
sent or posted anything, that allreduce would fail (MismatchError, wrong data or a hang
turned into CollxTimeout by its timeout=).

Prints ``CASE <label>`` per case passed, ``FAIL ...`` per problem, finally ``OK {json}``.
"""
from __future__ import annotations

import numpy as np

import worker

GOOD_TIMEOUT = 20.0


def _ro(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def cases(cx, n: int) -> list[tuple[str, object, list[str]]]:
    """(label, call, fragments the message must hold); rank 0 makes the call. n = 2."""
    f = np.arange(12, dtype=np.float32)
    strided = np.arange(24, dtype=np.float32)[::2]
    fortran = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    ro = lambda: _ro(np.zeros(12, np.float32))  # noqa: E731
    contiguous = ["not C-contiguous", "np.ascontiguousarray"]
    readonly = ["read-only", "writable"]
    return [
        # non-contiguous inputs, every collective that takes one
        ("allreduce non-contiguous", lambda: cx.allreduce(strided, op=cx.Sum), ["collx.allreduce"] + contiguous),
        ("allreduce Fortran order", lambda: cx.allreduce(fortran, op=cx.Sum), ["collx.allreduce"] + contiguous),
        ("allreduce_async non-contiguous", lambda: cx.allreduce_async(strided), ["collx.allreduce"] + contiguous),
        ("broadcast non-contiguous", lambda: cx.broadcast(strided, 0), ["collx.broadcast"] + contiguous),
        ("allgather non-contiguous", lambda: cx.allgather(strided), ["collx.allgather"] + contiguous),
        ("reducescatter non-contiguous", lambda: cx.reducescatter(strided), ["collx.reducescatter"] + contiguous),
        ("alltoall non-contiguous", lambda: cx.alltoall(strided), ["collx.alltoall"] + contiguous),
        ("reduce non-contiguous", lambda: cx.reduce(strided), ["collx.reduce"] + contiguous),
        ("gather non-contiguous", lambda: cx.gather(strided), ["collx.gather"] + contiguous),
        ("scatter non-contiguous", lambda: cx.scatter(strided), ["collx.scatter"] + contiguous),
        ("send non-contiguous", lambda: cx.send(strided, 1), ["collx.send"] + contiguous),
        ("recv non-contiguous out", lambda: cx.recv(np.zeros(24, np.float32)[::2], 1), ["collx.recv"] + contiguous),
        ("allreduce not a buffer", lambda: cx.allreduce([1.0, 2.0]), ["collx.allreduce", "buffer", "numpy array"]),
        ("allreduce object dtype", lambda: cx.allreduce(np.array([1, None], dtype=object)), ["collx.allreduce", "object"]),
        # read-only outputs
        ("allreduce read-only out", lambda: cx.allreduce(f, op=cx.Sum, out=ro()), ["collx.allreduce"] + readonly),
        ("allreduce_ read-only x", lambda: cx.allreduce_(ro(), op=cx.Sum), ["collx.allreduce"] + readonly),
        ("broadcast_ read-only x", lambda: cx.broadcast_(ro(), 0), ["collx.broadcast"] + readonly),
        ("broadcast read-only out", lambda: cx.broadcast(f, 0, out=ro()), ["collx.broadcast"] + readonly),
        ("allgather read-only out", lambda: cx.allgather(f, out=_ro(np.zeros(24, np.float32))), ["collx.allgather"] + readonly),
        ("scatter read-only out", lambda: cx.scatter(f, 0, out=_ro(np.zeros(6, np.float32))), ["collx.scatter"] + readonly),
        ("reduce read-only out", lambda: cx.reduce(f, 0, out=ro()), ["collx.reduce"] + readonly),
        ("recv read-only out", lambda: cx.recv(ro(), 1), ["collx.recv"] + readonly),
        # wrong out shape or dtype
        ("allreduce out shape", lambda: cx.allreduce(f, out=np.zeros(13, np.float32)), ["collx.allreduce", "shape", "needs shape (12,)"]),
        ("allreduce out dtype", lambda: cx.allreduce(f, out=np.zeros(12, np.float64)), ["collx.allreduce", "float64", "dtype float32"]),
        ("allreduce out 2-D", lambda: cx.allreduce(f, out=np.zeros((3, 4), np.float32)), ["collx.allreduce", "needs shape (12,)"]),
        ("allreduce out overlaps", lambda: (lambda b: cx.allreduce(b[:12], out=b[1:13]))(np.zeros(13, np.float32)), ["overlaps", "in-place"]),  # op name: see test_bad_input.py
        ("broadcast out shape", lambda: cx.broadcast(f, 0, out=np.zeros(11, np.float32)), ["collx.broadcast", "needs shape (12,)"]),
        ("broadcast out dtype", lambda: cx.broadcast(f, 0, out=np.zeros(12, np.int32)), ["collx.broadcast", "dtype float32"]),
        ("allgather out dtype", lambda: cx.allgather(f, out=np.zeros(24, np.float64)), ["collx.allgather", "dtype float32"]),
        ("allgather out trailing shape", lambda: cx.allgather(f.reshape(3, 4), out=np.zeros((6, 3), np.float32)), ["collx.allgather", "shape"]),
        ("scatter out shape", lambda: cx.scatter(f, 0, out=np.zeros(12, np.float32)), ["collx.scatter", "needs shape (6,)"]),
        ("reduce out dtype (root)", lambda: cx.reduce(f, 0, out=np.zeros(12, np.int32)), ["collx.reduce", "dtype float32"]),
        # unknown op
        ("allreduce op=99", lambda: cx.allreduce(f, op=99), ["collx.allreduce", "unknown reduction op", "collx.Sum"]),
        ("allreduce op='sum'", lambda: cx.allreduce(f, op="sum"), ["collx.allreduce", "unknown reduction op", "collx.Sum"]),
        ("allreduce_async op=-1", lambda: cx.allreduce_async(f, op=-1), ["collx.allreduce", "unknown reduction op"]),
        ("reducescatter op=99", lambda: cx.reducescatter(f, op=99), ["collx.reducescatter", "unknown reduction op"]),
        ("reduce op=99", lambda: cx.reduce(f, 0, op=99), ["collx.reduce", "unknown reduction op"]),
        # dtypes with no reduction kernel
        ("allreduce complex64", lambda: cx.allreduce(np.ones(4, np.complex64)), ["collx.allreduce", "no reduction kernel", "complex64", "supported"]),
        ("allreduce bool", lambda: cx.allreduce(np.ones(4, bool), op=cx.Max), ["collx.allreduce", "no reduction kernel", "bool"]),
        ("allreduce big-endian", lambda: cx.allreduce(np.ones(4, ">f4")), ["collx.allreduce", "no reduction kernel", "native byte order"]),
        ("allreduce uint16", lambda: cx.allreduce(np.ones(4, np.uint16)), ["collx.allreduce", "no reduction kernel", "uint16"]),
        ("reducescatter complex128", lambda: cx.reducescatter(np.ones(4, np.complex128)), ["collx.reducescatter", "no reduction kernel"]),
        ("reduce bool", lambda: cx.reduce(np.ones(4, bool), 0), ["collx.reduce", "no reduction kernel"]),
        # bad roots
        ("broadcast root -1", lambda: cx.broadcast(f, -1), ["collx.broadcast", "root_rank=-1", f"0..{n - 1}"]),
        ("broadcast root size", lambda: cx.broadcast(f, n), ["collx.broadcast", f"root_rank={n}", f"0..{n - 1}"]),
        ("broadcast_ root size", lambda: cx.broadcast_(np.zeros(3, np.float32), n), ["collx.broadcast", f"root_rank={n}"]),
        ("broadcast root 0.5", lambda: cx.broadcast(f, 0.5), ["collx.broadcast", "root_rank=0.5"]),
        ("reduce root -1", lambda: cx.reduce(f, -1), ["collx.reduce", "root_rank=-1"]),
        ("gather root size", lambda: cx.gather(f, n), ["collx.gather", f"root_rank={n}"]),
        ("scatter root -1", lambda: cx.scatter(f, -1), ["collx.scatter", "root_rank=-1"]),
        ("broadcast_async root size", lambda: cx.broadcast_async(f, n), ["collx.broadcast", f"root_rank={n}"]),
        # alltoall splits
        ("alltoall splits sum", lambda: cx.alltoall(f, splits=[5, 5]), ["collx.alltoall", "splits=[5, 5]", "adding up to the first dimension 12"]),
        ("alltoall splits length", lambda: cx.alltoall(f, splits=[4, 4, 4]), ["collx.alltoall", f"must be {n}"]),
        ("alltoall splits negative", lambda: cx.alltoall(f, splits=[14, -2]), ["collx.alltoall", "non-negative"]),
        ("alltoall uneven without splits", lambda: cx.alltoall(np.arange(13, dtype=np.float32)), ["collx.alltoall", "not divisible", "splits="]),
        ("alltoall 0-d", lambda: cx.alltoall(np.float32(1.0).reshape(())), ["collx.alltoall", "at least one dimension"]),
        ("alltoall_async splits sum", lambda: cx.alltoall_async(f, splits=[1, 2]), ["collx.alltoall", "adding up"]),
        ("reducescatter 0-d", lambda: cx.reducescatter(np.zeros((), np.float32)), ["collx.reducescatter", "at least one dimension"]),
        ("scatter 0-d", lambda: cx.scatter(np.zeros((), np.float32)), ["collx.scatter", "at least one dimension"]),
        # point to point peers
        ("send to self", lambda: cx.send(f, 0), ["collx.send", "dst=0", "another rank"]),
        ("send out of range", lambda: cx.send(f, n), ["collx.send", f"dst={n}", "another rank"]),
        ("send negative", lambda: cx.send(f, -1), ["collx.send", "dst=-1"]),
        ("recv from self", lambda: cx.recv(np.zeros(12, np.float32), 0), ["collx.recv", "src=0", "another rank"]),
        ("recv out of range", lambda: cx.recv(np.zeros(12, np.float32), n + 5), ["collx.recv", f"src={n + 5}"]),
        ("send_async to self", lambda: cx.send_async(f, 0), ["collx.send", "dst=0"]),
        ("recv_async from self", lambda: cx.recv_async(np.zeros(12, np.float32), 0), ["collx.recv", "src=0"]),
    ]


def before_init(chk: worker.Checker) -> None:
    import collx
    for label, call, op in [
        ("allreduce before init", lambda: collx.allreduce(np.ones(3, np.float32)), "allreduce"),
        ("broadcast_async before init", lambda: collx.broadcast_async(np.ones(3), 0), "broadcast_async"),
        ("barrier before init", lambda: collx.barrier(), "barrier"),
        ("rank before init", lambda: collx.rank(), "rank"),
    ]:
        expect_invalid(chk, label, call, [f"collx.{op}", "collx.init()"])


def expect_invalid(chk: worker.Checker, label: str, call, fragments: list[str]) -> None:
    from collx import InvalidUsage
    try:
        got = call()
    except InvalidUsage as exc:
        msg = str(exc)
        missing = [frag for frag in fragments if frag not in msg]
        if chk.true(label + " message", not missing, f"message {msg!r} lacks {missing}"):
            worker.say(f"CASE {label}")
        return
    except Exception as exc:  # noqa: BLE001
        chk.fail(label, f"raised {type(exc).__name__} ({exc}), not InvalidUsage")
        return
    chk.fail(label, f"was accepted (returned {type(got).__name__}), not refused with InvalidUsage")


def main() -> None:
    worker.arm_watchdog()
    import collx
    chk = worker.Checker(-1)
    before_init(chk)
    collx.init()
    rank, n = collx.rank(), collx.size()
    chk.rank = rank
    assert n == 2, "run with 2 ranks"
    todo = cases(collx, n)
    for i, (label, call, fragments) in enumerate(todo):
        if rank == 0:
            expect_invalid(chk, label, call, fragments)
        # both ranks: a good allreduce must still match up and be right
        x = np.full(1000, i + 1 + 100 * rank, np.int64)
        try:
            got = collx.allreduce(x, op=collx.Sum, timeout=GOOD_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            chk.fail(f"good allreduce after '{label}'", f"raised {type(exc).__name__}: {exc}")
            chk.finish()
            return
        chk.equal(f"good allreduce after '{label}'", got, np.full(1000, 2 * (i + 1) + 100, np.int64))
    chk.finish(cases=len(todo) if rank == 0 else 0, size=n)


if __name__ == "__main__":
    main()
