"""Process sets on real ranks (run by tests/test_process_sets.py), at the runtime layer:
collx/runtime/process_sets.py's table, ops.prepare_* on ``table.comm_for(ps)``, and
quantize.prepare_quantized_allreduce. Every result is compared with numpy on every member.

Scenarios (argv[1]):
  sets   (np 4) sets {0,1}, {2,3}, {1,2,3}, {3,0} and {2} run every collective, one set
         after the other in program order (disjoint sets run at the same time); Average
         divides by the set's size; a non-member's comm_for is InvalidUsage; the world's
         allreduce (fast path included) is still exact after sets ran allreduces of the
         same bytes with out=; remove then add again; duplicate → InvalidUsage; ranks that
         disagree on add → MismatchError on every rank, the world still works afterwards.
  hosts  (np 4, argv[2] maps rank -> emulated host, e.g. "a,b,a,b"; COLLX_ALGO from the
         test) sets see the world's host groups restricted to them (set ranks), their
         local/cross ranks, a Selector of their own; allreduce exact with the forced algo.
  crossed (np 2, argv[2] = case) ranks disagree across sets: rank 0 runs a call on the set
         {0,1}, rank 1 the same call on the world (or a quantized allreduce with another
         block size); prints RESULT {type, msg, elapsed} and exits without the goodbye.
  quant  (any np) the quantized allreduce over the world and (np >= 3) over a set: within
         the bound of collx/runtime/quantize.py's docstring of the float64 sum, bitwise
         identical on every rank.
"""
from __future__ import annotations

import os
import sys
import zlib

import numpy as np

import worker
from worker import Checker, say

SCENARIO = sys.argv[1]
if SCENARIO == "hosts":
    HOSTS = sys.argv[2].split(",")
    os.environ["COLLX_HOSTNAME"] = HOSTS[int(os.environ["COLLX_RANK"])]
collx = worker.start()
from collx import _C  # noqa: E402
from collx.algos.registry import even_split  # noqa: E402
from collx.runtime import ops, process_sets  # noqa: E402
from collx.runtime.quantize import prepare_quantized_allreduce  # noqa: E402

world = collx.communicator()
W, N = world.rank, world.size
table = process_sets.current_table() or process_sets.ProcessSetTable(world)
chk = Checker(W)
COUNTS = [0, 1, 7, 1000, 100003]


def data(w: int, salt: int, count: int, dtype=np.float64) -> np.ndarray:
    """Small integers: sums and products stay exact in every dtype used here."""
    return ((np.arange(count) * 7 + w * 13 + salt) % 11 - 3).astype(dtype)


def expect_error(what: str, exc_type: type, fn, *words: str) -> None:
    try:
        fn()
    except exc_type as exc:
        msg = str(exc)
        chk.true(what, all(w in msg for w in words), f"message {msg!r} lacks {words}")
        return
    except Exception as exc:  # noqa: BLE001
        chk.fail(what, f"raised {type(exc).__name__}: {exc}")
        return
    chk.fail(what, f"no {exc_type.__name__}")


def run_set(ps, salt: int) -> None:
    """Every collective on ``ps`` (this rank a member), checked against numpy."""
    comm = table.comm_for(ps)
    ranks, n, me = ps.ranks, len(ps.ranks), ps.rank()
    tag = f"set{ranks}"
    chk.true(f"{tag} size/rank", comm.size == n and comm.rank == me == ranks.index(W))
    for count in COUNTS:
        xs = [data(w, salt + count, count) for w in ranks]
        x = xs[me]
        total = np.sum(xs, axis=0) if count else np.zeros(0)
        chk.equal(f"{tag} allreduce Sum {count}",
                  ops.prepare_allreduce(comm, x, _C.SUM, None, None)(), total)
        chk.equal(f"{tag} allreduce Average {count}",
                  ops.prepare_allreduce(comm, x, _C.AVERAGE, None, None)(), total / n)
        out = np.empty(count, np.float32)          # out=: a world call would register fast
        got = ops.prepare_allreduce(comm, x.astype(np.float32), _C.MAX, out, None)()
        chk.equal(f"{tag} allreduce Max out= {count}", got,
                  np.max(xs, axis=0).astype(np.float32) if count else np.zeros(0, np.float32))
        root = n - 1
        chk.equal(f"{tag} broadcast {count}",
                  ops.prepare_broadcast(comm, x, root, None, None)(), xs[root])
        rows = [(w + count) % 3 for w in ranks]     # zeros included
        mine = np.full((rows[me], 2), W + count, np.int32)
        want = np.concatenate([np.full((rows[i], 2), w + count, np.int32)
                               for i, w in enumerate(ranks)])
        chk.equal(f"{tag} allgather {count}", ops.prepare_allgather(comm, mine, None, None)(),
                  want)
        got = ops.prepare_gather(comm, mine, 0, None)()
        if me == 0:
            chk.equal(f"{tag} gather {count}", got, want)
        else:
            chk.true(f"{tag} gather non-root {count}", got is None)
        if count:
            split = even_split(count, n)
            lo = sum(split[:me])
            chk.equal(f"{tag} reducescatter {count}",
                      ops.prepare_reducescatter(comm, x, _C.SUM, None)(),
                      total[lo:lo + split[me]])
            got = ops.prepare_reduce(comm, x, min(1, n - 1), _C.SUM, None, None)()
            if me == min(1, n - 1):
                chk.equal(f"{tag} reduce {count}", got, total)
            chk.equal(f"{tag} scatter {count}", ops.prepare_scatter(comm, x, 0, None, None)(),
                      xs[0][lo:lo + split[me]])
        # alltoall: rank i sends (i + d + count) % 3 rows to set rank d, values (i, d)
        send = [(i_ + d + count) % 3 for i_ in range(n) for d in range(n)]
        sends = np.array(send).reshape(n, n)
        blk = np.concatenate([np.full(sends[me, d], 100 * me + d, np.int64) for d in range(n)])
        got, recv_rows = ops.prepare_alltoall(comm, blk, sends[me].tolist(), None)()
        want = np.concatenate([np.full(sends[s, me], 100 * s + me, np.int64) for s in range(n)])
        chk.equal(f"{tag} alltoall {count}", got, want)
        chk.equal(f"{tag} alltoall rows {count}", recv_rows, sends[:, me].astype(np.int64))
    ops.prepare_barrier(comm, None)()
    if n > 1:                                      # a ring of send/recv in set ranks
        right, left = (me + 1) % n, (me - 1) % n
        buf = np.empty(5, np.int64)
        if me % 2 == 0:
            ops.prepare_send(comm, np.full(5, W, np.int64), right, 3, None)()
            ops.prepare_recv(comm, buf, left, 3, None)()
        else:
            ops.prepare_recv(comm, buf, left, 3, None)()
            ops.prepare_send(comm, np.full(5, W, np.int64), right, 3, None)()
        chk.equal(f"{tag} send/recv", buf, np.full(5, ranks[left], np.int64))
    chk.cover(tag)


def world_checks(salt: int) -> None:
    """The world's collectives, its allreduce fast path included, still exact."""
    for count in (7, 1000):
        x = data(W, salt, count).astype(np.float32)
        out = np.empty(count, np.float32)
        want = np.max([data(w, salt, count) for w in range(N)], axis=0).astype(np.float32)
        for it in range(3):                        # the 2nd and 3rd take the C fast path
            chk.equal(f"world allreduce Max out= {count} it {it}",
                      collx.allreduce(x, op=collx.Max, out=out), want)
        if N > 1:
            chk.true("world fast path taken",
                     world.ccomm.allreduce_fast(x, out, collx.Max) is out)
            chk.equal("world fast result", out, want)
        chk.equal(f"world allreduce Sum {count}", collx.allreduce(x, op=collx.Sum),
                  np.sum([data(w, salt, count) for w in range(N)], axis=0).astype(np.float32))
    chk.equal("world allgather", collx.allgather(np.array([W])), np.arange(N))


def scenario_sets() -> None:
    assert N == 4, "the sets scenario runs on 4 ranks"
    chk.true("global set", process_sets.global_process_set.ranks == [0, 1, 2, 3]
             and process_sets.global_process_set.process_set_id == 0
             and table.comm_for(None) is world
             and table.comm_for(process_sets.global_process_set) is world)
    specs = [[0, 1], [2, 3], [1, 2, 3], [3, 0], [2]]
    sets = [table.add(r) for r in specs]
    ids = [ps.process_set_id for ps in sets]
    chk.true("ids", ids == [1, 2, 3, 4, 5], f"ids {ids}")
    chk.true("sorted ranks", sets[3].ranks == [0, 3], f"{sets[3]!r}")
    for ps in sets:
        chk.true(f"{ps!r} included/rank/size", ps.included() == (W in ps.ranks)
                 and ps.rank() == (ps.ranks.index(W) if W in ps.ranks else -1)
                 and ps.size() == len(ps.ranks))
        if W not in ps.ranks:
            expect_error(f"{ps!r} non-member", collx.InvalidUsage,
                         lambda ps=ps: table.comm_for(ps), f"rank {W}", str(ps.ranks))
    # every collective, set after set in one program order (disjoint sets concurrently)
    for k, ps in enumerate(sets):
        if ps.included():
            run_set(ps, 10 * k)
    # quantized allreduce on a set: Average divides by its size
    c = sets[2]
    if c.included():
        x = np.full(300, float(W + 1), np.float32)
        got = prepare_quantized_allreduce(table.comm_for(c), x, _C.AVERAGE, None, None)()
        want = np.mean([w + 1.0 for w in c.ranks])
        chk.true("quantized Average on set", np.abs(got - want).max() <= want / 100,
                 f"{got[:4]} want {want}")
    world_checks(1)
    # remove then add again (a new id; the old object is unregistered)
    chk.true("remove", table.remove(sets[2]) is True and sets[2].process_set_id is None)
    expect_error("removed comm_for", collx.InvalidUsage, lambda: table.comm_for(sets[2]),
                 "not registered")
    again = table.add(collx_ps([1, 2, 3]))
    chk.true("re-add id", again.process_set_id == 6, f"{again!r}")
    if again.included():
        run_set(again, 77)
    chk.true("remove global", table.remove(process_sets.global_process_set) is False)
    expect_error("duplicate", collx.InvalidUsage, lambda: table.add([0, 1]), "already")
    expect_error("outside the world", collx.InvalidUsage, lambda: table.add([0, 4]),
                 "beyond")
    # ranks disagree: every rank raises MismatchError naming what each passed
    expect_error("disagree", collx.MismatchError,
                 lambda: table.add([0, 1] if W < 2 else [0, 2]), "rank 0: [0, 1]",
                 "rank 3: [0, 2]")
    expect_error("disagree, one invalid", collx.MismatchError,       # rows of other lengths
                 lambda: table.add(["x"] if W == 0 else [1, 2]), "rank 0: [] (invalid)",
                 "rank 1: [1, 2]")
    expect_error("disagree remove", collx.MismatchError,
                 lambda: table.remove(sets[0] if W == 0 else sets[1]), "rank 0: id 1",
                 "rank 1: id 2")
    chk.true("after disagreement", len(table.sets()) == 6, f"{table.sets()}")
    world_checks(2)
    for ps in (sets[0], sets[1], sets[3], sets[4], again):
        table.remove(ps)
    chk.true("all removed", [p.process_set_id for p in table.sets()] == [0])
    world_checks(3)


def collx_ps(ranks):
    return process_sets.ProcessSet(ranks)


QDTYPES = [np.float16, np.float32, np.float64]
QCOUNTS = [0, 1, 5, 63, 64, 65, 1000, 4099, 20011]
U = {np.float16: 2.0 ** -11, np.float32: 2.0 ** -24, np.float64: 2.0 ** -53}


def qdata(kind: str, w: int, count: int, dtype, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, w, count])
    big = {np.float16: 1e4 / N, np.float32: 1e30, np.float64: 1e38}[dtype]
    if kind == "normal":
        x = rng.standard_normal(count)
    elif kind == "large":
        x = rng.uniform(-big, big, count)
    elif kind == "zeros":
        x = np.zeros(count)
    elif kind == "equal":                          # one whole block of one value
        x = rng.standard_normal(count)
        x[:64] = 3.25 + w
    else:                                          # mixed: one huge value per block
        x = rng.standard_normal(count) * 1e-3
        x[::64] = 1e3
    return x.astype(dtype)


def check_quant(comm, ranks, what: str) -> None:
    n = len(ranks)
    hashes = []
    for dtype in QDTYPES:
        for count in QCOUNTS:
            for kind in ("normal", "large", "zeros", "equal", "mixed"):
                for op, block in ((_C.SUM, 64), (_C.AVERAGE, 32), (_C.SUM, 256)):
                    seed = count * 7 + block
                    xs = [qdata(kind, w, count, dtype, seed) for w in ranks]
                    x = xs[comm.rank].copy()
                    got = prepare_quantized_allreduce(comm, x, op, None, None, block=block)()
                    exact = np.sum([a.astype(np.float64) for a in xs], axis=0)
                    nb = -(-count // block)
                    pad = lambda a: np.abs(np.concatenate(  # noqa: E731
                        [a.astype(np.float64), np.zeros(nb * block - count)]))
                    msum = sum(pad(a).reshape(nb, block).max(axis=1) for a in xs) \
                        if count else np.zeros(0)
                    m_el = np.repeat(msum, block)[:count]
                    div = n if op == _C.AVERAGE else 1
                    bound = (1 + 2.0 ** -6) * m_el / div / 127 + 2 * U[dtype] * np.abs(exact / div)
                    err = np.abs(got.astype(np.float64) - exact / div)
                    tag = f"{what} {np.dtype(dtype).name} {count} {kind} op{op} B{block}"
                    ok = got.dtype == dtype and got.shape == x.shape and bool(
                        np.all(err <= bound))
                    if not ok:
                        i = int(np.argmax(err - bound)) if count else 0
                        chk.fail(tag, f"dtype {got.dtype}; at {i}: err {err[i] if count else 0} "
                                 f"> bound {bound[i] if count else 0}")
                    else:
                        chk.checks += 1
                    hashes.append(zlib.crc32(got.tobytes()))
    chk.cover(what)
    # bitwise identical on every member: every member's hashes must equal
    mine = np.array(hashes, np.int64)
    allh = ops.prepare_allgather(comm, mine, None, None)().reshape(n, -1)
    chk.true(f"{what} bitwise identical", bool((allh == allh[0]).all()),
             f"differing cases: {np.flatnonzero((allh != allh[0]).any(axis=0))[:5]}")


def scenario_quant() -> None:
    check_quant(world, list(range(N)), f"quant np{N}")
    if N >= 3:
        ps = table.add([0, N - 1])
        if ps.included():
            check_quant(table.comm_for(ps), ps.ranks, "quant set")
        table.remove(ps)
    world_checks(5)


def scenario_hosts() -> None:
    forced = os.environ.get("COLLX_ALGO", "").split(":")[-1]
    for ranks in ([0, 1], [1, 2, 3], [0, 3], [0, 2], [0, 1, 2, 3]):
        ps = table.add(ranks)
        if ps.included():
            comm = table.comm_for(ps)
            order = list(dict.fromkeys(HOSTS[w] for w in ranks))
            groups = [[i for i, w in enumerate(ranks) if HOSTS[w] == h] for h in order]
            me = ps.rank()
            mine = groups[order.index(HOSTS[W])]
            chk.true(f"{ranks} groups", comm.host_groups == groups, f"{comm.host_groups}")
            chk.true(f"{ranks} local/cross",
                     (comm.local_rank, comm.local_size, comm.cross_rank, comm.cross_size)
                     == (mine.index(me), len(mine), order.index(HOSTS[W]), len(order)))
            chk.true(f"{ranks} selector", (comm.selector is None) == (world.selector is None)
                     and (comm.selector is None or comm.selector.n == len(ranks)))
            chk.true(f"{ranks} transports", all(
                comm.transports[i] == ("shm" if HOSTS[w] == HOSTS[W] else "tcp")
                for i, w in enumerate(ranks) if w != W), f"{comm.transports}")
            for count in (0, 7, 1000, 262147):
                xs = [data(w, count, count) for w in ranks]
                chk.equal(f"{ranks} allreduce {count}",
                          ops.prepare_allreduce(comm, xs[me], _C.SUM, None, None)(),
                          np.sum(xs, axis=0) if count else np.zeros(0))
            algos = sorted({p.algo for p in comm._plans.values() if p.key[0] == "allreduce"})
            chk.true(f"{ranks} algo", not forced or algos in ([forced], ["hier_leader"]),
                     f"{algos}")
            chk.cover(f"hosts{ranks}")
        table.remove(ps)
    world_checks(9)


def scenario_crossed() -> None:
    import json
    import time
    case = sys.argv[2]
    ps = table.add([0, 1])
    x = np.arange(1000, dtype=np.float32)
    comm = table.comm_for(ps) if W == 0 else world
    t0 = time.monotonic()
    try:
        if case == "allreduce":
            ops.prepare_allreduce(comm, x, _C.SUM, None, 20.0)()
        elif case == "allgather":
            ops.prepare_allgather(comm, x, None, 20.0)()
        else:                                      # quantized: block 64 vs 32
            prepare_quantized_allreduce(table.comm_for(ps), x, _C.SUM, None, 20.0,
                                        block=64 if W == 0 else 32)()
        res = {"type": None, "msg": ""}
    except Exception as exc:  # noqa: BLE001
        res = {"type": type(exc).__name__, "msg": str(exc)}
    res["elapsed"] = time.monotonic() - t0
    say("RESULT " + json.dumps(res))
    sys.stdout.flush()
    os._exit(0)


{"sets": scenario_sets, "quant": scenario_quant, "hosts": scenario_hosts,
 "crossed": scenario_crossed}[SCENARIO]()
collx.shutdown()
chk.finish()
