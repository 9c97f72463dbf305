"""Worker: the negotiated engine on real ranks (tests/test_engine_negotiated.py). Modes:

order      every rank submits the same named requests (allreduce of several dtypes/ops/scale
           factors, grouped_allreduce, allgather, broadcast, reducescatter, alltoall,
           barrier, quantized_allreduce) in its own shuffled order, three rounds (the later ones through the
           response cache); every result equals numpy's; prints ``DIGEST <sha256>`` of every
           result so the test can check ranks agree bitwise, and the engine's counters.
mismatch   a tensor with a rank-dependent shape, then dtype, then op: MismatchError on every
           rank naming the tensor and the ranks; a duplicate pending name and send() are
           InvalidUsage; a good allreduce afterwards still works.
stall      rank 0 submits 'lonely' that rank 1 never submits: a stall warning names it and
           rank 1 (COLLX_STALL_WARNING short), then CollxTimeout names rank 1; afterwards
           both ranks still reduce correctly.
join       rank r runs r+1 allreduces (Sum of ones) then join(): step i's result is the
           number of ranks with more than i steps; join() returns size-1 everywhere; an
           allgather while ranks have joined gathers only the active ranks' rows.
reinit     negotiated init/shutdown twice, then the ordered engine, in one process.
timeline   COLLX_TIMELINE set by the test: fused allreduces and a broadcast; rank 0 checks
           the JSON after shutdown (phases, args).
sets       (3+ ranks) a process set of ranks {0, 1}: members allreduce on it while rank 2+
           does not take part; then every rank on the global set.
leave      rank 1 shuts down while rank 0 waits on a tensor rank 1 never submits: rank 0's
           handle fails with TransportError naming rank 1 (no hang).
leave_sets (4 ranks) ranks 2 and 3 call shutdown() at once while ranks 0 and 1 keep working
           on the process set {0, 1} for a second: every result is exact (shutdown is
           collective: the leaving ranks wait in it); a global tensor fails at once naming
           ranks [2, 3]; ranks 2 and 3 leave shutdown() only after ranks 0 and 1 call it.
left       COLLX_TIMEOUT=3: rank 1's shutdown() gives up waiting for rank 0 (busy for 6 s):
           rank 0's next call raises TransportError saying rank 1 left.
mixed      rank 0 runs the negotiated engine, rank 1 the ordered one: both get an error
           (MismatchError or CollxTimeout), never a wrong result or a hang.
frozen     COLLX_FREEZE_AFTER=2: a loop of steps freezes, stays exact, unfreezes on a tensor
           outside the schedule and on changed shapes, and freezes again.
review     (3 ranks; fixes of the issue-5 review) a mismatch of process sets reaches the rank
           on the other set; un-named calls are numbered per process set; a numpy block=
           for quantized_allreduce; while a rank has joined, a cached broadcast and Min/Max
           allreduces are InvalidUsage, Sum still works; a timed-out join() refuses new
           submits; a rank whose worker dies takes the others down at once (TransportError
           well before COLLX_TIMEOUT).
killed     (through mp.launch.Ranks) the test SIGKILLs the last rank while the others wait
           on a tensor: they raise TransportError/CollxTimeout instead of hanging.

Prints ``FAIL ...`` per problem and finally ``OK {json}``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time

import numpy as np

import worker

T = 30.0


def start(negotiate: bool = True):
    worker.arm_watchdog()
    import collx
    collx.init(negotiate=negotiate)
    return collx


def ints(seed: int, shape, dtype) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-20, 20, size=shape).astype(dtype)


def mode_order(ck: worker.Checker) -> None:
    cx = start()
    r, n = cx.rank(), cx.size()
    digest = hashlib.sha256()
    for rnd in range(3):
        specs = []
        for i in range(40):
            dt = [np.float32, np.float64, np.int32, np.int64][i % 4]
            shape = (1 + (i * 37) % 300,) if i % 5 else (3, 1 + i % 7)
            op = [cx.Sum, cx.Max, cx.Average, cx.Sum][i % 4]
            pre, post = (2.0, 0.5) if i % 6 == 1 else (1.0, 1.0)
            specs.append((f"ar.{i}", dt, shape, op, pre, post))
        order = list(range(len(specs)))
        random.Random(1000 * rnd + r).shuffle(order)
        handles = {}
        for i in order:
            name, dt, shape, op, pre, post = specs[i]
            x = ints(i + 100 * r, shape, dt)
            handles[name] = cx.allreduce_async(x, op=op, name=name, prescale_factor=pre,
                                               postscale_factor=post)
        # the other collectives, also in rank-specific order
        others = ["bc", "ag", "rs", "a2a", "gr", "bar"]
        random.Random(7 + r + rnd).shuffle(others)
        for k in others:
            if k == "bc":
                handles[k] = cx.broadcast_async(ints(5 + r, (17,), np.int64), 1 % n, name="bc")
            elif k == "ag":
                handles[k] = cx.allgather_async(ints(6 + r, (r + 1, 3), np.float32), name="ag")
            elif k == "rs":
                handles[k] = cx.reducescatter_async(ints(8 + r, (2 * n + 1, 2), np.int64),
                                                    op=cx.Sum, name="rs")
            elif k == "a2a":
                handles[k] = cx.alltoall_async(ints(9 + r, (2 * n,), np.int32), name="a2a")
            elif k == "gr":
                handles[k] = cx.grouped_allreduce_async(
                    [ints(10 + r, (5,), np.float32), ints(11 + r, (7,), np.int64)],
                    op=cx.Sum, name="gr")
            else:
                handles[k] = cx.barrier_async()
        for i, (name, dt, shape, op, pre, post) in enumerate(specs):
            xs = [ints(i + 100 * s, shape, dt) * pre if pre != 1.0 else ints(i + 100 * s, shape, dt)
                  for s in range(n)]
            if op == cx.Sum:
                want = sum(xs)
            elif op == cx.Max:
                want = np.maximum.reduce(xs)
            else:                       # Average: only int32 here (truncates toward zero)
                want = np.trunc(sum(xs) / n)
            want = (want * post if post != 1.0 else want).astype(dt)
            got = handles[name].wait(T)
            ck.equal(f"round {rnd} {name} {np.dtype(dt).name} op={op}", got, want)
            digest.update(got.tobytes())
        got = handles["bc"].wait(T)
        ck.equal("broadcast", got, ints(5 + 1 % n, (17,), np.int64))
        got = handles["ag"].wait(T)
        ck.equal("allgather", got, np.concatenate([ints(6 + s, (s + 1, 3), np.float32) for s in range(n)]))
        got = handles["rs"].wait(T)
        full = sum(ints(8 + s, (2 * n + 1, 2), np.int64) for s in range(n))
        lo = r * 2 + min(r, 1)
        ck.equal("reducescatter", got, full[lo:lo + 2 + (1 if r < 1 else 0)])
        got = handles["a2a"].wait(T)
        ck.equal("alltoall", got, np.concatenate([ints(9 + s, (2 * n,), np.int32)[2 * r:2 * r + 2] for s in range(n)]))
        got = handles["gr"].wait(T)
        ck.equal("grouped 0", got[0], sum(ints(10 + s, (5,), np.float32) for s in range(n)))
        ck.equal("grouped 1", got[1], sum(ints(11 + s, (7,), np.int64) for s in range(n)))
        handles["bar"].wait(T)
        for k in ("bc", "ag"):                   # the same on every rank
            digest.update(handles[k].wait().tobytes())
        # random floats: the sum's rounding depends on the algorithm, but every rank must
        # hold the same bits
        xf = np.random.default_rng(r + 10 * rnd).standard_normal(1000).astype(np.float32)
        got = cx.allreduce(xf, op=cx.Sum, name="float.rand")
        want = sum(np.random.default_rng(s + 10 * rnd).standard_normal(1000).astype(np.float32)
                   for s in range(n))
        ck.true("float sum", np.allclose(got, want, rtol=1e-5, atol=1e-5))
        digest.update(got.tobytes())
        # int8 quantized allreduce through the negotiated engine: close, identical bits
        got = cx.quantized_allreduce(xf, op=cx.Sum, name="quant")
        bound = 0.05 * n * float(np.abs(want).max() + 4)
        ck.true("quantized sum", float(np.abs(got - want).max()) <= bound,
                f"{float(np.abs(got - want).max())} > {bound}")
        digest.update(got.tobytes())
    ck.cover("order")
    # a synchronous call and an unnamed one still work
    ck.equal("sync", cx.allreduce(np.full(4, r, np.int64), op=cx.Sum), np.full(4, n * (n - 1) // 2, np.int64))
    stats = dict(cx.api._engine.stats)
    stats["bell"] = cx.api._engine._bell is not None      # peers wake each other (wake.py)
    worker.say("DIGEST " + digest.hexdigest())
    worker.say("STATS " + json.dumps(stats))
    cx.shutdown()
    ck.finish(stats=stats)


def expect(ck: worker.Checker, what: str, fn, exc_type, *needles: str) -> str:
    try:
        fn()
    except exc_type as exc:
        msg = str(exc)
        for s in needles:
            ck.true(f"{what}: message names {s!r}", s in msg, msg)
        return msg
    except Exception as exc:  # noqa: BLE001
        ck.fail(what, f"raised {type(exc).__name__}: {exc}")
        return ""
    ck.fail(what, f"did not raise {exc_type.__name__}")
    return ""


def mode_mismatch(ck: worker.Checker) -> None:
    cx = start()
    r, n = cx.rank(), cx.size()
    ranks = str(list(range(n))[1:])
    expect(ck, "shape", lambda: cx.allreduce(np.ones(4 + (r > 0), np.float32), name="bad.shape"),
           cx.MismatchError, "bad.shape", "[0]", ranks, "shape")
    expect(ck, "dtype", lambda: cx.allreduce(np.ones(4, np.float32 if r else np.float64), name="bad.dtype"),
           cx.MismatchError, "bad.dtype", "float32", "float64")
    expect(ck, "op", lambda: cx.allreduce(np.ones(4), op=cx.Sum if r else cx.Max, name="bad.op"),
           cx.MismatchError, "bad.op", "Sum", "Max")
    expect(ck, "kind", lambda: (cx.allgather if r else cx.allreduce)(np.ones(4), name="bad.kind"),
           cx.MismatchError, "bad.kind", "allgather", "allreduce")
    # a cached tensor whose shape changes on one rank only
    for _ in range(2):
        cx.allreduce(np.ones(3), name="was.good")
    expect(ck, "cached then shape", lambda: cx.allreduce(np.ones(3 + (r == n - 1)), name="was.good"),
           cx.MismatchError, "was.good")
    # a name only this rank submits stays pending (a shared one could complete between the
    # two calls), until its own short timeout
    h = cx.allreduce_async(np.ones(2), name=f"dup.{r}", timeout=1.0)
    expect(ck, "duplicate name", lambda: cx.allreduce_async(np.ones(2), name=f"dup.{r}"),
           cx.InvalidUsage, f"dup.{r}", "already pending")
    expect(ck, "lone name times out", lambda: h.wait(T), cx.CollxTimeout, f"dup.{r}")
    if n > 1:
        expect(ck, "send", lambda: cx.send(np.ones(2), (r + 1) % n), cx.InvalidUsage,
               "ordered engine")
    ck.true("InvalidUsage is a ValueError", issubclass(cx.InvalidUsage, ValueError))
    ck.true("MismatchError is a RuntimeError", issubclass(cx.MismatchError, RuntimeError))
    ck.equal("after", cx.allreduce(np.full(3, r + 1.0), op=cx.Sum, name="after"),
             np.full(3, n * (n + 1) / 2))
    ck.cover("mismatch")
    cx.shutdown()
    ck.finish()


def mode_stall(ck: worker.Checker) -> None:
    cx = start()
    r, n = cx.rank(), cx.size()
    timeout = float(os.environ["COLLX_TIMEOUT"])
    if r == 0:
        t0 = time.monotonic()
        h = cx.allreduce_async(np.ones(3), name="lonely")
        expect(ck, "lonely", lambda: h.wait(3 * timeout), cx.CollxTimeout, "lonely",
               str(list(range(1, n))))
        waited = time.monotonic() - t0
        ck.true("timed out near COLLX_TIMEOUT", timeout - 0.5 <= waited <= timeout + 10, f"{waited:.1f}")
        expect(ck, "sync timeout=", lambda: cx.allreduce(np.ones(3), name="lonely.sync", timeout=1.0),
               cx.CollxTimeout, "lonely.sync")
    else:
        time.sleep(timeout + 2.5)
    ck.equal("after stall", cx.allreduce(np.full(2, 1.0), op=cx.Sum, name="after"), np.full(2, float(n)))
    ck.cover("stall")
    cx.shutdown()
    ck.finish()


def mode_join(ck: worker.Checker) -> None:
    cx = start()
    r, n = cx.rank(), cx.size()
    for i in range(r + 1):
        # ranks < i have joined (or are about to: readiness waits for them): they add zeros
        got = cx.allreduce(np.ones(5, np.float32), op=cx.Sum, name="step")
        ck.equal(f"step {i}", got, np.full(5, float(n - i), np.float32))
        if i >= 1:
            got = cx.allgather(np.full((2,), r, np.int64), name=f"ag.{i}")
            want = np.concatenate([np.full(2, s, np.int64) for s in range(i, n)])
            ck.equal(f"allgather with joined ranks, step {i}", got, want)
    last = cx.join(T)
    ck.true("join returns the last rank", last == n - 1, f"got {last}")
    # the engine works normally afterwards
    ck.equal("after join", cx.allreduce(np.ones(2), op=cx.Sum, name="after"), np.full(2, float(n)))
    ck.cover("join")
    cx.shutdown()
    ck.finish()


def mode_reinit(ck: worker.Checker) -> None:
    worker.arm_watchdog()
    import collx as cx
    for k, negotiate in enumerate([True, True, False, True]):
        cx.init(negotiate=negotiate)
        n, r = cx.size(), cx.rank()
        ck.equal(f"init {k}", cx.allreduce(np.full(3, r + k, np.int64), op=cx.Sum, name="x"),
                 np.full(3, sum(s + k for s in range(n)), np.int64))
        ck.true(f"engine {k}", cx.is_negotiated() == negotiate)
        cx.shutdown()
        ck.true(f"shut {k}", not cx.is_initialized())
    ck.cover("reinit")
    ck.finish()


def mode_timeline(ck: worker.Checker) -> None:
    cx = start()
    r = cx.rank()
    path = os.environ["COLLX_TIMELINE"]
    with cx.runtime.timeline.span("model", "BACKWARD"):
        hs = [cx.allreduce_async(np.ones(10, np.float32), name=f"g.{i}") for i in range(8)]
        for h in hs:
            h.wait(T)
    cx.broadcast(np.ones(4), 0, name="bc")
    cx.shutdown()
    if r == 0:
        with open(path) as f:
            events = json.load(f)
        names = {e["name"] for e in events}
        for phase in ("NEGOTIATE", "QUEUE", "FUSE", "ALLREDUCE", "UNFUSE", "BROADCAST", "BACKWARD"):
            ck.true(f"timeline has {phase}", phase in names, sorted(names))
        ar = [e for e in events if e["name"] == "ALLREDUCE"]
        ck.true("collective args", ar and {"algorithm", "transport"} <= set(ar[0].get("args", {})), ar[:1])
        rows = {e["args"]["name"] for e in events if e["name"] == "process_name"}
        ck.true("one row per tensor", {"g.0", "g.7", "bc"} <= rows, sorted(rows))
    ck.cover("timeline")
    ck.finish()


def mode_sets(ck: worker.Checker) -> None:
    cx = start()
    r, n = cx.rank(), cx.size()
    ps = cx.add_process_set([0, 1])
    ck.true("set id", ps.process_set_id == 1, repr(ps))
    if r in (0, 1):
        hs = [cx.allreduce_async(np.full(4, r + i, np.int64), op=cx.Sum, name=f"s.{i}", process_set=ps)
              for i in (range(5) if r == 0 else reversed(range(5)))]
        for i, h in enumerate(hs):
            j = i if r == 0 else 4 - i
            ck.equal(f"set allreduce {j}", h.wait(T), np.full(4, 1 + 2 * j, np.int64))
        ck.equal("set average", cx.allreduce(np.full(2, 2.0 * r), name="s.avg", process_set=ps),
                 np.full(2, 1.0))
    else:
        expect(ck, "non-member", lambda: cx.allreduce(np.ones(2), process_set=ps), cx.InvalidUsage,
               "not a member")
    ck.equal("global", cx.allreduce(np.full(2, 1.0), op=cx.Sum, name="glob"), np.full(2, float(n)))
    # Horovod: with process_set=, root_rank is a world rank (2 is the set's rank 1)
    ps2 = cx.add_process_set([1, 2])
    if r in (1, 2):
        ck.equal("set broadcast, world root", cx.broadcast(np.full(3, r, np.int64), 2, name="b2",
                                                            process_set=ps2), np.full(3, 2, np.int64))
        expect(ck, "root outside the set", lambda: cx.broadcast(np.ones(2), 0, process_set=ps2),
               cx.InvalidUsage, "root_rank=0", "not a member")
    cx.remove_process_set(ps2)
    cx.remove_process_set(ps)
    ck.cover("sets")
    cx.shutdown()
    ck.finish()


def mode_leave(ck: worker.Checker) -> None:
    cx = start()
    r = cx.rank()
    cx.allreduce(np.ones(2), name="warm")
    if r == 1:
        cx.shutdown()
        ck.finish()
        return
    t0 = time.monotonic()
    expect(ck, "orphan", lambda: cx.allreduce_async(np.ones(2), name="orphan").wait(T),
           cx.TransportError, "[1]", "shutdown")
    ck.true("fails fast", time.monotonic() - t0 < 10, f"{time.monotonic() - t0:.1f} s")
    expect(ck, "after leave", lambda: cx.allreduce(np.ones(2), name="later"), cx.CollxError, "[1]")
    cx.shutdown()
    ck.finish()


def leave_early(cx, ck: worker.Checker) -> None:
    """Shut down now and print how long shutdown() waited for the others (WAITED s)."""
    t0 = time.monotonic()
    cx.shutdown()
    worker.say(f"WAITED {time.monotonic() - t0:.3f}")
    ck.finish()


def mode_leave_sets(ck: worker.Checker) -> None:
    cx = start()
    r = cx.rank()
    ps = cx.add_process_set([0, 1])
    cx.allreduce(np.ones(2), name="warm")
    if r >= 2:
        return leave_early(cx, ck)
    time.sleep(1.0)                          # ranks 2 and 3 are in shutdown() by now
    for k in range(5):
        got = cx.allreduce(np.full(3, r + k, np.int64), op=cx.Sum, name=f"ps.{k}", process_set=ps)
        ck.equal(f"set allreduce {k} while ranks 2, 3 shut down", got, np.full(3, 1 + 2 * k, np.int64))
    t0 = time.monotonic()
    expect(ck, "global orphan", lambda: cx.allreduce(np.ones(2), name="glob"),
           cx.TransportError, "[2, 3]", "shutdown")
    ck.true("orphan fails fast", time.monotonic() - t0 < 5, f"{time.monotonic() - t0:.1f} s")
    ck.equal("set still works", cx.allreduce(np.full(2, 1.0), op=cx.Sum, name="ps.last", process_set=ps),
             np.full(2, 2.0))
    worker.say("MEMBERS DONE")
    cx.shutdown()
    ck.cover("leave_sets")
    ck.finish()


def mode_left(ck: worker.Checker) -> None:
    cx = start()
    r = cx.rank()
    cx.allreduce(np.ones(2), name="warm")
    if r == 1:                               # waits COLLX_TIMEOUT (3 s) for rank 0, then leaves
        return leave_early(cx, ck)
    time.sleep(6.0)
    expect(ck, "after the peer left", lambda: cx.allreduce(np.ones(2), name="late"),
           cx.TransportError, "[1]", "left")
    cx.shutdown()
    ck.cover("left")
    ck.finish()


def mode_mixed(ck: worker.Checker) -> None:
    cx = start(negotiate=(int(os.environ["COLLX_RANK"]) == 0))
    try:
        got = cx.allreduce(np.ones(4, np.int64), op=cx.Sum, name="x", timeout=5)
        ck.fail("mixed engines", f"no error; got {got}")
    except (cx.MismatchError, cx.CollxTimeout, cx.TransportError) as exc:
        worker.say(f"ERROR {type(exc).__name__}: {exc}")
    os._exit(0 if ck.failures == 0 else 1)


def mode_frozen(ck: worker.Checker) -> None:
    """COLLX_FREEZE_AFTER=2 (set by the test): a training-like loop freezes, stays exact,
    unfreezes on an op outside the schedule and on a shape change, freezes again."""
    cx = start()
    r, n = cx.rank(), cx.size()
    eng = cx.api._engine

    def step(i: int, shape=(6,), extra: bool = False) -> None:
        names = [f"grad.{j}" for j in range(5)]
        order = list(range(5))
        random.Random(i * 10 + r).shuffle(order)       # ranks submit in different orders
        hs = {}
        for j in order:
            hs[j] = cx.allreduce_async(np.full(shape, i + j + r, np.float32), op=cx.Sum,
                                       name=names[j])
        for j in range(5):
            want = np.full(shape, sum(i + j + s for s in range(n)), np.float32)
            ck.equal(f"step {i} grad {j}", hs[j].wait(T), want)
        if extra:                                       # not in the schedule
            ck.equal(f"step {i} metric", cx.allreduce(np.full(2, r + 1.0), op=cx.Sum,
                                                      name="metric"),
                     np.full(2, n * (n + 1) / 2))

    for i in range(6):
        step(i)
    frozen_groups = eng.stats["frozen_groups"]
    ck.true("froze", eng.stats["freezes"] >= 1 and frozen_groups >= 1, str(eng.stats))
    step(6, extra=True)                                # unfreezes (metric is not scheduled)
    ck.true("unfroze on an unknown tensor", eng.stats["unfreezes"] >= 1, str(eng.stats))
    for i in range(7, 12):
        step(i)
    ck.true("froze again", eng.stats["freezes"] >= 2, str(eng.stats))
    step(12, shape=(3, 2))                             # new keys: unfreeze, renegotiate
    for i in range(13, 16):
        step(i, shape=(3, 2))
    ck.true("several unfreezes", eng.stats["unfreezes"] >= 2, str(eng.stats))
    # while frozen, the last rank never submits grad.0: the grace wait unfreezes, the other
    # tensors complete, grad.0 times out on the others (negotiation names the rank)
    ck.true("frozen before the missing tensor", eng._frozen is not None, str(eng.stats))
    unfreezes = eng.stats["unfreezes"]
    hs = {j: cx.allreduce_async(np.ones((3, 2), np.float32), op=cx.Sum, name=f"grad.{j}")
          for j in range(5) if j or r != n - 1}
    for j, h in hs.items():
        if j:
            ck.equal(f"late step grad {j}", h.wait(T), np.full((3, 2), float(n), np.float32))
        else:
            expect(ck, "missing while frozen", lambda: h.wait(T), cx.CollxTimeout, "grad.0",
                   f"[{n - 1}]")
    ck.true("unfroze for the missing tensor", eng.stats["unfreezes"] == unfreezes + 1,
            str(eng.stats))
    if r == n - 1:
        time.sleep(float(os.environ["COLLX_TIMEOUT"]) + 1)
    ck.equal("after", cx.allreduce(np.ones(2), op=cx.Sum, name="after"), np.full(2, float(n)))
    worker.say("STATS " + json.dumps(eng.stats))
    ck.cover("frozen")
    cx.shutdown()                                      # leaves frozen mode first
    ck.finish()


def mode_review(ck: worker.Checker) -> None:
    cx = start()
    r, n = cx.rank(), cx.size()
    assert n == 3, n
    eng = cx.api._engine
    # 4: ranks 0, 1 pass process_set=P, rank 2 the global set: all three learn it
    P = cx.add_process_set([0, 1])
    # rank 2's global request is announced before ranks 0 and 1 submit theirs (a global
    # allreduce that needs all three sits between): otherwise P could legitimately complete
    # "psx" among its two members before rank 2's announcement arrives
    if r == 2:
        h = cx.allreduce_async(np.ones(3), name="psx")
        cx.allreduce(np.ones(1), name="psx-order")
        expect(ck, "set mismatch", lambda: h.wait(T), cx.MismatchError, "psx")
    else:
        cx.allreduce(np.ones(1), name="psx-order")
        expect(ck, "set mismatch", lambda: cx.allreduce(np.ones(3), name="psx", process_set=P),
               cx.MismatchError, "psx")
    # 5: rank 0 is in A and B; un-named calls are numbered per set
    A, B = cx.add_process_set([0, 2]), cx.add_process_set([1, 2])
    if r in (0, 2):
        ck.equal("noname on A", cx.allreduce(np.full(2, 1.0), op=cx.Sum, process_set=A),
                 np.full(2, 2.0))
    if r in (1, 2):
        ck.equal("noname on B", cx.allreduce(np.full(2, 10.0), op=cx.Sum, process_set=B),
                 np.full(2, 20.0))
        cx.barrier(process_set=B)
    if r in (0, 2):
        cx.barrier(process_set=A)
    # 3: a numpy integer block= is a plain int in the description
    xf = np.linspace(-1, 1, 300).astype(np.float32) * (r + 1)
    got = cx.quantized_allreduce(xf, op=cx.Sum, name="qblock", block=np.int64(64))
    ck.true("numpy block", float(np.abs(got - 6 * np.linspace(-1, 1, 300)).max()) < 0.2,
            str(got[:4]))
    # 1, 7, 9: rank 2 joins; its join times out and stays in force
    for _ in range(2):
        cx.broadcast(np.full(4, float(r)), 0, name="lr")
        cx.allreduce(np.full(2, r + 1.0), op=cx.Min, name="mn")
    if r == 2:
        expect(ck, "join timeout", lambda: cx.join(0.3), cx.CollxTimeout)
        expect(ck, "submit after a timed-out join", lambda: cx.allreduce(np.ones(2), name="x"),
               cx.InvalidUsage, "join")
        last = cx.join(T)
    else:
        time.sleep(1.0)                          # rank 2's joined flag is out
        expect(ck, "cached broadcast while joined", lambda: cx.broadcast(
            np.full(4, float(r)), 0, name="lr"), cx.InvalidUsage, "joined", "'lr'", "[2]")
        expect(ck, "cached Min while joined", lambda: cx.allreduce(
            np.full(2, r + 1.0), op=cx.Min, name="mn"), cx.InvalidUsage, "joined", "'mn'")
        expect(ck, "Max while joined", lambda: cx.allreduce(
            np.full(2, -1.0), op=cx.Max, name="mx"), cx.InvalidUsage, "joined", "'mx'")
        ck.equal("Sum while joined", cx.allreduce(np.ones(2), op=cx.Sum, name="sj"),
                 np.full(2, 2.0))
        last = cx.join(T)
    ck.true("join returns a rank that joined last", last in (0, 1), str(last))
    ck.equal("after join", cx.allreduce(np.ones(2), op=cx.Sum, name="after.join"),
             np.full(2, 3.0))
    # 8: rank 2's worker dies; ranks 0 and 1 fail at once instead of at COLLX_TIMEOUT
    t0 = time.monotonic()
    if r == 2:
        def boom(*args):
            raise RuntimeError("injected worker failure")
        eng.coord.process = boom
        expect(ck, "dead worker", lambda: cx.allreduce(np.ones(2), name="trigger"),
               cx.TransportError, "injected")
    else:
        expect(ck, "peer's worker died", lambda: cx.allreduce(np.ones(2), name="never"),
               cx.TransportError)
        waited = time.monotonic() - t0
        ck.true("peers fail fast", waited < 5.0, f"{waited:.1f} s")
    ck.cover("review")
    cx.shutdown()
    ck.finish()


def mode_killed(ck: worker.Checker) -> None:
    """Started by tests through mp.launch.Ranks (no collxrun): prints READY, then every rank
    but the victim (the last) waits on a tensor the victim never submits; the test SIGKILLs
    the victim; survivors print ``RAISED {json}`` and stay alive until released."""
    cx = start()
    r, n = cx.rank(), cx.size()
    cx.allreduce(np.ones(2), name="warm")
    worker.say("READY")
    if r == n - 1:
        time.sleep(600)
    t0 = time.time()
    try:
        cx.allreduce(np.ones(2), name="never")
        info = {"type": None}
    except Exception as exc:  # noqa: BLE001
        info = {"type": type(exc).__name__, "msg": str(exc)[:300]}
    info["at"] = time.time()
    info["waited"] = time.time() - t0
    worker.say("RAISED " + json.dumps(info))
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    mode = sys.argv[1]
    checker = worker.Checker(int(os.environ.get("COLLX_RANK", "0")))
    globals()[f"mode_{mode}"](checker)
