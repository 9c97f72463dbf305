"""Ranks that wait in every way the executor can (spin, yield window, doorbell sleep) still
get exact results: mixed small and large collectives where one rank, chosen per round, is
late by 0, 0.1 or 20 ms (longer than any yield window: the others sleep on the doorbells
and must be woken by the late rank's messages). Prints the final OK line."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import worker  # noqa: E402

collx = worker.start()
rank, n = collx.rank(), collx.size()
chk = worker.Checker(rank)
LATE = (0.0, 1e-4, 0.02)
for rnd in range(24):
    late_rank, delay = rnd % n, LATE[rnd % len(LATE)]
    if rank == late_rank and delay:
        time.sleep(delay)
    count = (1, 1000, 300_001)[rnd % 3]
    x = np.arange(count, dtype=np.int64) + rank
    want = n * np.arange(count, dtype=np.int64) + n * (n - 1) // 2
    chk.equal(f"allreduce[{rnd}]", collx.allreduce(x, op=collx.Sum), want)
    chk.cover("allreduce")
    g = collx.allgather(np.full(rank + 1, rank, np.int32))
    chk.equal(f"allgather[{rnd}]", g, np.repeat(np.arange(n, dtype=np.int32),
                                                np.arange(1, n + 1)))
    chk.cover("allgather")
    b = collx.broadcast(np.full(count, rank, np.float32), late_rank)
    chk.equal(f"broadcast[{rnd}]", b, np.full(count, late_rank, np.float32))
    chk.cover("broadcast")
    collx.barrier()
    chk.cover("barrier")
collx.shutdown()
chk.finish()
