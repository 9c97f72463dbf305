"""int8 per-block quantization (collx/runtime/quantize.py): properties of quantize/dequantize
(hypothesis), the documented error bound of the quantized allreduce on one process, and on
real ranks at np 1, 2, 3, 4 (tests/mp/process_set_worker.py ``quant``: random, large, zero,
equal-block and mixed-magnitude data, counts 0/1/5/63/64/65/1000/4099, blocks 32/64/256,
Sum and Average, float16/32/64 — every rank within the bound of the float64 sum and bitwise
identical to every other rank; np >= 3 also over a 2-rank process set)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from collx import _C
from collx.errors import InvalidUsage
from collx.runtime.communicator import Communicator
from collx.runtime.quantize import (dequantize_blocks, prepare_quantized_allreduce,
                                    quantize_blocks)
from tests.mp.launch import assert_all_ok, collxrun

pytestmark = pytest.mark.timeout(240)

U = {np.float16: 2.0 ** -11, np.float32: 2.0 ** -24, np.float64: 2.0 ** -53}
FLOATS = {np.float16: st.floats(-60000.0, 60000.0, width=16),
          np.float32: st.floats(-2.0 ** 100, 2.0 ** 100, width=32),
          np.float64: st.floats(-1e38, 1e38)}


def _block_max(x: np.ndarray, block: int) -> np.ndarray:
    """max |x| of each element's block, per element (float64)."""
    n = x.size
    nb = -(-n // block)
    pad = np.zeros(nb * block)
    pad[:n] = np.abs(x.astype(np.float64).reshape(-1))
    return np.repeat(pad.reshape(nb, block).max(axis=1), block)[:n]


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    count = draw(st.integers(0, 700))
    x = draw(hnp.arrays(dtype, count, elements=FLOATS[dtype]))
    block = draw(st.sampled_from([32, 33, 64, 100, 128, 256]))
    return x, block


@settings(max_examples=300, deadline=None)
@given(cases())
def test_round_trip_within_half_a_step(case) -> None:
    x, block = case
    scales, q = quantize_blocks(x, block)
    assert scales.dtype == np.float32 and scales.shape == (-(-x.size // block),)
    assert q.dtype == np.int8 and q.shape == (x.size,)
    assert q.size == 0 or (q.min() >= -127 and q.max() <= 127)
    m = _block_max(x, block)
    # scale >= M/127 (nothing clipped) and within one float32 step of it
    assert np.all(np.repeat(scales.astype(np.float64), block)[:x.size] * 127 >= m)
    y = dequantize_blocks(scales, q, block, np.float64)
    err = np.abs(y - x.astype(np.float64))
    tiny = 2.0 ** -150                 # subnormal float32 scales (float64 data), see docstring
    assert np.all(err <= m / 254 * (1 + 2.0 ** -14) + tiny)
    # into the input's dtype: plus one rounding of the output
    z = dequantize_blocks(scales, q, block, x.dtype)
    assert z.dtype == x.dtype
    assert np.all(np.abs(z.astype(np.float64) - x) <= m / 254 * (1 + 2.0 ** -14) + tiny
                  + 2 * U[x.dtype.type] * np.abs(x.astype(np.float64)))


@settings(max_examples=200, deadline=None)
@given(cases(), st.sampled_from([_C.SUM, _C.AVERAGE]))
def test_one_rank_allreduce_within_bound(case, op) -> None:
    """n = 1 runs every step (quantize, own shard, requantize, dequantize) without peers."""
    x, block = case
    got = prepare_quantized_allreduce(_ONE, x, op, None, None, block=block)()
    assert got.dtype == x.dtype and got.shape == x.shape
    bound = (1 + 2.0 ** -6) * _block_max(x, block) / 127 + 2 * U[x.dtype.type] * np.abs(
        x.astype(np.float64)) + 2.0 ** -149
    assert np.all(np.abs(got.astype(np.float64) - x) <= bound)


_ONE = Communicator(0, 1)


def test_special_blocks() -> None:
    x = np.zeros(200, np.float32)
    x[64:128] = 2.7                               # a block of one value: one q, one error
    x[130] = np.inf
    scales, q = quantize_blocks(x, 64)
    assert scales[0] == 0 and not q[:64].any()
    eq = dequantize_blocks(scales, q, 64)[64:128]
    assert np.all(q[64:128] == 127) and np.all(eq == eq[0])
    assert abs(float(eq[0]) - 2.7) <= 2.7 / 254
    y = dequantize_blocks(scales, q, 64)
    assert np.isnan(scales[2]) and np.all(np.isnan(y[128:192]))
    assert np.all(np.isfinite(y[:128])) and np.all(np.isfinite(y[192:]))


@pytest.mark.parametrize("block", [32, 64, 100, 256])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_many_blocks(block: int, dtype) -> None:
    """>= 256 blocks take the column-wise maximum: same scales as the per-row one."""
    rng = np.random.default_rng(block)
    x = (rng.standard_normal(300 * block + 17) * rng.uniform(0, 50, 300 * block + 17))
    x[:block] = 0
    x[5 * block:6 * block] = -1.5
    x = x.astype(dtype)
    scales, q = quantize_blocks(x, block)
    m = _block_max(x, block)
    want = np.maximum(m.reshape(-1)[::block] / 127, 0)
    assert np.all(scales.astype(np.float64) >= want)
    assert np.all(scales.astype(np.float64) <= want * (1 + 2.0 ** -22) + 2.0 ** -149)
    y = dequantize_blocks(scales, q, block, np.float64)
    assert np.all(np.abs(y - x.astype(np.float64)) <= m / 254 * (1 + 2.0 ** -14))
    assert not y[:block].any() and np.all(y[5 * block:6 * block] == y[5 * block])


def test_in_place_and_out() -> None:
    x = np.linspace(-3, 3, 1000).astype(np.float32)
    ref = prepare_quantized_allreduce(_ONE, x.copy(), _C.SUM, None, None)()
    out = np.empty_like(x)
    assert prepare_quantized_allreduce(_ONE, x, _C.SUM, out, None)() is out
    assert np.array_equal(out, ref)
    assert prepare_quantized_allreduce(_ONE, x, _C.SUM, x, None)() is x
    assert np.array_equal(x, ref)


@pytest.mark.parametrize("kw,match", [
    (dict(x=np.ones(4, np.int32)), "dtype"),
    (dict(op=_C.MAX), "Sum and Average"),
    (dict(block=16), "block"),
    (dict(block=512), "block"),
    (dict(block=64.0), "block"),
    (dict(out=np.empty(3, np.float32)), "out"),
    (dict(timeout=-1), "timeout"),
])
def test_refused_before_anything_is_sent(kw, match) -> None:
    args = dict(x=np.ones(4, np.float32), op=_C.SUM, out=None, timeout=None, block=64)
    args.update(kw)
    with pytest.raises(InvalidUsage, match=match):
        prepare_quantized_allreduce(_ONE, args["x"], args["op"], args["out"], args["timeout"],
                                    block=args["block"])


@pytest.mark.parametrize("np_", [1, 2, 3, 4])
def test_quantized_allreduce_ranks(np_: int) -> None:
    job = collxrun(np_, "process_set_worker.py", "quant", timeout=200)
    finals = assert_all_ok(job, np_)
    for rank, line in finals.items():
        info = json.loads(line)
        assert info["covered"].get(f"quant np{np_}") == 1, info
        assert info["checks"] >= 360, info
