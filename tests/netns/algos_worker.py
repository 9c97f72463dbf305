"""Every registered algorithm of allreduce, broadcast, reduce, allgather and reducescatter,
one init/shutdown generation each with COLLX_ALGO forcing it, on network-namespace hosts:
exact against numpy on every rank; prints one line per algorithm with what the plans used
and, at the end, the host groups and transports this rank saw."""
import json
import os

import numpy as np

import collx
from collx.algos.registry import ALGORITHMS

OPS = ("allreduce", "broadcast", "reduce", "allgather", "reducescatter")
r_env, n_env = int(os.environ["COLLX_RANK"]), int(os.environ["COLLX_SIZE"])


def data(rank, rows, dtype, width=3):
    return ((np.arange(rows * width).reshape(rows, width) + 7 * rank) % 5).astype(dtype)


def check(op, r, n):
    for dtype in (np.float32, np.int64):
        for base in (0, 1, 7, 1000, 87383):
            if op == "allreduce":
                x = data(r, base, dtype)
                want = sum(data(q, base, dtype) for q in range(n)) if base else x
                assert np.array_equal(collx.allreduce(x, op=collx.Sum), want), (dtype, base)
                z = x.copy()
                collx.allreduce_(z, op=collx.Sum)
                assert np.array_equal(z, want), (dtype, base, "in place")
            elif op == "broadcast":
                for root in range(n):
                    y = collx.broadcast(data(r, base, dtype), root)
                    assert np.array_equal(y, data(root, base, dtype)), (dtype, base, root)
            elif op == "reduce":
                for root in range(n):
                    y = collx.reduce(data(r, base, dtype), root, op=collx.Sum)
                    if r == root and base:
                        assert np.array_equal(y, sum(data(q, base, dtype) for q in range(n)))
            elif op == "allgather":
                rows = [(base + 3 * q) % (base + 2) if base else q % 2 for q in range(n)]
                y = collx.allgather(data(r, rows[r], dtype))
                assert np.array_equal(y, np.concatenate([data(q, rows[q], dtype)
                                                         for q in range(n)])), (dtype, rows)
            elif op == "reducescatter":
                x = data(r, base, dtype)
                full = sum(data(q, base, dtype) for q in range(n)) if base else x
                part = np.array_split(np.arange(base), n)
                lo = sum(len(a) for a in part[:r])
                assert np.array_equal(collx.reducescatter(x, op=collx.Sum),
                                      full[lo:lo + len(part[r])]), (dtype, base)


for op in OPS:
    for algo in sorted(ALGORITHMS[op]):
        if algo == "pair" and n_env != 2:
            continue
        os.environ["COLLX_ALGO"] = f"{op}:{algo}"
        collx.init()
        r, n = collx.rank(), collx.size()
        check(op, r, n)
        comm = collx.communicator()
        used = sorted({p.algo for p in comm._plans.values() if p.key[0] == op})
        print("ALGO", op, algo, ",".join(used), comm.servers, flush=True)
        info = {"groups": comm.host_groups, "transports": comm.transports}
        collx.shutdown()
print("INFO", json.dumps(info), flush=True)
print("OK", r_env, flush=True)
