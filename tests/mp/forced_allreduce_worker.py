"""Allreduce with the algorithm forced by COLLX_ALGO, on real ranks: exact against numpy on
every rank, out of place and in place, for several dtypes and awkward counts; prints the
algorithms its plans used so the test can check the forcing took effect."""
import numpy as np

import collx

collx.init()
r, n = collx.rank(), collx.size()
for dtype in (np.float32, np.int64, np.float16):
    for count in (0, 1, 7, 1000, 262147):
        x = ((np.arange(count) + r) % 5).astype(dtype)
        want = sum(((np.arange(count) + q) % 5).astype(dtype) for q in range(n)) if count else x
        for op in (collx.Sum,):
            y = collx.allreduce(x, op=op)
            assert np.array_equal(y, want), (dtype, count)
            z = x.copy(); collx.allreduce_(z, op=op); assert np.array_equal(z, want)
algo = {p.algo for p in collx.communicator()._plans.values() if p.key[0] == "allreduce"}
print("OK", r, ",".join(sorted(algo)), flush=True)
collx.shutdown()
