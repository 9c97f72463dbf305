"""A rank of the W-host x P-rank job that tests/test_netns.py starts with the netns launcher
(python -m collx.runner.netns): checks that the ranks of one emulated host share memory and
the others are reached over TCP, then allreduce (sum, max) against numpy on every rank."""
import os
import sys

import numpy as np

import collx

COUNTS = [0, 1, 7, 1000, 65537, 262147]
DTYPES = [np.float32, np.float64, np.int32, np.int64, np.uint8]


def data(rank: int, count: int, dtype) -> np.ndarray:
    return ((np.arange(count) * 7 + rank * 3) % 5).astype(dtype)


def fail(what: str) -> None:
    print(f"FAIL rank {collx.rank()}: {what}", flush=True)
    sys.exit(1)


def main() -> None:
    collx.init()
    r, n = collx.rank(), collx.size()
    per_host = int(os.environ["COLLX_LOCAL_SIZE"])
    comm = collx.communicator()
    want = {q: ("shm" if q // per_host == r // per_host else "tcp") for q in range(n) if q != r}
    if dict(comm.transports) != want:
        fail(f"transports {dict(comm.transports)} != {want}")
    if (collx.local_rank(), collx.local_size(), collx.cross_rank(), collx.cross_size()) != \
            (r % per_host, per_host, r // per_host, n // per_host):
        fail(f"locality {(collx.local_rank(), collx.local_size(), collx.cross_rank(), collx.cross_size())}")
    checked = 0
    for dtype in DTYPES:
        for count in COUNTS:
            ins = [data(q, count, dtype) for q in range(n)]
            got = collx.allreduce(ins[r], op=collx.Sum)
            if not np.array_equal(got, np.sum(ins, axis=0, dtype=dtype) if count else ins[r]):
                fail(f"allreduce sum {np.dtype(dtype).name} count={count}")
            got = collx.allreduce(ins[r], op=collx.Max)
            if not np.array_equal(got, np.maximum.reduce(ins)):
                fail(f"allreduce max {np.dtype(dtype).name} count={count}")
            checked += 2
    collx.barrier()
    print(f"OK rank {r} host {os.uname().nodename} addr {os.environ['COLLX_HOST_ADDR']} "
          f"allreduces {checked}", flush=True)
    collx.shutdown()


if __name__ == "__main__":
    main()
