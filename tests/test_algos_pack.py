"""Tier 1: pack_rank turns a rank's steps into 48-byte cx_step records plus an int32 deps
array, with offsets scaled to bytes and dep ranges that point at the right deps."""
from __future__ import annotations

import struct
from array import array

import pytest

from collx.algos.pack import STEP_FORMAT, STEP_SIZE, pack_rank
from collx.algos.registry import build_schedule

pytestmark = pytest.mark.timeout(30)

CASES = [
    ("allreduce", dict(count=1009, chunk_count=7)),
    ("reducescatter", dict(counts=[3, 0, 5, 9, 1])),
    ("alltoall", dict(send_counts=[[2] * 5 for _ in range(5)])),
    ("gather", dict(counts=[3, 0, 5, 9, 1], root=3)),
    ("barrier", dict()),
]


@pytest.mark.parametrize("op,kwargs", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("itemsize", [1, 4, 8])
def test_pack_rank(op, kwargs, itemsize):
    s = build_schedule(op, 5, **kwargs)
    for r in range(5):
        steps = s.steps[r]
        packed, deps_bytes, scratch = pack_rank(s, r, itemsize)
        assert STEP_SIZE == 48 and len(packed) == len(steps) * 48
        assert scratch == s.scratch_counts[r] * itemsize
        deps = array("i")
        deps.frombytes(deps_bytes)
        assert len(deps) == sum(len(st.deps) for st in steps)
        for i, st in enumerate(steps):
            (kind, buf, src_buf, flags, peer, off, src_off, nbytes, dep_start, ndeps,
             pad) = struct.unpack_from(STEP_FORMAT, packed, i * 48)
            assert (kind, buf, src_buf, flags, peer) == (st.kind, st.buf, st.src_buf, 0,
                                                         st.peer)
            assert (off, src_off, nbytes) == (st.off * itemsize, st.src_off * itemsize,
                                              st.count * itemsize)
            assert tuple(deps[dep_start:dep_start + ndeps]) == st.deps
            assert all(0 <= d < i for d in st.deps)
