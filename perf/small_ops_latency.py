"""Latency of 8-to-32-byte collectives through the public API, for the idle-policy check.

    python3 perf/small_ops_latency.py --np 4 --yield-us 0,50 --rounds 2

Drives ``collxrun -np N`` once per (round, COLLX_YIELD_US value), interleaved; every job
times 2000 calls each of allreduce (C fast path and out=), broadcast, allgather,
reducescatter and barrier on rank 0 (after 50 untimed calls and a barrier) and prints one
line per job. With more ranks than cores (no spinning) COLLX_YIELD_US is how long a waiting
rank yields before it sleeps on the doorbells; 0 sleeps at once.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CALLS = 2000


def rank_main() -> None:
    import numpy as np
    import collx
    collx.init()
    x = np.ones(4, np.float32)
    o = np.empty(4, np.float32)
    rs = np.ones(8, np.float32)

    def t(f) -> float:
        for _ in range(50):
            f()
        collx.barrier()
        t0 = time.perf_counter()
        for _ in range(CALLS):
            f()
        return round((time.perf_counter() - t0) / CALLS * 1e6, 1)
    res = {
        "barrier": t(collx.barrier),
        "allreduce": t(lambda: collx.allreduce(x, op=collx.Sum)),
        "allreduce out=": t(lambda: collx.allreduce(x, op=collx.Sum, out=o)),
        "broadcast": t(lambda: collx.broadcast(x, 0)),
        "allgather": t(lambda: collx.allgather(x)),
        "reducescatter": t(lambda: collx.reducescatter(rs, op=collx.Sum)),
    }
    if collx.rank() == 0:
        print("RESULT " + json.dumps(res), flush=True)
    collx.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--np", type=int, default=4)
    p.add_argument("--yield-us", default="0,50", help="comma list of COLLX_YIELD_US values")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    for rnd in range(a.rounds):
        for y in a.yield_us.split(","):
            env = dict(os.environ, PYTHONPATH=REPO, COLLX_YIELD_US=y, COLLX_SMALL_OPS_RANK="1")
            out = subprocess.run([sys.executable, "-m", "collx.runner", "-np", str(a.np),
                                  "--no-prefix", sys.executable, os.path.abspath(__file__)],
                                 env=env, capture_output=True, text=True, timeout=300)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.stderr.write(out.stdout[-2000:] + out.stderr[-2000:])
                return 1
            res = json.loads(line[7:])
            print(f"round {rnd} np {a.np} COLLX_YIELD_US={y:>6}: "
                  + "  ".join(f"{k} {v} us" for k, v in res.items()), flush=True)
    return 0


if __name__ == "__main__":
    if os.environ.get("COLLX_SMALL_OPS_RANK"):
        rank_main()
    else:
        sys.exit(main())
