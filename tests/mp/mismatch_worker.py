"""Worker: the ranks disagree about one call (tests/test_mismatch.py). Every rank makes its
own version of the call SCENARIO with a generous timeout= and prints
``RESULT {"type", "msg", "elapsed"}`` — type null when the call returned — then exits 0
without the goodbye barrier (the communicator is broken by then).

    python tests/mp/mismatch_worker.py SCENARIO
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

import worker

CALL_TIMEOUT = 20.0   # far above what a mismatch may take to surface: a hang shows as a timeout


def scenario(cx, name: str, rank: int):
    t = CALL_TIMEOUT
    f32 = np.arange(1000, dtype=np.float32)
    if name == "allreduce-vs-broadcast":
        return cx.allreduce(f32, op=cx.Sum, timeout=t) if rank == 0 else cx.broadcast(f32, 0, timeout=t)
    if name == "allreduce-vs-allgather":
        return cx.allreduce(f32, op=cx.Sum, timeout=t) if rank == 0 else cx.allgather(f32, timeout=t)
    if name == "allreduce-counts":
        return cx.allreduce(np.ones(1000 + (rank == 1), np.float32), op=cx.Sum, timeout=t)
    if name == "allreduce-counts-large":
        return cx.allreduce(np.ones((1 << 20) + 8 * (rank == 1), np.float32), op=cx.Sum, timeout=t)
    if name == "allreduce-dtypes":        # same item size: only the dtype differs
        return cx.allreduce(np.ones(1000, np.float32 if rank == 0 else np.int32), op=cx.Sum,
                            timeout=t)
    if name == "allreduce-ops":
        return cx.allreduce(f32, op=cx.Sum if rank == 0 else cx.Max, timeout=t)
    if name == "allgather-dtypes":        # first dims may differ, dtypes may not
        dt = np.float32 if rank == 0 else np.int32
        return cx.allgather(np.ones(10 + rank, dt), timeout=t)
    if name == "allgather-dtype-sizes":
        dt = np.float32 if rank == 0 else np.float64
        return cx.allgather(np.ones(10, dt), timeout=t)
    if name == "allgather-trailing-shape":
        return cx.allgather(np.ones((10, 4 + (rank == 1)), np.float32), timeout=t)
    if name in ("tags", "tags-large"):
        n = 100 if name == "tags" else 1 << 20     # eager path and the direct-read path
        if rank == 0:
            return cx.send(np.ones(n, np.float32), 1, tag=1, timeout=t)
        if rank == 1:
            return cx.recv(np.empty(n, np.float32), 0, tag=2, timeout=t)
        return None
    raise SystemExit(f"unknown scenario {name}")


def main() -> None:
    name = sys.argv[1]
    cx = worker.start()
    t0 = time.monotonic()
    try:
        scenario(cx, name, cx.rank())
        info = {"type": None, "msg": ""}
    except Exception as exc:  # noqa: BLE001 - reported to the test
        info = {"type": type(exc).__name__, "msg": str(exc)[:600]}
    info["elapsed"] = time.monotonic() - t0
    worker.say("RESULT " + json.dumps(info))
    os._exit(0)


if __name__ == "__main__":
    main()
