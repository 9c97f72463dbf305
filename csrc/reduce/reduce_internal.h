/* reduce_internal.h - what the kernel variants share: the per-variant table they fill,
 * the portable half-precision conversions, and the loop that turns a one-vector block
 * into a kernel for any n.
 *
 * Semantics every variant implements identically (tests/test_reduce.py holds them to it):
 *  - integers wrap (two's complement); SUM/PROD of signed types use the unsigned kernels;
 *  - float MIN/MAX follow numpy's np.minimum/np.maximum: a if a is NaN, else b if b is NaN,
 *    else min(a, b) choosing a on ties (so min(-0.0, +0.0) is -0.0, min(+0.0, -0.0) is +0.0);
 *  - float16/bfloat16 go through float32 and round to nearest even on the way back; NaNs
 *    come back quiet (quiet bit set, sign and top payload bits kept), never as Inf. Since
 *    float32 has more than 2p+2 bits for both half types, SUM/PROD/divide round exactly as
 *    a native half-precision operation would. */
#ifndef CX_REDUCE_INTERNAL_H
#define CX_REDUCE_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "cx.h"
#include "cx_reduce.h"

#define CX_NKERNEL_OPS 4 /* SUM, PROD, MIN, MAX; AVERAGE maps to SUM */

/* buf[i] /= divisor for one float dtype (the AVERAGE finish). */
typedef void (*cx_div_fn)(void *buf, size_t n, int divisor);

/* One variant: a kernel per (op, dtype), NULL where the variant has none. */
typedef struct cx_reduce_variant {
    cx_reduce_fn fn[CX_NKERNEL_OPS][CX_NDTYPES];
    cx_div_fn div[CX_NDTYPES]; /* floats only; integers always divide in the scalar code */
} cx_reduce_variant;

void cx_reduce_fill_scalar(cx_reduce_variant *v);
/* The variant cx_reduce_get uses for dtype (reduce_table.c); dtype must be valid. */
const cx_reduce_variant *cx_reduce_best(int dtype);
#if defined(__x86_64__)
void cx_reduce_fill_avx2(cx_reduce_variant *v);   /* needs AVX2 + F16C */
void cx_reduce_fill_avx512(cx_reduce_variant *v); /* needs AVX-512F + AVX-512BW */
/* Every variant names its kernels op_k_tag (sum_k_f16 ... max_k_i64) and its divides
 * div_tag; this fills the table from those names. */
#define CX_FILL_ROW(v, OP, op)                                                            \
    (v)->fn[OP][CX_FLOAT16] = op##_k_f16;                                                 \
    (v)->fn[OP][CX_FLOAT32] = op##_k_f32;                                                 \
    (v)->fn[OP][CX_FLOAT64] = op##_k_f64;                                                 \
    (v)->fn[OP][CX_BFLOAT16] = op##_k_bf16;                                               \
    (v)->fn[OP][CX_INT8] = op##_k_i8;                                                     \
    (v)->fn[OP][CX_UINT8] = op##_k_u8;                                                    \
    (v)->fn[OP][CX_INT32] = op##_k_i32;                                                   \
    (v)->fn[OP][CX_INT64] = op##_k_i64;
#define CX_FILL(v)                                                                        \
    do {                                                                                  \
        CX_FILL_ROW(v, CX_SUM, sum)                                                       \
        CX_FILL_ROW(v, CX_PROD, prod)                                                     \
        CX_FILL_ROW(v, CX_MIN, min)                                                       \
        CX_FILL_ROW(v, CX_MAX, max)                                                       \
        (v)->div[CX_FLOAT16] = div_f16;                                                   \
        (v)->div[CX_FLOAT32] = div_f32;                                                   \
        (v)->div[CX_FLOAT64] = div_f64;                                                   \
        (v)->div[CX_BFLOAT16] = div_bf16;                                                 \
    } while (0)

#endif

/* ---- portable conversions (bit manipulation; same results as F16C) ---------------- */

static inline float cx_bits_f32(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline uint32_t cx_f32_bits(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

static inline float cx_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) /* Inf, or NaN made quiet as VCVTPH2PS does */
        return cx_bits_f32(sign | 0x7f800000u | (man << 13) | (man ? 0x400000u : 0));
    if (exp)
        return cx_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
    if (!man)
        return cx_bits_f32(sign);
    uint32_t e = 113; /* subnormal man * 2^-24: shift the leading one up to bit 10 */
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return cx_bits_f32(sign | (e << 23) | ((man & 0x3ffu) << 13));
}

static inline uint16_t cx_f32_to_f16(float f)
{
    uint32_t x = cx_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet, keep the top payload bits */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) /* at or past 65520, halfway to 2^16: Inf */
        return (uint16_t)(sign | 0x7c00u);
    if (ax >= 0x38800000u) { /* normal half: rebias, round the 13 dropped bits to even */
        uint32_t r = ax - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    if (ax < 0x33000000u) /* below 2^-25: rounds to zero (2^-25 itself ties to even 0) */
        return (uint16_t)sign;
    /* subnormal half m * 2^-24 with m = mantissa >> (126 - exp), rounded to even */
    uint32_t shift = 126 - (ax >> 23), mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t m = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    m += (rem > half || (rem == half && (m & 1u)));
    return (uint16_t)(sign | m);
}

static inline float cx_bf16_to_f32(uint16_t h) { return cx_bits_f32((uint32_t)h << 16); }

static inline uint16_t cx_f32_to_bf16(float f)
{
    uint32_t x = cx_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) /* NaN: truncating could make Inf; keep it quiet */
        return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* ---- one loop for every SIMD kernel -------------------------------------------------
 * blk(d, x, y) reduces exactly VB bytes (one vector of each input, unaligned). The kernel
 * runs it four at a time, then one at a time, then once more on zero-padded copies of the
 * tail, so any n works (n = 0 included) and the tail computes exactly as the body does. */
#define CX_DRIVE(name, ATTR, VB, ESZ, blk)                                                \
    ATTR void name(void *dst, const void *a, const void *b, size_t n)                     \
    {                                                                                     \
        char *d = dst;                                                                    \
        const char *x = a, *y = b;                                                        \
        size_t nb = n * (ESZ), i = 0;                                                     \
        for (; i + 4 * (VB) <= nb; i += 4 * (VB)) {                                       \
            blk(d + i, x + i, y + i);                                                     \
            blk(d + i + (VB), x + i + (VB), y + i + (VB));                                \
            blk(d + i + 2 * (VB), x + i + 2 * (VB), y + i + 2 * (VB));                    \
            blk(d + i + 3 * (VB), x + i + 3 * (VB), y + i + 3 * (VB));                    \
        }                                                                                 \
        for (; i + (VB) <= nb; i += (VB))                                                 \
            blk(d + i, x + i, y + i);                                                     \
        if (i < nb) {                                                                     \
            char ta[VB] = {0}, tb[VB] = {0}, td[VB];                                      \
            memcpy(ta, x + i, nb - i);                                                    \
            memcpy(tb, y + i, nb - i);                                                    \
            blk(td, ta, tb);                                                              \
            memcpy(d + i, td, nb - i);                                                    \
        }                                                                                 \
    }

/* The same for the AVERAGE finish: blk(d, divisor) divides VB bytes in place. */
#define CX_DRIVE_DIV(name, ATTR, VB, ESZ, blk)                                            \
    ATTR void name(void *buf, size_t n, int divisor)                                      \
    {                                                                                     \
        char *d = buf;                                                                    \
        size_t nb = n * (ESZ), i = 0;                                                     \
        for (; i + (VB) <= nb; i += (VB))                                                 \
            blk(d + i, divisor);                                                          \
        if (i < nb) {                                                                     \
            char t[VB] = {0};                                                             \
            memcpy(t, d + i, nb - i);                                                     \
            blk(t, divisor);                                                              \
            memcpy(d + i, t, nb - i);                                                     \
        }                                                                                 \
    }

/* Every variant names its kernels op_k_tag (sum_k_f16 ... max_k_i64) and its divides
 * div_tag; this fills the table from those names. */
#define CX_FILL_ROW(v, OP, op)                                                            \
    (v)->fn[OP][CX_FLOAT16] = op##_k_f16;                                                 \
    (v)->fn[OP][CX_FLOAT32] = op##_k_f32;                                                 \
    (v)->fn[OP][CX_FLOAT64] = op##_k_f64;                                                 \
    (v)->fn[OP][CX_BFLOAT16] = op##_k_bf16;                                               \
    (v)->fn[OP][CX_INT8] = op##_k_i8;                                                     \
    (v)->fn[OP][CX_UINT8] = op##_k_u8;                                                    \
    (v)->fn[OP][CX_INT32] = op##_k_i32;                                                   \
    (v)->fn[OP][CX_INT64] = op##_k_i64;
#define CX_FILL(v)                                                                        \
    do {                                                                                  \
        CX_FILL_ROW(v, CX_SUM, sum)                                                       \
        CX_FILL_ROW(v, CX_PROD, prod)                                                     \
        CX_FILL_ROW(v, CX_MIN, min)                                                       \
        CX_FILL_ROW(v, CX_MAX, max)                                                       \
        (v)->div[CX_FLOAT16] = div_f16;                                                   \
        (v)->div[CX_FLOAT32] = div_f32;                                                   \
        (v)->div[CX_FLOAT64] = div_f64;                                                   \
        (v)->div[CX_BFLOAT16] = div_bf16;                                                 \
    } while (0)

#endif
