/* reduce_scalar.c - the portable reference kernels: plain C, one element at a time,
 * compiled on every architecture. Every SIMD variant must match these bit for bit.
 *
 * Loads and stores go through memcpy so that unaligned pointers are fine; dst may be a or b
 * because element i is read before it is written. SUM/PROD of signed integers run on the
 * unsigned types: the bits of a wrapped two's-complement result are the same, without UB. */

/* On x86-64, where hand-written SIMD variants exist, keep the reference plain scalar: an
 * oracle independent of the compiler's vectorizer, and an honest scalar baseline. Elsewhere
 * it is the only variant, so the compiler may vectorize it. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-vectorize")
#define CX_SCALAR_LOOP
#elif defined(__x86_64__) && defined(__clang__)
#define CX_SCALAR_LOOP _Pragma("clang loop vectorize(disable) interleave(disable)")
#else
#define CX_SCALAR_LOOP
#endif

#include "reduce_internal.h"

#define CX_ACCESS(T, tag)                                                                 \
    static inline T ld_##tag(const void *p, size_t i)                                     \
    {                                                                                     \
        T v;                                                                              \
        memcpy(&v, (const char *)p + i * sizeof(T), sizeof v);                            \
        return v;                                                                         \
    }                                                                                     \
    static inline void st_##tag(void *p, size_t i, T v)                                   \
    {                                                                                     \
        memcpy((char *)p + i * sizeof(T), &v, sizeof v);                                  \
    }
CX_ACCESS(float, f32)
CX_ACCESS(double, f64)
CX_ACCESS(uint16_t, u16)
CX_ACCESS(int8_t, i8)
CX_ACCESS(uint8_t, u8)
CX_ACCESS(int32_t, i32)
CX_ACCESS(uint32_t, u32)
CX_ACCESS(int64_t, i64)
CX_ACCESS(uint64_t, u64)

/* ---- element ops ------------------------------------------------------------------- */
#define ARITH(T, tag)                                                                     \
    static inline T sum_##tag(T a, T b) { return (T)(a + b); }                            \
    static inline T prod_##tag(T a, T b) { return (T)(a * b); }
ARITH(float, f32)
ARITH(double, f64)
ARITH(uint32_t, u32)
ARITH(uint64_t, u64)
static inline uint8_t sum_u8(uint8_t a, uint8_t b) { return (uint8_t)((unsigned)a + b); }
static inline uint8_t prod_u8(uint8_t a, uint8_t b) { return (uint8_t)((unsigned)a * b); }

#define ORDER(T, tag)                                                                     \
    static inline T min_##tag(T a, T b) { return b < a ? b : a; }                         \
    static inline T max_##tag(T a, T b) { return b > a ? b : a; }
ORDER(int8_t, i8)
ORDER(uint8_t, u8)
ORDER(int32_t, i32)
ORDER(int64_t, i64)

/* numpy's NaN rule: a if a is NaN, else b if b is NaN, else the smaller, a on ties. */
#define FORDER(T, tag)                                                                    \
    static inline T min_##tag(T a, T b) { return (a == a && !(b >= a)) ? b : a; }         \
    static inline T max_##tag(T a, T b) { return (a == a && !(b <= a)) ? b : a; }
FORDER(float, f32)
FORDER(double, f64)

/* half types: through float32, rounded to nearest even on the way back */
#define HALF(op, tag, TO, FROM)                                                           \
    static inline uint16_t op##_##tag(uint16_t a, uint16_t b)                             \
    {                                                                                     \
        return FROM(op##_f32(TO(a), TO(b)));                                              \
    }
#define HALF_OPS(tag, TO, FROM)                                                           \
    HALF(sum, tag, TO, FROM) HALF(prod, tag, TO, FROM)                                    \
    HALF(min, tag, TO, FROM) HALF(max, tag, TO, FROM)
HALF_OPS(f16, cx_f16_to_f32, cx_f32_to_f16)
HALF_OPS(bf16, cx_bf16_to_f32, cx_f32_to_bf16)

/* ---- kernels ----------------------------------------------------------------------- */
/* name: op_dtype; acc: the storage type's load/store; fn: the element op */
#define KERNEL(name, acc, fn)                                                             \
    static void name(void *dst, const void *a, const void *b, size_t n)                   \
    {                                                                                     \
        CX_SCALAR_LOOP                                                                    \
        for (size_t i = 0; i < n; i++)                                                    \
            st_##acc(dst, i, fn(ld_##acc(a, i), ld_##acc(b, i)));                         \
    }
#define FLOAT_KERNELS(tag, acc)                                                           \
    KERNEL(sum_k_##tag, acc, sum_##tag) KERNEL(prod_k_##tag, acc, prod_##tag)             \
    KERNEL(min_k_##tag, acc, min_##tag) KERNEL(max_k_##tag, acc, max_##tag)
FLOAT_KERNELS(f16, u16)
FLOAT_KERNELS(f32, f32)
FLOAT_KERNELS(f64, f64)
FLOAT_KERNELS(bf16, u16)
/* integers: SUM/PROD on the unsigned type of the same width, MIN/MAX on the real type */
#define INT_KERNELS(tag, utag)                                                            \
    KERNEL(sum_k_##tag, utag, sum_##utag) KERNEL(prod_k_##tag, utag, prod_##utag)         \
    KERNEL(min_k_##tag, tag, min_##tag) KERNEL(max_k_##tag, tag, max_##tag)
INT_KERNELS(i8, u8)
INT_KERNELS(u8, u8)
INT_KERNELS(i32, u32)
INT_KERNELS(i64, u64)

/* ---- AVERAGE finish for floats (integers: cx_average_scalar) -------------------------- */
static void div_f32(void *buf, size_t n, int divisor)
{
    float dv = (float)divisor;
    for (size_t i = 0; i < n; i++)
        st_f32(buf, i, ld_f32(buf, i) / dv);
}
static void div_f64(void *buf, size_t n, int divisor)
{
    double dv = (double)divisor;
    for (size_t i = 0; i < n; i++)
        st_f64(buf, i, ld_f64(buf, i) / dv);
}
static void div_f16(void *buf, size_t n, int divisor)
{
    float dv = (float)divisor;
    for (size_t i = 0; i < n; i++)
        st_u16(buf, i, cx_f32_to_f16(cx_f16_to_f32(ld_u16(buf, i)) / dv));
}
static void div_bf16(void *buf, size_t n, int divisor)
{
    float dv = (float)divisor;
    for (size_t i = 0; i < n; i++)
        st_u16(buf, i, cx_f32_to_bf16(cx_bf16_to_f32(ld_u16(buf, i)) / dv));
}

void cx_reduce_fill_scalar(cx_reduce_variant *v) { CX_FILL(v); }
