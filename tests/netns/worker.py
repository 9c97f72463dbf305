"""A rank of the two-host job in tests/test_netns.py: every collective over TCP between
network-namespace hosts, checked against numpy on every rank."""
import os
import sys

import numpy as np

import collx

COUNTS = [0, 1, 7, 1000, 262147, 4 * 1024 * 1024 + 3]
DTYPES = [np.float32, np.float64, np.int8, np.int64, np.float16, np.uint8, np.int32]


def data(rank: int, count: int, dtype) -> np.ndarray:
    return ((np.arange(count) * 7 + rank * 3) % 5).astype(dtype)


def check(what: str, got, want) -> None:
    if not np.array_equal(np.asarray(got), np.asarray(want)):
        bad = np.flatnonzero(np.asarray(got).reshape(-1) != np.asarray(want).reshape(-1))
        print(f"FAIL {what} rank {collx.rank()} first bad index {bad[:3]}", flush=True)
        sys.exit(1)


def main() -> None:
    collx.init()
    r, n = collx.rank(), collx.size()
    comm = collx.communicator()
    assert set(comm.transports.values()) == {"tcp"}, comm.transports
    assert (collx.cross_size(), collx.local_size(), collx.cross_rank()) == (n, 1, r), \
        (collx.cross_size(), collx.local_size(), collx.cross_rank())
    for dtype in DTYPES:
        for count in COUNTS:
            ins = [data(q, count, dtype) for q in range(n)]
            tag = f"{np.dtype(dtype).name} count={count}"
            check(f"allreduce sum {tag}", collx.allreduce(ins[r], op=collx.Sum),
                  sum(ins[1:], ins[0].copy()) if n > 1 else ins[0])
            check(f"allreduce max {tag}", collx.allreduce(ins[r], op=collx.Max),
                  np.maximum.reduce(ins))
            check(f"broadcast {tag}", collx.broadcast(ins[r], n - 1), ins[n - 1])
            check(f"allgather {tag}", collx.allgather(ins[r]), np.concatenate(ins))
            got = collx.reducescatter(ins[r], op=collx.Min)
            full = np.minimum.reduce(ins)
            split = np.array_split(full, n)   # first count % n parts get one extra
            check(f"reducescatter {tag}", got, split[r])
            m = (count // n) * n
            a = collx.alltoall(ins[r][:m])
            want = np.concatenate([np.array_split(ins[q][:m], n)[r] for q in range(n)])
            check(f"alltoall {tag}", a, want)
            red = collx.reduce(ins[r], root_rank=0, op=collx.Sum)
            if r == 0:
                check(f"reduce {tag}", red, sum(ins[1:], ins[0].copy()))
            g = collx.gather(ins[r], root_rank=n - 1)
            if r == n - 1:
                check(f"gather {tag}", g, np.concatenate(ins))
            check(f"scatter {tag}", collx.scatter(ins[0], root_rank=0), np.array_split(ins[0], n)[r])
    collx.barrier()
    print(f"OK rank {r} host {os.uname().nodename}", flush=True)
    collx.shutdown()


if __name__ == "__main__":
    main()
