"""collx-server: a dedicated summation server for the ``star`` allreduce (BytePS-style).

Started beside the workers by ``collxrun --servers K`` (or by hand with the job's
COLLX_STORE_ADDR, COLLX_SECRET, COLLX_SIZE = workers, COLLX_SERVERS = K and
COLLX_SERVER_INDEX = k). It joins the job's mesh as rank COLLX_SIZE + k, then loops: wait
for worker 0's job descriptor (collx.runtime.servers), build the same star schedule as the
workers, reduce its shard of every worker's data and send the sum back. A STOP descriptor
(the workers' collx.shutdown) ends a generation; the server then waits for the next
collx.init of the workers, until the launcher sends SIGTERM (a normal end) or the store is
gone. A failure in the middle of a job is an error (exit 1); workers that vanish between
jobs end the generation (the workers report their own failure; after re-initializing
they find the server again).
"""
from __future__ import annotations

import sys
import time

from . import config
from .algos.registry import build_schedule
from .errors import CollxError, TransportError
from .runtime import servers
from .runtime.bootstrap import init_server_communicator
from .runtime.communicator import Communicator

IDLE_WAIT_S = 365 * 24 * 3600.0     # between jobs the server waits as long as the workers


def _log(index: int, message: str) -> None:
    sys.stderr.write(f"collx-server {index}: {message}\n")
    sys.stderr.flush()


class WorkersGone(Exception):
    """Worker 0 went away while the server waited between jobs."""


def serve(comm: Communicator) -> int:
    """Run jobs until STOP; returns the number of jobs served."""
    jobs = 0
    while True:
        try:
            desc = servers.recv_job(comm, IDLE_WAIT_S)
        except TransportError as exc:
            raise WorkersGone(str(exc)) from None
        cmd = int(desc[1])
        if cmd == servers.STOP:
            return jobs
        if cmd != servers.ALLREDUCE:
            raise CollxError(f"collx-server: unknown job {desc.tolist()} from worker 0")
        count, dtype, redop, chunk, itemsize = (int(v) for v in desc[2:7])
        plan = comm.plan(("allreduce", count, "star"), itemsize,
                         lambda: build_schedule("allreduce", comm.size, count=count,
                                                chunk_count=chunk, algo="star",
                                                servers=comm.servers))
        # AVERAGE travels as a sum; the workers divide, the server has no OUT to divide
        comm.execute(plan, None, None, dtype, redop, None)
        jobs += 1


def main(argv: list[str] | None = None) -> int:
    index = config.get("COLLX_SERVER_INDEX")
    if index is None:
        sys.stderr.write("collx-server: COLLX_SERVER_INDEX is not set; start servers with "
                         "collxrun --servers K\n")
        return 2
    generation = 0
    while True:
        try:
            # wait for the workers' (next) init as long as it takes: the launcher ends a
            # server with SIGTERM, and a vanished store ends it here
            comm = init_server_communicator(index, timeout=IDLE_WAIT_S if generation else None,
                                            wait=IDLE_WAIT_S)
        except (CollxError, OSError) as exc:
            if generation:      # the workers did not init again: the job is over
                return 0
            _log(index, f"could not join the job: {exc}")
            return 1
        generation += 1
        try:
            t0 = time.monotonic()
            jobs = serve(comm)
            if config.get("COLLX_DEBUG_C"):
                _log(index, f"generation {generation}: {jobs} jobs in "
                            f"{time.monotonic() - t0:.3f} s")
        except WorkersGone as exc:
            # between jobs: the workers left (their own errors say why), e.g. after an
            # error that broke their communicator: serve their next collx.init()
            _log(index, f"workers disconnected ({exc}); waiting for the next init")
        except CollxError as exc:
            _log(index, f"job failed: {exc}")
            return 1
        finally:
            comm.close()


if __name__ == "__main__":
    sys.exit(main())
