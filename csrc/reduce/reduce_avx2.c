/* reduce_avx2.c - AVX2 kernels (F16C for float16), 32 bytes per block.
 *
 * Compiled with per-function target attributes, no -march, so the build runs on any
 * x86-64; reduce_table.c installs these only when the CPU has AVX2 and F16C. Results equal
 * reduce_scalar.c bit for bit (see reduce_internal.h for the rules). What AVX2 lacks is
 * built from what it has: 8-bit multiply from two 16-bit multiplies, 64-bit multiply from
 * three 32x32->64 multiplies, 64-bit min/max from a compare and a blend. */
#include "reduce_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define ATTR __attribute__((target("avx2,f16c")))
#define INL static inline __attribute__((target("avx2,f16c"), always_inline))
#define VB 32

/* ---- ops on one register ------------------------------------------------------------ */
INL __m256 sum_ps(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
INL __m256 prod_ps(__m256 a, __m256 b) { return _mm256_mul_ps(a, b); }
/* numpy's NaN rule: take b where a is not NaN and !(b >= a) (min) / !(b <= a) (max) */
INL __m256 min_ps(__m256 a, __m256 b)
{
    __m256 m = _mm256_and_ps(_mm256_cmp_ps(a, a, _CMP_ORD_Q), _mm256_cmp_ps(b, a, _CMP_NGE_UQ));
    return _mm256_blendv_ps(a, b, m);
}
INL __m256 max_ps(__m256 a, __m256 b)
{
    __m256 m = _mm256_and_ps(_mm256_cmp_ps(a, a, _CMP_ORD_Q), _mm256_cmp_ps(b, a, _CMP_NLE_UQ));
    return _mm256_blendv_ps(a, b, m);
}
INL __m256d sum_pd(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
INL __m256d prod_pd(__m256d a, __m256d b) { return _mm256_mul_pd(a, b); }
INL __m256d min_pd(__m256d a, __m256d b)
{
    __m256d m = _mm256_and_pd(_mm256_cmp_pd(a, a, _CMP_ORD_Q), _mm256_cmp_pd(b, a, _CMP_NGE_UQ));
    return _mm256_blendv_pd(a, b, m);
}
INL __m256d max_pd(__m256d a, __m256d b)
{
    __m256d m = _mm256_and_pd(_mm256_cmp_pd(a, a, _CMP_ORD_Q), _mm256_cmp_pd(b, a, _CMP_NLE_UQ));
    return _mm256_blendv_pd(a, b, m);
}

INL __m256i sum_i8(__m256i a, __m256i b) { return _mm256_add_epi8(a, b); }
INL __m256i prod_i8(__m256i a, __m256i b) /* low bytes of even and odd 16-bit products */
{
    __m256i even = _mm256_mullo_epi16(a, b);
    __m256i odd = _mm256_mullo_epi16(_mm256_srli_epi16(a, 8), _mm256_srli_epi16(b, 8));
    return _mm256_or_si256(_mm256_and_si256(even, _mm256_set1_epi16(0xff)),
                           _mm256_slli_epi16(odd, 8));
}
INL __m256i min_i8(__m256i a, __m256i b) { return _mm256_min_epi8(a, b); }
INL __m256i max_i8(__m256i a, __m256i b) { return _mm256_max_epi8(a, b); }
#define sum_u8 sum_i8
#define prod_u8 prod_i8
INL __m256i min_u8(__m256i a, __m256i b) { return _mm256_min_epu8(a, b); }
INL __m256i max_u8(__m256i a, __m256i b) { return _mm256_max_epu8(a, b); }
INL __m256i sum_i32(__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }
INL __m256i prod_i32(__m256i a, __m256i b) { return _mm256_mullo_epi32(a, b); }
INL __m256i min_i32(__m256i a, __m256i b) { return _mm256_min_epi32(a, b); }
INL __m256i max_i32(__m256i a, __m256i b) { return _mm256_max_epi32(a, b); }
INL __m256i sum_i64(__m256i a, __m256i b) { return _mm256_add_epi64(a, b); }
INL __m256i prod_i64(__m256i a, __m256i b) /* lo*lo + ((hi*lo + lo*hi) << 32), mod 2^64 */
{
    __m256i lo = _mm256_mul_epu32(a, b);
    __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b),
                                     _mm256_mul_epu32(a, _mm256_srli_epi64(b, 32)));
    return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}
INL __m256i min_i64(__m256i a, __m256i b) /* b where a > b */
{
    return _mm256_blendv_epi8(a, b, _mm256_cmpgt_epi64(a, b));
}
INL __m256i max_i64(__m256i a, __m256i b) /* b where b > a */
{
    return _mm256_blendv_epi8(a, b, _mm256_cmpgt_epi64(b, a));
}

/* ---- half types: 16 elements (32 bytes) through two float32 registers ---------------- */
INL __m256 ld_f16(const char *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
INL void st_f16(char *p, __m256 v)
{
    _mm_storeu_si128((__m128i *)p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
/* bfloat16 is the top half of a float32, so a 32-bit lane holding two of them gives the
 * odd element by masking and the even one by shifting: no shuffles on the way in or out. */
#define BF16_HI _mm256_set1_epi32((int)0xffff0000u)
INL __m256 bf16_even(__m256i w) { return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)); }
INL __m256 bf16_odd(__m256i w) { return _mm256_castsi256_ps(_mm256_and_si256(w, BF16_HI)); }
/* float32 -> bfloat16 as cx_f32_to_bf16 does, result in the top 16 bits of the lane.
 * SUM, PROD and the AVERAGE divide need no NaN test: their inputs came from bfloat16 (low
 * 16 bits zero) and an x86 NaN result is a quieted input or the default NaN, so its low 16
 * bits are zero too: the increment cannot carry out of them and the NaN is already quiet.
 * MIN/MAX return an input unchanged: nothing to round, but a signalling NaN is quieted. */
INL __m256i bf16_rne(__m256 v)
{
    __m256i x = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    return _mm256_add_epi32(x, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
}
INL __m256i bf16_quiet(__m256 v)
{
    __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    return _mm256_or_si256(_mm256_castps_si256(v),
                           _mm256_and_si256(nan, _mm256_set1_epi32(0x400000)));
}
#define bf16_fin_sum bf16_rne
#define bf16_fin_prod bf16_rne
#define bf16_fin_min bf16_quiet
#define bf16_fin_max bf16_quiet
#define bf16_join(fin, even, odd)                                                         \
    _mm256_or_si256(_mm256_srli_epi32(fin(even), 16), _mm256_and_si256(fin(odd), BF16_HI))

/* ---- blocks: one 32-byte vector of each input ---------------------------------------- */
#define BLK_PS(op)                                                                        \
    INL void blk_##op##_f32(char *d, const char *x, const char *y)                        \
    {                                                                                     \
        _mm256_storeu_ps((float *)d, op##_ps(_mm256_loadu_ps((const float *)x),           \
                                             _mm256_loadu_ps((const float *)y)));         \
    }                                                                                     \
    INL void blk_##op##_f64(char *d, const char *x, const char *y)                        \
    {                                                                                     \
        _mm256_storeu_pd((double *)d, op##_pd(_mm256_loadu_pd((const double *)x),         \
                                              _mm256_loadu_pd((const double *)y)));       \
    }                                                                                     \
    INL void blk_##op##_f16(char *d, const char *x, const char *y)                        \
    {                                                                                     \
        st_f16(d, op##_ps(ld_f16(x), ld_f16(y)));                                         \
        st_f16(d + 16, op##_ps(ld_f16(x + 16), ld_f16(y + 16)));                          \
    }                                                                                     \
    INL void blk_##op##_bf16(char *d, const char *x, const char *y)                       \
    {                                                                                     \
        __m256i a = _mm256_loadu_si256((const __m256i *)x);                               \
        __m256i b = _mm256_loadu_si256((const __m256i *)y);                               \
        __m256 even = op##_ps(bf16_even(a), bf16_even(b));                                \
        __m256 odd = op##_ps(bf16_odd(a), bf16_odd(b));                                   \
        _mm256_storeu_si256((__m256i *)d, bf16_join(bf16_fin_##op, even, odd));           \
    }
#define BLK_INT(op, tag)                                                                  \
    INL void blk_##op##_##tag(char *d, const char *x, const char *y)                      \
    {                                                                                     \
        _mm256_storeu_si256((__m256i *)d, op##_##tag(_mm256_loadu_si256((const __m256i *)x), \
                                                     _mm256_loadu_si256((const __m256i *)y))); \
    }
#define KERNELS(op)                                                                       \
    BLK_PS(op) BLK_INT(op, i8) BLK_INT(op, u8) BLK_INT(op, i32) BLK_INT(op, i64)          \
    CX_DRIVE(op##_k_f16, static ATTR, VB, 2, blk_##op##_f16)                              \
    CX_DRIVE(op##_k_f32, static ATTR, VB, 4, blk_##op##_f32)                              \
    CX_DRIVE(op##_k_f64, static ATTR, VB, 8, blk_##op##_f64)                              \
    CX_DRIVE(op##_k_bf16, static ATTR, VB, 2, blk_##op##_bf16)                            \
    CX_DRIVE(op##_k_i8, static ATTR, VB, 1, blk_##op##_i8)                                \
    CX_DRIVE(op##_k_u8, static ATTR, VB, 1, blk_##op##_u8)                                \
    CX_DRIVE(op##_k_i32, static ATTR, VB, 4, blk_##op##_i32)                              \
    CX_DRIVE(op##_k_i64, static ATTR, VB, 8, blk_##op##_i64)
KERNELS(sum)
KERNELS(prod)
KERNELS(min)
KERNELS(max)

/* ---- AVERAGE finish ------------------------------------------------------------------- */
INL void dblk_f32(char *d, int dv)
{
    _mm256_storeu_ps((float *)d, _mm256_div_ps(_mm256_loadu_ps((float *)d),
                                               _mm256_set1_ps((float)dv)));
}
INL void dblk_f64(char *d, int dv)
{
    _mm256_storeu_pd((double *)d, _mm256_div_pd(_mm256_loadu_pd((double *)d),
                                                _mm256_set1_pd((double)dv)));
}
INL void dblk_f16(char *d, int dv)
{
    st_f16(d, _mm256_div_ps(ld_f16(d), _mm256_set1_ps((float)dv)));
    st_f16(d + 16, _mm256_div_ps(ld_f16(d + 16), _mm256_set1_ps((float)dv)));
}
INL void dblk_bf16(char *d, int dv)
{
    __m256i w = _mm256_loadu_si256((const __m256i *)d);
    __m256 f = _mm256_set1_ps((float)dv);
    _mm256_storeu_si256((__m256i *)d, bf16_join(bf16_rne, _mm256_div_ps(bf16_even(w), f),
                                                _mm256_div_ps(bf16_odd(w), f)));
}
CX_DRIVE_DIV(div_f16, static ATTR, VB, 2, dblk_f16)
CX_DRIVE_DIV(div_f32, static ATTR, VB, 4, dblk_f32)
CX_DRIVE_DIV(div_f64, static ATTR, VB, 8, dblk_f64)
CX_DRIVE_DIV(div_bf16, static ATTR, VB, 2, dblk_bf16)

void cx_reduce_fill_avx2(cx_reduce_variant *v) { CX_FILL(v); }

#endif /* __x86_64__ */
