/* cx_reduce.h - reduction kernels: one table [op][dtype] of one signature.
 *
 *   dst[i] = a[i] (op) b[i]   for i in [0, n)        n counts ELEMENTS, not bytes
 *
 * dst may alias a or b (in-place accumulation is the common case). Pointers need not be
 * aligned. AVERAGE uses the SUM kernel; cx_average_finish divides once at the end.
 * Variants: 0 = portable scalar reference, 1 = AVX2 (+F16C for float16/bfloat16),
 * 2 = AVX-512F. cx_reduce_get picks the best variant this CPU supports at run time. */
#ifndef CX_REDUCE_H
#define CX_REDUCE_H

#include <stddef.h>

typedef void (*cx_reduce_fn)(void *dst, const void *a, const void *b, size_t n);

enum { CX_VARIANT_SCALAR = 0, CX_VARIANT_AVX2 = 1, CX_VARIANT_AVX512 = 2, CX_NVARIANTS = 3 };

/* Best kernel for (op, dtype) on this CPU, or NULL when op/dtype is out of range. */
cx_reduce_fn cx_reduce_get(int op, int dtype);
/* A given variant, or NULL when this CPU (or this build) lacks it. */
cx_reduce_fn cx_reduce_get_variant(int op, int dtype, int variant);
/* Name of the variant cx_reduce_get would use ("scalar", "avx2", "avx512"). */
const char *cx_reduce_variant_name(int dtype);

/* Finish an AVERAGE: buf[i] = buf[i] / divisor. Floats divide (float16/bfloat16 through
 * float32); integers divide truncating toward zero, as C does. */
void cx_average_finish(void *buf, int dtype, size_t n, int divisor);

#endif
