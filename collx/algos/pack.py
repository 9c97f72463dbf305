"""Pack one rank's steps into the bytes the C executor runs (struct ``cx_step`` in
csrc/include/cx.h: 48 bytes each, little-endian) plus an int32 dependency array."""
from __future__ import annotations

import struct
from array import array
from typing import Sequence

from .ir import Schedule

STEP_FORMAT = "<BBBBiQQQiiQ"
STEP_SIZE = struct.calcsize(STEP_FORMAT)
assert STEP_SIZE == 48


def pack_rank(schedule: Schedule, rank: int, itemsize: int,
              peers: Sequence[int] | None = None) -> tuple[bytes, bytes, int]:
    """Return (steps, deps, scratch_bytes) for ``rank``, with offsets scaled to bytes.

    ``peers``: for a schedule generated for a sub-group (a process set), the rank of the
    executing communicator of each schedule rank (peer p is packed as peers[p]); None
    keeps the schedule's peers. ``rank`` is always the schedule's rank."""
    out = bytearray()
    deps = array("i")
    for step in schedule.steps[rank]:
        peer = step.peer if peers is None or step.peer < 0 else peers[step.peer]
        out += struct.pack(STEP_FORMAT, int(step.kind), int(step.buf), int(step.src_buf), 0,
                           peer, step.off * itemsize, step.src_off * itemsize,
                           step.count * itemsize, len(deps), len(step.deps), 0)
        deps.extend(step.deps)
    return bytes(out), deps.tobytes(), schedule.scratch_counts[rank] * itemsize
