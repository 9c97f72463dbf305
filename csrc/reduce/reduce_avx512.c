/* reduce_avx512.c - AVX-512F/BW kernels, 64 bytes per block.
 *
 * Per-function target attributes, no -march; reduce_table.c installs these only when the
 * CPU has AVX-512F and AVX-512BW (BW for the 8-bit and 16-bit lanes). Nothing beyond F and
 * BW is used (no DQ, no VL, no BF16 instructions: VCVTNEPS2BF16 flushes subnormals, which
 * the scalar reference does not). Results equal reduce_scalar.c bit for bit. */
#include "reduce_internal.h"

#if defined(__x86_64__)
#include <immintrin.h>

#define ATTR __attribute__((target("avx512f,avx512bw")))
#define INL static inline __attribute__((target("avx512f,avx512bw"), always_inline))
#define VB 64

/* ---- ops on one register ------------------------------------------------------------ */
INL __m512 sum_ps(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
INL __m512 prod_ps(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
/* numpy's NaN rule: take b where a is not NaN and !(b >= a) (min) / !(b <= a) (max) */
INL __m512 min_ps(__m512 a, __m512 b)
{
    __mmask16 k = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(a, a, _CMP_ORD_Q), b, a, _CMP_NGE_UQ);
    return _mm512_mask_blend_ps(k, a, b);
}
INL __m512 max_ps(__m512 a, __m512 b)
{
    __mmask16 k = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(a, a, _CMP_ORD_Q), b, a, _CMP_NLE_UQ);
    return _mm512_mask_blend_ps(k, a, b);
}
INL __m512d sum_pd(__m512d a, __m512d b) { return _mm512_add_pd(a, b); }
INL __m512d prod_pd(__m512d a, __m512d b) { return _mm512_mul_pd(a, b); }
INL __m512d min_pd(__m512d a, __m512d b)
{
    __mmask8 k = _mm512_mask_cmp_pd_mask(_mm512_cmp_pd_mask(a, a, _CMP_ORD_Q), b, a, _CMP_NGE_UQ);
    return _mm512_mask_blend_pd(k, a, b);
}
INL __m512d max_pd(__m512d a, __m512d b)
{
    __mmask8 k = _mm512_mask_cmp_pd_mask(_mm512_cmp_pd_mask(a, a, _CMP_ORD_Q), b, a, _CMP_NLE_UQ);
    return _mm512_mask_blend_pd(k, a, b);
}

INL __m512i sum_i8(__m512i a, __m512i b) { return _mm512_add_epi8(a, b); }
INL __m512i prod_i8(__m512i a, __m512i b) /* low bytes of even and odd 16-bit products */
{
    __m512i even = _mm512_mullo_epi16(a, b);
    __m512i odd = _mm512_mullo_epi16(_mm512_srli_epi16(a, 8), _mm512_srli_epi16(b, 8));
    return _mm512_mask_blend_epi8(0xaaaaaaaaaaaaaaaaull, even, _mm512_slli_epi16(odd, 8));
}
INL __m512i min_i8(__m512i a, __m512i b) { return _mm512_min_epi8(a, b); }
INL __m512i max_i8(__m512i a, __m512i b) { return _mm512_max_epi8(a, b); }
#define sum_u8 sum_i8
#define prod_u8 prod_i8
INL __m512i min_u8(__m512i a, __m512i b) { return _mm512_min_epu8(a, b); }
INL __m512i max_u8(__m512i a, __m512i b) { return _mm512_max_epu8(a, b); }
INL __m512i sum_i32(__m512i a, __m512i b) { return _mm512_add_epi32(a, b); }
INL __m512i prod_i32(__m512i a, __m512i b) { return _mm512_mullo_epi32(a, b); }
INL __m512i min_i32(__m512i a, __m512i b) { return _mm512_min_epi32(a, b); }
INL __m512i max_i32(__m512i a, __m512i b) { return _mm512_max_epi32(a, b); }
INL __m512i sum_i64(__m512i a, __m512i b) { return _mm512_add_epi64(a, b); }
INL __m512i prod_i64(__m512i a, __m512i b) /* lo*lo + ((hi*lo + lo*hi) << 32): no DQ */
{
    __m512i lo = _mm512_mul_epu32(a, b);
    __m512i cross = _mm512_add_epi64(_mm512_mul_epu32(_mm512_srli_epi64(a, 32), b),
                                     _mm512_mul_epu32(a, _mm512_srli_epi64(b, 32)));
    return _mm512_add_epi64(lo, _mm512_slli_epi64(cross, 32));
}
INL __m512i min_i64(__m512i a, __m512i b) { return _mm512_min_epi64(a, b); }
INL __m512i max_i64(__m512i a, __m512i b) { return _mm512_max_epi64(a, b); }

/* ---- half types: 32 elements (64 bytes) through two float32 registers ---------------- */
INL __m512 ld_f16(const char *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
INL void st_f16(char *p, __m512 v)
{
    _mm256_storeu_si256((__m256i *)p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
/* bfloat16 is the top half of a float32, so a 32-bit lane holding two of them gives the
 * odd element by masking and the even one by shifting: no shuffles on the way in or out. */
#define BF16_HI _mm512_set1_epi32((int)0xffff0000u)
INL __m512 bf16_even(__m512i w) { return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)); }
INL __m512 bf16_odd(__m512i w) { return _mm512_castsi512_ps(_mm512_and_si512(w, BF16_HI)); }
/* float32 -> bfloat16 as cx_f32_to_bf16 does, result in the top 16 bits of the lane.
 * SUM, PROD and the AVERAGE divide need no NaN test: their inputs came from bfloat16 (low
 * 16 bits zero) and an x86 NaN result is a quieted input or the default NaN, so its low 16
 * bits are zero too: the increment cannot carry out of them and the NaN is already quiet.
 * MIN/MAX return an input unchanged: nothing to round, but a signalling NaN is quieted. */
INL __m512i bf16_rne(__m512 v)
{
    __m512i x = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
}
INL __m512i bf16_quiet(__m512 v)
{
    __m512i x = _mm512_castps_si512(v);
    return _mm512_mask_or_epi32(x, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), x,
                                _mm512_set1_epi32(0x400000));
}
#define bf16_fin_sum bf16_rne
#define bf16_fin_prod bf16_rne
#define bf16_fin_min bf16_quiet
#define bf16_fin_max bf16_quiet
#define bf16_join(fin, even, odd)                                                         \
    _mm512_or_si512(_mm512_srli_epi32(fin(even), 16), _mm512_and_si512(fin(odd), BF16_HI))

/* ---- blocks: one 64-byte vector of each input ---------------------------------------- */
#define BLK_PS(op)                                                                        \
    INL void blk_##op##_f32(char *d, const char *x, const char *y)                        \
    {                                                                                     \
        _mm512_storeu_ps(d, op##_ps(_mm512_loadu_ps(x), _mm512_loadu_ps(y)));             \
    }                                                                                     \
    INL void blk_##op##_f64(char *d, const char *x, const char *y)                        \
    {                                                                                     \
        _mm512_storeu_pd(d, op##_pd(_mm512_loadu_pd(x), _mm512_loadu_pd(y)));             \
    }                                                                                     \
    INL void blk_##op##_f16(char *d, const char *x, const char *y)                        \
    {                                                                                     \
        st_f16(d, op##_ps(ld_f16(x), ld_f16(y)));                                         \
        st_f16(d + 32, op##_ps(ld_f16(x + 32), ld_f16(y + 32)));                          \
    }                                                                                     \
    INL void blk_##op##_bf16(char *d, const char *x, const char *y)                       \
    {                                                                                     \
        __m512i a = _mm512_loadu_si512(x), b = _mm512_loadu_si512(y);                     \
        __m512 even = op##_ps(bf16_even(a), bf16_even(b));                                \
        __m512 odd = op##_ps(bf16_odd(a), bf16_odd(b));                                   \
        _mm512_storeu_si512(d, bf16_join(bf16_fin_##op, even, odd));                      \
    }
#define BLK_INT(op, tag)                                                                  \
    INL void blk_##op##_##tag(char *d, const char *x, const char *y)                      \
    {                                                                                     \
        _mm512_storeu_si512(d, op##_##tag(_mm512_loadu_si512(x), _mm512_loadu_si512(y)));  \
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
    _mm512_storeu_ps(d, _mm512_div_ps(_mm512_loadu_ps(d), _mm512_set1_ps((float)dv)));
}
INL void dblk_f64(char *d, int dv)
{
    _mm512_storeu_pd(d, _mm512_div_pd(_mm512_loadu_pd(d), _mm512_set1_pd((double)dv)));
}
INL void dblk_f16(char *d, int dv)
{
    st_f16(d, _mm512_div_ps(ld_f16(d), _mm512_set1_ps((float)dv)));
    st_f16(d + 32, _mm512_div_ps(ld_f16(d + 32), _mm512_set1_ps((float)dv)));
}
INL void dblk_bf16(char *d, int dv)
{
    __m512i w = _mm512_loadu_si512(d);
    __m512 f = _mm512_set1_ps((float)dv);
    _mm512_storeu_si512(d, bf16_join(bf16_rne, _mm512_div_ps(bf16_even(w), f),
                                     _mm512_div_ps(bf16_odd(w), f)));
}
CX_DRIVE_DIV(div_f16, static ATTR, VB, 2, dblk_f16)
CX_DRIVE_DIV(div_f32, static ATTR, VB, 4, dblk_f32)
CX_DRIVE_DIV(div_f64, static ATTR, VB, 8, dblk_f64)
CX_DRIVE_DIV(div_bf16, static ATTR, VB, 2, dblk_bf16)

void cx_reduce_fill_avx512(cx_reduce_variant *v) { CX_FILL(v); }

#endif /* __x86_64__ */
