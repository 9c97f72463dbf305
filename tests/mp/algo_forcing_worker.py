"""COLLX_ALGO forcing under collxrun. Mode 'ring': allreduce:ring at 2 ranks for a small
message (the default would be pair) must use a ring plan and be exact. Mode 'pair': pair
forced at 3 ranks must be InvalidUsage naming the algorithm, before anything is sent, and
the job must then still work for calls the knob does not touch."""
import sys

import numpy as np

import collx

mode = sys.argv[1]
collx.init()
r, n = collx.rank(), collx.size()
comm = collx.communicator()
x = (np.arange(16) + r).astype(np.float32)
want = sum((np.arange(16) + q).astype(np.float32) for q in range(n))
fails = []
if mode == "ring":
    got = collx.allreduce(x, op=collx.Sum)
    if not np.array_equal(got, want):
        fails.append("allreduce result not exact")
    algos = {k[2]: p.algo for k, p in comm._plans.items() if k[0] == "allreduce"}
    if algos != {"ring": "ring"}:
        fails.append(f"allreduce plans {algos}, wanted only ring")
    if comm.forced_algo != {"allreduce": "ring"}:
        fails.append(f"forced_algo {comm.forced_algo}")
    b = collx.broadcast(x, 1)                          # untouched op: default algorithm
    if not np.array_equal(b, (np.arange(16) + 1).astype(np.float32)):
        fails.append("broadcast wrong")
elif mode == "pair":
    try:
        collx.allreduce(x, op=collx.Sum)
        fails.append("forced pair at 3 ranks did not raise")
    except collx.InvalidUsage as exc:
        msg = str(exc)
        if "algorithm pair (forced by COLLX_ALGO) does not support" not in msg:
            fails.append(f"message: {msg}")
    if any(k[0] == "allreduce" for k in comm._plans):
        fails.append("a plan was cached for the refused call")
    # the job still works: a collective the knob does not force
    got = collx.allgather(x)
    if not np.array_equal(got, np.concatenate([(np.arange(16) + q).astype(np.float32)
                                               for q in range(n)])):
        fails.append("allgather after the refusal wrong")
    collx.barrier()
print("FAIL " + "; ".join(fails) if fails else "OK forced", flush=True)
sys.exit(1 if fails else 0)
