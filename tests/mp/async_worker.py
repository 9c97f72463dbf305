"""Worker: the *_async forms (tests/test_async.py). Modes:

mixed
    1. one of every *_async collective in flight at once, then synchronized out of order;
    2. a long deterministic sequence mixing sync and async calls of every collective with
       data that depends on the call's position, so that any reordering on any rank gives
       a wrong result (or MismatchError) — program order must hold on every rank;
    3. 40 async allreduces of assorted sizes in flight, waited for in a shuffled order;
    4. poll() turns True by itself (no synchronize) within a bound;
    5. synchronize(handle, timeout=) — CollxTimeout while a peer is late, the operation
       goes on and a later synchronize returns the right result; synchronize and poll on a
       finished handle keep answering the same;
    6. an async call that fails (a peer never joins, timeout=1) raises from synchronize,
       and the next call fails fast.
    Prints ``FAIL ...`` per problem and finally ``OK {json}``.

exchange NBYTES
    Ranks 0 and 1 each send_async NBYTES to the other, then recv_async, then synchronize
    both (the MPI isend/irecv idiom); prints ``EXCHANGE {"type", "elapsed"}``.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import worker

T = 30.0     # synchronize bound: far above any legitimate wait here


def even_split(total: int, n: int) -> list[int]:
    q, m = divmod(total, n)
    return [q + 1 if i < m else q for i in range(n)]


def data(i: int, rank: int, count: int, dtype=np.int64) -> np.ndarray:
    """Input of call i on rank: small integers depending on (i, rank, position)."""
    return ((np.arange(count, dtype=np.int64) * 7 + 13 * i + 5 * rank) % 23 - 11).astype(dtype)


class Calls:
    """Call i of kind k: what every rank passes and what every rank must get back."""

    def __init__(self, cx) -> None:
        self.cx, self.n, self.r = cx, cx.size(), cx.rank()

    def make(self, kind: str, i: int, asynchronous: bool):
        """Start call i; returns (label, handle-or-result, want)."""
        cx, n, r = self.cx, self.n, self.r
        count = 3 + (i * 37) % 2000
        ranks = range(n)
        go = (lambda f, *a, **k: getattr(cx, f + "_async")(*a, **k)) if asynchronous else \
             (lambda f, *a, **k: getattr(cx, f)(*a, **k))
        label = f"call {i} {kind}{' async' if asynchronous else ''} count={count}"
        if kind == "allreduce":
            want = sum(data(i, s, count) for s in ranks)
            return label, go("allreduce", data(i, r, count), op=cx.Sum), want
        if kind == "allreduce_max":
            want = np.maximum.reduce([data(i, s, count) for s in ranks])
            return label, go("allreduce", data(i, r, count), op=cx.Max), want
        if kind == "broadcast":
            root = i % n
            return label, go("broadcast", data(i, r, count), root), data(i, root, count)
        if kind == "allgather":
            rows = [count + s for s in ranks]
            want = np.concatenate([data(i, s, rows[s]) for s in ranks])
            return label, go("allgather", data(i, r, rows[r])), want
        if kind == "reducescatter":
            parts = even_split(count, n)
            lo = sum(parts[:r])
            want = sum(data(i, s, count) for s in ranks)[lo:lo + parts[r]]
            return label, go("reducescatter", data(i, r, count), op=cx.Sum), want
        if kind == "alltoall":
            k = count // n + 1
            want = np.concatenate([data(i, s, k * n)[r * k:(r + 1) * k] for s in ranks])
            return label, go("alltoall", data(i, r, k * n)), want
        if kind == "reduce":
            root = (i + 1) % n
            want = sum(data(i, s, count) for s in ranks) if r == root else None
            return label, go("reduce", data(i, r, count), root, op=cx.Sum), want
        if kind == "gather":
            root = (i + 2) % n
            want = np.concatenate([data(i, s, count) for s in ranks]) if r == root else None
            return label, go("gather", data(i, r, count), root), want
        if kind == "scatter":
            root = i % n
            parts = even_split(count, n)
            lo = sum(parts[:r])
            return label, go("scatter", data(i, r, count), root), data(i, root, count)[lo:lo + parts[r]]
        if kind == "barrier":
            return label, go("barrier"), None
        raise ValueError(kind)


KINDS = ["allreduce", "broadcast", "allgather", "reducescatter", "alltoall", "reduce",
         "gather", "scatter", "barrier", "allreduce_max"]


def result_of(cx, handle_or_result, asynchronous: bool):
    return cx.synchronize(handle_or_result, timeout=T) if asynchronous else handle_or_result


def check(chk: worker.Checker, label: str, got, want) -> None:
    if want is None:
        chk.true(label, got is None, f"got {type(got).__name__}, want None")
    else:
        chk.equal(label, got, want)


def all_in_flight(cx, chk: worker.Checker, calls: Calls) -> None:
    started = [calls.make(kind, 1000 + j, True) for j, kind in enumerate(KINDS)]
    n, r = calls.n, calls.r
    small = data(7, r, 100, np.float32)            # eager-sized p2p ring, in flight too
    inbox = np.empty(100, np.float32)
    if n > 1:
        ps = cx.send_async(small, (r + 1) % n, tag=5)
        pr = cx.recv_async(inbox, (r - 1) % n, tag=5)
    order = list(range(len(started)))[::-1]
    order = order[1::2] + order[0::2]              # out of order
    for j in order:
        label, handle, want = started[j]
        check(chk, label + " (all in flight)", cx.synchronize(handle, timeout=T), want)
        chk.cover(KINDS[j] + "_async")
    if n > 1:
        chk.true("send_async result", cx.synchronize(ps, timeout=T) is None)
        chk.equal("recv_async (all in flight)", cx.synchronize(pr, timeout=T),
                  data(7, (r - 1) % n, 100, np.float32))
        chk.cover("send_async/recv_async")


def program_order(cx, chk: worker.Checker, calls: Calls) -> None:
    """Call i is sync when (i * 5) % 3 == 0, async otherwise; the kinds cycle so that equal
    shapes come back to back; async results are checked only at the end."""
    pending = []
    for i in range(120):
        kind = KINDS[(i * 3) % len(KINDS)] if i % 4 else "allreduce"
        asynchronous = (i * 5) % 3 != 0
        label, got, want = calls.make(kind, i, asynchronous)
        if asynchronous:
            pending.append((label, got, want))
        else:
            check(chk, label + " (sync amid async)", got, want)
    for label, handle, want in pending:
        check(chk, label, cx.synchronize(handle, timeout=T), want)
    chk.cover("program-order")


def many_in_flight(cx, chk: worker.Checker, calls: Calls) -> None:
    started = [calls.make("allreduce", 2000 + i, True) for i in range(40)]
    rng = np.random.default_rng(calls.r)           # a different waiting order on each rank
    for j in rng.permutation(len(started)):
        label, handle, want = started[j]
        check(chk, label + " (40 in flight)", cx.synchronize(handle, timeout=T), want)
    chk.cover("many-in-flight")


def poll_turns_true(cx, chk: worker.Checker, calls: Calls) -> None:
    label, handle, want = calls.make("allreduce", 3000, True)
    deadline = time.monotonic() + T
    polls = 0
    while not cx.poll(handle):
        polls += 1
        if time.monotonic() > deadline:
            chk.fail("poll", f"still False after {T} s")
            return
        time.sleep(0.001)
    t0 = time.monotonic()
    got = cx.synchronize(handle, timeout=0.5)
    chk.true("synchronize after poll is immediate", time.monotonic() - t0 < 0.1)
    check(chk, label + " (polled)", got, want)
    chk.true("poll stays True", cx.poll(handle) and cx.poll(handle))
    check(chk, label + " (synchronize again)", cx.synchronize(handle), want)
    chk.cover("poll")


def synchronize_timeout(cx, chk: worker.Checker, calls: Calls) -> None:
    """Rank 1 joins 1.5 s late: rank 0's synchronize(timeout=0.2) raises CollxTimeout at
    about 0.2 s, the allreduce carries on, and the next synchronize gets its result."""
    from collx import CollxTimeout
    r = calls.r
    cx.barrier()
    if r == 1:
        time.sleep(1.5)
    label, handle, want = calls.make("allreduce", 4000, True)
    if r == 0:
        t0 = time.monotonic()
        try:
            cx.synchronize(handle, timeout=0.2)
            chk.fail("synchronize(timeout=0.2)", "returned although rank 1 had not joined")
        except CollxTimeout as exc:
            took = time.monotonic() - t0
            chk.true("synchronize(timeout=0.2) took", 0.15 < took < 1.0, f"{took:.3f} s")
            chk.true("synchronize timeout message", "synchronize" in str(exc), str(exc))
        chk.true("poll while late", not cx.poll(handle))
    check(chk, label + " (after a synchronize timeout)", cx.synchronize(handle, timeout=T), want)
    chk.cover("synchronize-timeout")


def failing_async(cx, chk: worker.Checker, calls: Calls) -> None:
    """Last: rank 1 never joins an allreduce_async(timeout=1); on the others synchronize
    raises (CollxTimeout, or TransportError once another rank gave up first) within 2 s."""
    from collx import CollxError, TransportError
    r, n = calls.r, calls.n
    store = cx.communicator().store
    cx.barrier()
    if r == 1:
        store.wait([f"async-failed/{s}" for s in range(n) if s != 1], timeout=T)
        chk.cover("failing-async")
        return
    t0 = time.monotonic()
    handle = cx.allreduce_async(np.ones(10, np.float32), op=cx.Sum, timeout=1.0)
    try:
        cx.synchronize(handle, timeout=T)
        chk.fail("failing allreduce_async", "returned although rank 1 never joined")
    except CollxError as exc:
        took = time.monotonic() - t0
        chk.true("failing allreduce_async error", type(exc).__name__ in ("CollxTimeout", "TransportError"),
                 f"{type(exc).__name__}: {exc}")
        chk.true("failing allreduce_async took", took < 2.0, f"{took:.2f} s")
    chk.true("poll after failure", cx.poll(handle))
    t0 = time.monotonic()
    try:
        cx.synchronize(cx.allreduce_async(np.ones(10, np.float32)), timeout=T)
        chk.fail("async call after failure", "succeeded on a broken communicator")
    except TransportError:
        chk.true("async call after failure fails fast", time.monotonic() - t0 < 0.5)
    store.set(f"async-failed/{r}", b"1")
    chk.cover("failing-async")


def mixed() -> None:
    cx = worker.start()
    chk = worker.Checker(cx.rank())
    calls = Calls(cx)
    all_in_flight(cx, chk, calls)
    program_order(cx, chk, calls)
    many_in_flight(cx, chk, calls)
    poll_turns_true(cx, chk, calls)
    if cx.size() > 1:
        synchronize_timeout(cx, chk, calls)
        failing_async(cx, chk, calls)
    chk.finish(size=cx.size())
    sys.stdout.flush()
    os._exit(0)          # the communicator is broken on purpose: skip the goodbye barrier


def exchange(nbytes: int) -> None:
    cx = worker.start()
    r = cx.rank()
    peer = 1 - r
    n = nbytes // 4
    t0 = time.monotonic()
    try:
        hs = cx.send_async(data(1, r, n, np.float32), peer, timeout=2.0)
        hr = cx.recv_async(np.empty(n, np.float32), peer, timeout=2.0)
        cx.synchronize(hs, timeout=T)
        got = cx.synchronize(hr, timeout=T)
        ok = bool(np.array_equal(got, data(1, peer, n, np.float32)))
        info = {"type": None if ok else "wrong data"}
    except Exception as exc:  # noqa: BLE001
        info = {"type": type(exc).__name__, "msg": str(exc)[:300]}
    info["elapsed"] = time.monotonic() - t0
    worker.say("EXCHANGE " + json.dumps(info))
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1] == "mixed":
        mixed()
    elif sys.argv[1] == "exchange":
        exchange(int(sys.argv[2]))
