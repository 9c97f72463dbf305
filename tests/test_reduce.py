"""Reduction kernels (csrc/reduce/): every op x dtype x variant against numpy, and every
SIMD variant against the scalar reference bit for bit.

numpy is the independent reference: np.add/multiply/minimum/maximum in the same dtype.
numpy has no bfloat16, so bfloat16 travels as uint16 and the reference decodes to float32,
computes there, and rounds back with this file's own round-to-nearest-even (written
differently from the C code: it picks the nearer of the two bfloat16 neighbours).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from collx import _C as C

pytestmark = pytest.mark.timeout(60)

OPS = {"sum": C.SUM, "prod": C.PROD, "min": C.MIN, "max": C.MAX}
NP_OPS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}
DTYPES = {  # name -> (collx code, numpy storage dtype)
    "float16": (C.FLOAT16, np.float16), "float32": (C.FLOAT32, np.float32),
    "float64": (C.FLOAT64, np.float64), "bfloat16": (C.BFLOAT16, np.uint16),
    "int8": (C.INT8, np.int8), "uint8": (C.UINT8, np.uint8),
    "int32": (C.INT32, np.int32), "int64": (C.INT64, np.int64),
}
FLOATS = ("float16", "float32", "float64", "bfloat16")
VARIANT_CODES = {"scalar": C.VARIANT_SCALAR, "avx2": C.VARIANT_AVX2, "avx512": C.VARIANT_AVX512}
SIZES = (0, 1, 3, 15, 16, 17, 31, 33, 63, 64, 65, 1000, 4099)


def _has(variant):
    probe = np.zeros(1, np.float32)
    return C.reduce_kernel(C.SUM, C.FLOAT32, variant, probe, probe, probe)


HAVE = {name: _has(code) for name, code in VARIANT_CODES.items()}
VARIANTS = [pytest.param(name, marks=pytest.mark.skipif(not HAVE[name],
                                                        reason=f"this CPU/build lacks {name}"))
            for name in VARIANT_CODES]
SIMD = [p for p in VARIANTS if p.values[0] != "scalar"]


# ---- bfloat16, independently of the C code ---------------------------------------------

def bf16_to_f32(u):
    return (u.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(f):
    """Round float32 -> bfloat16 bits to nearest, ties to even, by choosing the nearer of
    the two neighbours in float64 (exact there); overflow gives Inf, NaN stays NaN."""
    with np.errstate(all="ignore"):  # NaN and Inf inputs warn in the casts below
        return _f32_to_bf16(np.asarray(f, np.float32))


def _f32_to_bf16(f):
    bits = f.view(np.uint32)
    lo = (bits >> 16).astype(np.uint16)                   # truncated toward zero
    mag_lo = np.abs(bf16_to_f32(lo).astype(np.float64))
    hi_bits = (lo.astype(np.uint32) + 1) & 0xFFFF         # next bfloat16 away from zero
    mag_hi = np.abs(bf16_to_f32(hi_bits.astype(np.uint16)).astype(np.float64))
    mag_hi = np.where(np.isinf(mag_hi), 2.0 ** 128, mag_hi)  # Inf sits where 2^128 would
    mag = np.abs(f.astype(np.float64))
    d_lo, d_hi = mag - mag_lo, mag_hi - mag  # Inf - Inf = NaN for Inf inputs: kept as is
    up = (d_hi < d_lo) | ((d_hi == d_lo) & ((lo & 1) == 1))
    out = np.where(up, hi_bits, lo).astype(np.uint16)
    out = np.where(np.isnan(f), np.uint16(0x7FC0), out)   # any NaN: positions are compared
    return out


def test_bf16_reference_rounding():
    # the test's own conversion, on hand-checked cases
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20,
                  -1.0 - 2 ** -8, 3.4e38, np.inf, 2 ** -140], np.float32)
    got = f32_to_bf16(x)
    assert list(got) == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xBF80, 0x7F80, 0x7F80, 0x0000]
    assert got[-1] == 0  # 2^-140 is below half the smallest bfloat16 subnormal (2^-133)


# ---- inputs ---------------------------------------------------------------------------

def _specials(name):
    if name == "float16":
        return np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, 2.0 ** -24, -(2.0 ** -24),
                         2.0 ** -15, 65504.0, -65504.0, 60000.0, 1e-3], np.float16)
    if name == "bfloat16":
        return np.array([0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x8000, 0x0000, 0x0001,
                         0x807F, 0x7F7F, 0xFF7F, 0x3F80], np.uint16)
    dt = DTYPES[name][1]
    fi = np.finfo(dt)
    return np.array([np.inf, -np.inf, np.nan, -0.0, 0.0, fi.smallest_subnormal,
                     -fi.smallest_subnormal, fi.tiny, fi.max, -fi.max, 1.0, -1.0], dt)


def make(name, n, seed):
    """n elements of dtype `name`: wide-ranging randoms with special values sprinkled in;
    integers cover the whole range so SUM and PROD overflow and must wrap."""
    rng = np.random.default_rng(seed)
    dt = DTYPES[name][1]
    if name not in FLOATS:
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=n, dtype=dt, endpoint=True)
    if name == "bfloat16":
        x = f32_to_bf16((rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n))
                        .astype(np.float32))
    else:
        x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dt)
    if n:
        sp = _specials(name)
        pos = rng.integers(0, n, size=max(1, n // 8))
        x[pos] = sp[rng.integers(0, len(sp), size=len(pos))]
    return x


def reference(op, name, a, b):
    if name == "bfloat16":
        with np.errstate(all="ignore"):
            r = NP_OPS[op](bf16_to_f32(a), bf16_to_f32(b))
        return f32_to_bf16(r)
    with np.errstate(all="ignore"):
        return NP_OPS[op](a, b)


def run(op, name, variant, dst, a, b):
    assert C.reduce_kernel(OPS[op], DTYPES[name][0], VARIANT_CODES[variant], dst, a, b)
    return dst


def assert_matches_numpy(op, name, got, a, b):
    want = reference(op, name, a, b)
    if name not in FLOATS:
        np.testing.assert_array_equal(got, want)
        return
    gv = bf16_to_f32(got) if name == "bfloat16" else got
    wv = bf16_to_f32(want) if name == "bfloat16" else want
    nan_got, nan_want = np.isnan(gv), np.isnan(wv)
    bad = np.flatnonzero(nan_got != nan_want)
    assert bad.size == 0, f"NaN positions differ at {bad[:10]}"
    same_bits = got.view(f"u{got.itemsize}") == want.view(f"u{want.itemsize}")
    ok = same_bits | nan_got
    if op in ("min", "max"):
        # numpy itself answers min(-0.0, +0.0) with either zero (float16 differs from
        # float32); collx returns a on ties. Ties compare by value here, by sign below.
        av = bf16_to_f32(a) if name == "bfloat16" else a
        ok |= (gv == wv) & (av == (bf16_to_f32(b) if name == "bfloat16" else b))
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, (f"{name} {op}: first mismatches at {bad[:10]}: "
                           f"a={a[bad[:5]]} b={b[bad[:5]]} got={got[bad[:5]]} "
                           f"want={want[bad[:5]]}")


# ---- every op x dtype x variant x size x aliasing against numpy --------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("alias", ["separate", "dst_is_a", "dst_is_b"])
def test_against_numpy(op, name, variant, alias):
    for n in SIZES:
        a, b = make(name, n, seed=n), make(name, n, seed=n + 7919)
        a0, b0 = a.copy(), b.copy()
        if alias == "separate":
            dst = np.full_like(a, 0x55 if name not in FLOATS else 0)
            got = run(op, name, variant, dst, a, b)
            np.testing.assert_array_equal(a.view(np.uint8), a0.view(np.uint8))  # inputs kept
            np.testing.assert_array_equal(b.view(np.uint8), b0.view(np.uint8))
        elif alias == "dst_is_a":
            got = run(op, name, variant, a, a, b)
        else:
            got = run(op, name, variant, b, a, b)
        assert_matches_numpy(op, name, got, a0, b0)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(DTYPES))
def test_average_op_is_sum(name, variant):
    a, b = make(name, 100, 1), make(name, 100, 2)
    s, v = np.empty_like(a), np.empty_like(a)
    code, vc = DTYPES[name][0], VARIANT_CODES[variant]
    assert C.reduce_kernel(C.SUM, code, vc, s, a, b)
    assert C.reduce_kernel(C.AVERAGE, code, vc, v, a, b)
    assert s.tobytes() == v.tobytes()


# ---- every SIMD variant equals the scalar reference, bit for bit -------------------------

def _unaligned(x, offset):
    """x's contents at a byte address `offset` past an aligned one."""
    raw = np.zeros(x.nbytes + 64 + offset, np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    out = raw[start:start + x.nbytes].view(x.dtype)
    out[...] = x
    return out


@pytest.mark.parametrize("variant", SIMD)
@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("offset", [0, 1, 3])
def test_simd_equals_scalar(op, name, variant, offset):
    for n in SIZES + (10007,):
        a = _unaligned(make(name, n, seed=3 * n + 1), offset)
        b = _unaligned(make(name, n, seed=3 * n + 2), offset + 1)
        ref = run(op, name, "scalar", np.empty_like(a), a, b)
        got = run(op, name, variant, _unaligned(np.zeros_like(a), offset + 2), a, b)
        same = ref.view(f"u{ref.itemsize}") == got.view(f"u{got.itemsize}")
        if name in FLOATS and op in ("sum", "prod"):
            # with two NaN operands x86 returns the first one's payload, and a C compiler
            # may swap the operands of a commutative + or *: there only NaN-ness must agree
            af = bf16_to_f32(a) if name == "bfloat16" else a
            bf = bf16_to_f32(b) if name == "bfloat16" else b
            rf = bf16_to_f32(ref) if name == "bfloat16" else ref
            gf = bf16_to_f32(got) if name == "bfloat16" else got
            same |= np.isnan(af) & np.isnan(bf) & np.isnan(rf) & np.isnan(gf)
        bad = np.flatnonzero(~same)
        assert bad.size == 0, f"n={n}: {variant} differs from scalar at {bad[:10]}"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", FLOATS)
def test_min_max_nan_and_zero_rules(name, variant):
    """numpy's rule, exactly: a if a is NaN, else b if b is NaN, else the smaller (larger),
    a on ties, so the sign of a zero result comes from a."""
    code = DTYPES[name][0]
    if name == "bfloat16":
        nan_a, nan_b, one, pz, nz = 0x7FC1, 0x7FC2, 0x3F80, 0x0000, 0x8000
        dt = np.uint16
    else:
        dt = DTYPES[name][1]
        u = f"u{np.dtype(dt).itemsize}"
        q = np.array([np.nan], dt).view(u)[0]  # quiet NaN; two payloads below
        nan_a, nan_b = (np.array([q | 1, q | 2], u).view(dt))
        one, pz, nz = dt(1.0), dt(0.0), dt(-0.0)
    a = np.array([nan_a, nan_a, one, pz, nz] * 7, dt)
    b = np.array([nan_b, one, nan_b, nz, pz] * 7, dt)
    for op in (C.MIN, C.MAX):
        out = np.empty_like(a)
        assert C.reduce_kernel(op, code, VARIANT_CODES[variant], out, a, b)
        o = out.view(f"u{out.itemsize}")
        ab, bb = a.view(o.dtype), b.view(o.dtype)
        assert (o[0::5] == ab[0::5]).all() and (o[1::5] == ab[1::5]).all()  # a's NaN
        assert (o[2::5] == bb[2::5]).all()                                  # b's NaN
        assert (o[3::5] == ab[3::5]).all() and (o[4::5] == ab[4::5]).all()  # ties: a


@pytest.mark.parametrize("variant", VARIANTS)
def test_integer_wrap(variant):
    v = VARIANT_CODES[variant]
    for name, dt in (("int8", np.int8), ("uint8", np.uint8), ("int32", np.int32),
                     ("int64", np.int64)):
        info = np.iinfo(dt)
        a = np.array([info.max, info.min, info.max, info.min, -1 if info.min else 255] * 9, dt)
        b = np.array([1, -1 if info.min else 255, info.max, info.min, info.min] * 9, dt)
        code = DTYPES[name][0]
        for op, f in ((C.SUM, np.add), (C.PROD, np.multiply)):
            out = np.empty_like(a)
            assert C.reduce_kernel(op, code, v, out, a, b)
            with np.errstate(all="ignore"):
                np.testing.assert_array_equal(out, f(a, b))


def test_float16_subnormals_and_overflow():
    a = np.array([2.0 ** -24, 2.0 ** -24, 2.0 ** -14, 65504.0, 32768.0] * 5, np.float16)
    b = np.array([2.0 ** -24, -(2.0 ** -25), -(2.0 ** -24), 16.0, 2.0] * 5, np.float16)
    for name, code in VARIANT_CODES.items():
        out = np.empty_like(a)
        if not C.reduce_kernel(C.SUM, C.FLOAT16, code, out, a, b):
            continue
        with np.errstate(all="ignore"):
            want = np.add(a, b)
        assert out.view(np.uint16).tolist() == want.view(np.uint16).tolist()
        assert np.isinf(out[3])  # 65504 + 16 rounds up past the largest float16
        out = np.empty_like(a)
        assert C.reduce_kernel(C.PROD, C.FLOAT16, code, out, a, a)
        assert out[0] == 0 and out[4] == np.inf


# ---- dispatch ----------------------------------------------------------------------------

def test_best_variant_is_the_widest_available():
    widest = [n for n in VARIANT_CODES if HAVE[n]][-1]
    if os.environ.get("COLLX_REDUCE_VARIANT"):
        pytest.skip("COLLX_REDUCE_VARIANT is set")
    for name, (code, _) in DTYPES.items():
        assert C.reduce_variant(code) == widest


def test_bad_codes():
    x = np.zeros(4, np.float32)
    assert not C.reduce_kernel(C.SUM, C.FLOAT32, 7, x, x, x)  # no such variant
    with pytest.raises(Exception):
        C.reduce_kernel(C.SUM, 99, -1, x, x, x)
    with pytest.raises(Exception):
        C.reduce_kernel(C.SUM, C.FLOAT32, -1, x, x, np.zeros(5, np.float32))


_CHILD = r"""
import sys, numpy as np, collx._C as C
print(C.reduce_variant(C.FLOAT32))
for code, dt in ((C.FLOAT16, np.float16), (C.FLOAT32, np.float32), (C.FLOAT64, np.float64),
                 (C.BFLOAT16, np.uint16)):
    x = np.frombuffer(bytes.fromhex(sys.argv[1]), np.uint8)[: 4099 * np.dtype(dt).itemsize]
    x = x.view(dt).copy()
    C.average_finish(x, code, 7)
    print(x.tobytes().hex())
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_env_forces_variant_and_average_matches(variant):
    """COLLX_REDUCE_VARIANT picks the variant (read once, so in a child process), and every
    variant's AVERAGE finish gives the same bits."""
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 256, 4099 * 8, dtype=np.uint8).tobytes().hex()
    outs = {}
    for v in ("scalar", variant):
        env = dict(os.environ, COLLX_REDUCE_VARIANT=v)
        res = subprocess.run([sys.executable, "-c", _CHILD, raw], env=env, capture_output=True,
                             text=True, timeout=50, check=True)
        lines = res.stdout.split()
        assert lines[0] == v
        outs[v] = lines[1:]
    assert outs["scalar"] == outs[variant]


# ---- average_finish ------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("divisor", [1, 2, 3, 7, 8, 1000])
def test_average_finish(name, divisor):
    code, dt = DTYPES[name]
    for n in (0, 1, 17, 4099):
        x = make(name, n, seed=n + divisor)
        got = x.copy()
        C.average_finish(got, code, divisor)
        if name == "bfloat16":
            with np.errstate(all="ignore"):
                want = f32_to_bf16(bf16_to_f32(x) / np.float32(divisor))
        elif name in FLOATS:
            with np.errstate(all="ignore"):
                want = (x / dt(divisor)).astype(dt)
        else:  # truncate toward zero: x - fmod(x, d) is an exact multiple of d
            w = x.astype(np.int64)
            want = ((w - np.fmod(w, divisor)) // divisor).astype(dt)
        if divisor == 1:
            assert got.tobytes() == x.tobytes()
        elif name in FLOATS:
            gv = bf16_to_f32(got) if name == "bfloat16" else got
            wv = bf16_to_f32(want) if name == "bfloat16" else want
            np.testing.assert_array_equal(np.isnan(gv), np.isnan(wv))
            keep = ~np.isnan(wv)
            assert got[keep].tobytes() == want[keep].tobytes()
        else:
            np.testing.assert_array_equal(got, want)


def test_average_finish_truncates_toward_zero():
    for dt, code in ((np.int8, C.INT8), (np.int32, C.INT32), (np.int64, C.INT64)):
        info = np.iinfo(dt)
        x = np.array([-7, 7, -1, 1, -6, info.min, info.max, 0], dt)
        C.average_finish(x, code, 2)
        assert x.tolist() == [-3, 3, 0, 0, -3, info.min // 2, info.max // 2, 0]
    x = np.array([255, 7, 1], np.uint8)
    C.average_finish(x, C.UINT8, 2)
    assert x.tolist() == [127, 3, 0]


def test_average_finish_refuses_bad_divisor():
    x = np.ones(4, np.float32)
    with pytest.raises(Exception):
        C.average_finish(x, C.FLOAT32, 0)
