"""Ranks on emulated hosts: argv[1] maps rank -> host name (e.g. "a,a,b,b"); COLLX_HOSTNAME
is set from it before init, so ranks on one name share memory and others talk tcp. Runs
allreduce (algorithm from COLLX_ALGO) exact against numpy on every rank and prints what the
rank saw: host groups, transports per peer, local/cross ranks, algorithms used."""
import json
import os
import sys

import numpy as np

hosts = sys.argv[1].split(",")
os.environ["COLLX_HOSTNAME"] = hosts[int(os.environ["COLLX_RANK"])]

import collx  # noqa: E402

collx.init()
r, n = collx.rank(), collx.size()
for dtype in (np.float32, np.int64):
    for count in (0, 1, 7, 1000, 262147, 1 << 21):
        x = ((np.arange(count) + r) % 7).astype(dtype)
        want = sum(((np.arange(count) + q) % 7).astype(dtype) for q in range(n)) if count else x
        y = collx.allreduce(x, op=collx.Sum)
        assert np.array_equal(y, want), (dtype, count)
        z = x.copy()
        collx.allreduce_(z, op=collx.Sum)
        assert np.array_equal(z, want), (dtype, count)
x = np.full(3, float(r), np.float64)
assert np.allclose(collx.allreduce(x, op=collx.Average), (n - 1) / 2)
comm = collx.communicator()
algo = sorted({p.algo for p in comm._plans.values() if p.key[0] == "allreduce"})
print("INFO", json.dumps({"rank": r, "groups": comm.host_groups, "transports": comm.transports,
                          "local": [collx.local_rank(), collx.local_size()],
                          "cross": [collx.cross_rank(), collx.cross_size()], "algos": algo}),
      flush=True)
collx.shutdown()
