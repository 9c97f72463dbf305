"""The job protocol between the workers and the dedicated summation servers (collx.server).

A server owns no user data and does not run the user's program, so it cannot know which
collective comes next. Before every collective that involves the servers, worker 0 sends
each server one 64-byte job descriptor (``JOB_WORDS`` int64: magic, command, count, dtype,
reduction op, chunk count, item size, sequence number); the server builds the same schedule
from it as the workers did (same plan key, so the same fingerprint travels with every
message: workers that disagree with worker 0 still get MismatchError) and runs its part.
The descriptor is an eager message that worker 0 sends right before its own part, so it
costs one small message hop, overlapped with the workers' pushes. ``STOP`` ends a
generation (the workers' collx.shutdown()).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _C
from ..algos.ir import Buf, Kind, Schedule, Step
from .communicator import Communicator

MAGIC = 0x636F6C6C78535256          # "collxSRV"
JOB_WORDS = 8
STOP, ALLREDUCE = 0, 1
_KEY = ("server-job", JOB_WORDS)


def job_schedule(workers: int, servers: int) -> Schedule:
    """Worker 0 sends its IN (one descriptor) to every server's OUT; nobody else moves."""
    n = workers + servers
    steps: list[list[Step]] = [[] for _ in range(n)]
    steps[0] = [Step(Kind.SEND, Buf.IN, 0, JOB_WORDS, workers + k, Buf.IN, 0, ())
                for k in range(servers)]
    for k in range(servers):
        steps[workers + k] = [Step(Kind.RECV, Buf.OUT, 0, JOB_WORDS, 0, Buf.IN, 0, ())]
    in_counts = [JOB_WORDS] + [0] * (n - 1)
    out_counts = [0] * workers + [JOB_WORDS] * servers
    return Schedule("server-job", "direct", n, steps, in_counts, out_counts)


def _job_plan(comm: Communicator):
    return comm.plan(_KEY, 8, lambda: job_schedule(comm.size, comm.servers))


def send_job(comm: Communicator, words: list[int], timeout: float | None) -> None:
    """Worker 0: hand every server the next job (a no-op on other workers)."""
    if comm.rank != 0 or not comm.servers:
        return
    desc = np.array([MAGIC] + list(words) + [0] * (JOB_WORDS - 1 - len(words)), dtype=np.int64)
    comm.execute(_job_plan(comm), desc, None, _C.INT64, _C.SUM, timeout)


def recv_job(comm: Communicator, timeout: float) -> np.ndarray:
    """Server: wait for worker 0's next descriptor (raises TransportError if it left)."""
    desc = np.zeros(JOB_WORDS, dtype=np.int64)
    comm.execute(_job_plan(comm), None, desc, _C.INT64, _C.SUM, timeout)
    if int(desc[0]) != MAGIC:
        raise RuntimeError(f"collx-server: bad job descriptor {desc.tolist()} from worker 0")
    return desc


def allreduce_job_words(count: int, dtype: int, redop: int, chunk_count: int,
                        itemsize: int) -> list[int]:
    return [ALLREDUCE, count, dtype, redop, chunk_count, itemsize]


def stop_servers(comm: Communicator, timeout: float) -> None:
    """Worker 0 at shutdown: end this generation on every server."""
    send_job(comm, [STOP], timeout)


def describe(desc: Any) -> str:
    cmd = int(desc[1])
    if cmd == STOP:
        return "stop"
    code = int(desc[3])
    name = _C.DTYPE_NAMES[code] if 0 <= code < len(_C.DTYPE_NAMES) else str(code)
    return f"allreduce count={int(desc[2])} dtype={name} op={int(desc[4])} chunk={int(desc[5])}"
