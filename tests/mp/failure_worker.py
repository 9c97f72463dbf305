"""Worker for failure injection (tests/test_mp_failures.py). Modes:

loop COUNT
    Allreduce COUNT float32 elements back to back until a collective raises. Prints
    ``READY`` after the first one, then ``RAISED {"type", "at" (time.time()), "msg"}`` when
    one raises, then calls allreduce once more and prints ``AGAIN {"type", "elapsed"}``
    (a broken communicator must fail fast), then blocks on stdin so that it stays alive
    (and keeps its connections open) until the test releases it.

selfkill COUNT OUTDIR VICTIM
    Every rank writes its pid to OUTDIR/pid<rank> and allreduces in a loop; rank VICTIM, on
    its 3rd iteration, SIGKILLs itself from a thread while the collective is in flight
    (printing ``KILLING <time.time()>`` first).

absent ABSENT TIMEOUT
    Every rank joins a barrier; then all but rank ABSENT call allreduce(timeout=TIMEOUT) and
    print ``RESULT {"type", "elapsed", "msg"}``; rank ABSENT never joins, and leaves once the
    others have reported (store keys) — so the others can only time out.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import numpy as np

import worker


def _describe(exc: BaseException | None) -> dict:
    if exc is None:
        return {"type": None, "msg": ""}
    return {"type": type(exc).__name__, "msg": str(exc)[:500]}


def loop(count: int) -> None:
    cx = worker.start()
    x = np.ones(count, np.float32)
    cx.allreduce(x, op=cx.Sum)
    worker.say("READY")
    error = None
    try:
        while True:
            cx.allreduce(x, op=cx.Sum)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        error = exc
    worker.say("RAISED " + json.dumps({**_describe(error), "at": time.time()}))
    t0 = time.monotonic()
    again = None
    try:
        cx.allreduce(np.ones(1000, np.float32), op=cx.Sum)
    except Exception as exc:  # noqa: BLE001
        again = exc
    worker.say("AGAIN " + json.dumps({**_describe(again), "elapsed": time.monotonic() - t0}))
    sys.stdin.read()          # stay alive, connections open, until the test releases us
    os._exit(0)


def selfkill(count: int, outdir: str, victim: int) -> None:
    cx = worker.start()
    rank = cx.rank()
    with open(os.path.join(outdir, f"pid{rank}.tmp"), "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.path.join(outdir, f"pid{rank}.tmp"), os.path.join(outdir, f"pid{rank}"))
    x = np.ones(count, np.float32)

    def die() -> None:
        time.sleep(0.02)      # the main thread is inside allreduce by now
        worker.say(f"KILLING {time.time()}")
        os.kill(os.getpid(), signal.SIGKILL)

    for i in range(1_000_000):
        if rank == victim and i == 3:
            threading.Thread(target=die, daemon=True).start()
        cx.allreduce(x, op=cx.Sum)


def absent(missing: int, timeout: float) -> None:
    cx = worker.start()
    rank, size = cx.rank(), cx.size()
    store = cx.communicator().store
    cx.barrier()
    if rank == missing:
        store.wait([f"reported/{r}" for r in range(size) if r != missing], timeout=30)
        worker.say("LEFT")
        os._exit(0)
    t0 = time.monotonic()
    error = None
    try:
        cx.allreduce(np.ones(1000, np.float32), op=cx.Sum, timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        error = exc
    worker.say("RESULT " + json.dumps({**_describe(error), "elapsed": time.monotonic() - t0}))
    store.set(f"reported/{rank}", b"1")
    os._exit(0)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "loop":
        loop(int(args[0]))
    elif mode == "selfkill":
        selfkill(int(args[0]), args[1], int(args[2]))
    elif mode == "absent":
        absent(int(args[0]), float(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")
