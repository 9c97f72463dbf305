"""Constants live in C (csrc/include/cx.h); the pure-Python schedule IR mirrors the step
vocabulary because collx.algos may not import the extension. This test is what keeps the two
from drifting."""
import struct

import numpy as np
import pytest

from collx import _C
from collx.algos.ir import Buf, Kind
from collx.algos.pack import STEP_FORMAT, STEP_SIZE, pack_rank
from collx.algos.registry import build_schedule
from collx.runtime.buffers import dtype_code

pytestmark = pytest.mark.timeout(30)


def test_step_kinds_and_buffers_match_c():
    assert [Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY] == [
        _C.STEP_SEND, _C.STEP_RECV, _C.STEP_RECV_REDUCE, _C.STEP_COPY]
    assert [Buf.IN, Buf.OUT, Buf.SCRATCH] == [_C.BUF_IN, _C.BUF_OUT, _C.BUF_SCRATCH]
    assert STEP_SIZE == struct.calcsize(STEP_FORMAT) == _C.STEP_SIZE == 48


def test_numpy_dtypes_map_to_their_c_codes():
    for name in ("float16", "float32", "float64", "int8", "uint8", "int32", "int64"):
        assert _C.DTYPE_NAMES[dtype_code(np.dtype(name))] == name
    assert dtype_code(np.dtype(">f4")) is None      # non-native byte order has no kernel
    assert dtype_code(np.dtype("complex64")) is None


def test_c_validates_packed_plans():
    """The executor refuses malformed plans instead of trusting Python."""
    comm = _C.Comm(0, 2)
    s = build_schedule("allreduce", 2, count=10)
    steps, deps, scratch = pack_rank(s, 0, 4)
    comm.plan(steps, deps, scratch)                              # well formed: accepted
    import collx
    with pytest.raises(collx.InvalidUsage):
        comm.plan(steps[:-1], deps, scratch)                     # torn record
    bad_peer = bytearray(steps)
    struct.pack_into("<i", bad_peer, 4, 0)                        # step 0 sends to itself
    with pytest.raises(collx.InvalidUsage):
        comm.plan(bytes(bad_peer), deps, scratch)
    comm.close()
