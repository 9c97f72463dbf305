"""Workers of a job with dedicated summation servers (collxrun --servers K): allreduce goes
through the servers (star) and is exact against numpy on every worker for several dtypes,
ops and awkward counts, in and out of place; the other collectives still work beside the
servers. argv[1] = number of init/shutdown generations; argv[2] = 'mismatch' makes worker 1
pass a different count (every worker must then fail, none may hang)."""
import sys
import time

import numpy as np

import worker

generations = int(sys.argv[1]) if len(sys.argv) > 1 else 1
mode = sys.argv[2] if len(sys.argv) > 2 else ""
collx = worker.start(60)
for gen in range(generations):
    if gen:
        collx.init(60)
    r, n = collx.rank(), collx.size()
    if mode == "mismatch":
        x = np.ones(1000 + (r == 1), np.float32)
        t0 = time.monotonic()
        try:
            collx.allreduce(x, op=collx.Sum, timeout=30)
            worker.say("NOERROR", r)
            sys.exit(0)
        except collx.CollxError as exc:
            worker.say("FAILED", r, type(exc).__name__, f"{time.monotonic() - t0:.2f}", str(exc))
        sys.exit(1)
    for dtype in (np.float32, np.int64, np.float64):
        for count in (0, 1, 2, 7, 1000, 262147, (1 << 20) + 3):
            x = ((np.arange(count) * 7 + r) % 11).astype(dtype)
            parts = [((np.arange(count) * 7 + q) % 11).astype(dtype) for q in range(n)]
            want = sum(parts) if count else x
            y = collx.allreduce(x, op=collx.Sum)
            assert np.array_equal(y, want), (gen, dtype, count)
            z = x.copy()
            collx.allreduce_(z, op=collx.Sum)
            assert np.array_equal(z, want), (gen, dtype, count, "in place")
            if count:
                assert np.array_equal(collx.allreduce(x, op=collx.Max),
                                      np.max(np.stack(parts), axis=0))
    x = np.full(5, float(r), np.float64)
    assert np.allclose(collx.allreduce(x, op=collx.Average), (n - 1) / 2)
    b = collx.broadcast(np.arange(10.0) if r == 0 else np.zeros(10), root_rank=0)
    assert np.array_equal(b, np.arange(10.0))
    g = collx.allgather(np.full((2, 3), r, np.int32))
    assert np.array_equal(g[:, 0], np.repeat(np.arange(n), 2))
    algos = sorted({p.algo for p in collx.communicator()._plans.values()
                    if p.key[0] == "allreduce"})
    servers = collx.communicator().servers
    collx.shutdown()
worker.say("OK", r, servers, ",".join(algos))
