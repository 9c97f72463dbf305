"""Pack one rank's steps into the bytes the C executor runs (struct ``cx_step`` in
csrc/include/cx.h: 48 bytes each, little-endian) plus an int32 dependency array."""
from __future__ import annotations

import struct
from array import array

from .ir import Schedule

STEP_FORMAT = "<BBBBiQQQiiQ"
STEP_SIZE = struct.calcsize(STEP_FORMAT)
assert STEP_SIZE == 48


def pack_rank(schedule: Schedule, rank: int, itemsize: int) -> tuple[bytes, bytes, int]:
    """Return (steps, deps, scratch_bytes) for ``rank``, with offsets scaled to bytes."""
    out = bytearray()
    deps = array("i")
    for step in schedule.steps[rank]:
        out += struct.pack(STEP_FORMAT, int(step.kind), int(step.buf), int(step.src_buf), 0,
                           step.peer, step.off * itemsize, step.src_off * itemsize,
                           step.count * itemsize, len(deps), len(step.deps), 0)
        deps.extend(step.deps)
    return bytes(out), deps.tobytes(), schedule.scratch_counts[rank] * itemsize
