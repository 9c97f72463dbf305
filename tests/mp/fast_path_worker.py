"""Repeated allreduce calls (with out=, or without: a new result each time) take the C fast
path after the first validated call:
results must stay exact on every rank, and anything the first call did not validate (other
shapes, dtypes, ops, overlapping or read-only outputs, non-contiguous inputs) must still
get the Python path's InvalidUsage — before anything is sent."""
import sys

import numpy as np

import collx

collx.init()
r, n = collx.rank(), collx.size()
fails = []
for dtype in (np.float32, np.float64, np.int32, np.int8, np.float16):
    for count in (1, 3, 1000, 5000):
        x = np.empty(count, dtype)
        out = np.empty(count, dtype)
        for it in range(30):
            x[:] = (np.arange(count) + it + r) % 7
            want = sum(((np.arange(count) + it + q) % 7).astype(dtype) for q in range(n))
            got = collx.allreduce(x, op=collx.Sum, out=out)
            if got is not out or not np.array_equal(out, want):
                fails.append(f"sum {np.dtype(dtype).name} {count} it {it}")
            y = x.copy()
            collx.allreduce(y, op=collx.Max, out=y)                 # in place
            if not np.array_equal(y, np.maximum.reduce([((np.arange(count) + it + q) % 7).astype(dtype) for q in range(n)])):
                fails.append(f"max in place {np.dtype(dtype).name} {count} it {it}")
# without out=: each call a new result array, exact, through the fast path once validated
for it in range(30):
    x = np.full(33, r + it, np.int64)
    got = collx.allreduce(x, op=collx.Sum)
    prev = got if it == 0 else prev
    if got is x or not np.array_equal(got, np.full(33, sum(q + it for q in range(n)))):
        fails.append(f"no out= it {it}")
    if it and (got is prev or np.shares_memory(got, prev)):
        fails.append("no out=: a result array was reused")
    prev = got
for shape in ((4, 8), (32,)):                  # same bytes, other shapes: results keep x's shape
    got = collx.allreduce(np.ones(shape, np.float32), op=collx.Sum)
    if got.shape != shape or not np.array_equal(got, np.full(shape, float(n), np.float32)):
        fails.append(f"no out= shape {shape}: {got.shape}")
x = np.ones(8, np.float32)
out = np.empty(8, np.float32)
collx.allreduce(x, op=collx.Sum, out=out)                          # validated once
if collx.communicator().ccomm.allreduce_fast(x, out, collx.Sum) is not out:
    fails.append("the fast path did not take a validated call")     # so the loop above used it
if collx.communicator().ccomm.allreduce_fast(x, out, collx.Max) is not None:
    fails.append("the fast path took an op it never validated")
bad = {"shape": (x, np.empty((2, 4), np.float32)),
       "dtype": (x, np.empty(8, np.float64)),
       "readonly": (x, np.frombuffer(bytes(32), np.float32)),
       "overlap": (np.ones(9, np.float32)[:8], None),
       "noncontig": (np.ones(16, np.float32)[::2], out)}
for what, (a, o) in bad.items():
    if what == "overlap":
        base = np.ones(9, np.float32)
        a, o = base[:8], base[1:]
    try:
        collx.allreduce(a, op=collx.Sum, out=o)
        fails.append(f"{what} accepted")
    except collx.InvalidUsage as exc:
        if "collx" not in str(exc):
            fails.append(f"{what}: message {exc}")
z = collx.allreduce(np.full(4, r + 1.0), op=collx.Sum)            # the job still works
if not np.array_equal(z, np.full(4, n * (n + 1) / 2)):
    fails.append("after bad calls")
if fails:
    print("FAIL", r, fails[:5], flush=True)
    sys.exit(1)
print(f"OK rank {r}", flush=True)
collx.shutdown()
