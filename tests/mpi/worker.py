"""A rank started by mpirun: collx.init() must bootstrap from the MPI (mpi4py) and agree with
MPI about rank and size; then a real allreduce over collx's own transports."""
import sys

import numpy as np

import collx

collx.init()
from mpi4py import MPI  # noqa: E402  (after init: collx must not need the caller to import it)

world = MPI.COMM_WORLD
r, n = collx.rank(), collx.size()
assert (r, n) == (world.Get_rank(), world.Get_size()), ((r, n), world.Get_rank(), world.Get_size())
assert collx.local_size() == n and collx.local_rank() == r, (collx.local_rank(), collx.local_size())
x = np.arange(1000, dtype=np.float64) + r
want = np.arange(1000, dtype=np.float64) * n + n * (n - 1) / 2
if not np.array_equal(collx.allreduce(x, op=collx.Sum), want):
    print(f"FAIL rank {r}", flush=True)
    sys.exit(1)
assert set(collx.communicator().transports.values()) <= {"shm"}
print(f"OK mpi rank {r} of {n}", flush=True)
collx.shutdown()
