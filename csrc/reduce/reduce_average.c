/* reduce_average.c - the end of an AVERAGE: buf[i] /= divisor, once, after the SUMs.
 *
 * Floats divide by (float)divisor or (double)divisor through the chosen variant (half types
 * through float32, rounded to nearest even). Integers divide as C does, truncating toward
 * zero, with the quotient wrapped into the type; INT_MIN / -1 wraps instead of trapping.
 * divisor 1 leaves buf as it is; divisor 0 is refused by the callers and does nothing. */
#include "reduce_internal.h"

#define CX_INT_DIV(T, UT)                                                                 \
    static void div_##T(void *buf, size_t n, int divisor)                                 \
    {                                                                                     \
        char *p = buf;                                                                    \
        for (size_t i = 0; i < n; i++) {                                                  \
            T v;                                                                          \
            memcpy(&v, p + i * sizeof v, sizeof v);                                       \
            if (divisor == -1) /* negate in the unsigned type: wraps, no UB */            \
                v = (T)(UT)(0u - (UT)v);                                                  \
            else                                                                          \
                v = (T)(v / divisor);                                                     \
            memcpy(p + i * sizeof v, &v, sizeof v);                                       \
        }                                                                                 \
    }
CX_INT_DIV(int8_t, uint8_t)
CX_INT_DIV(uint8_t, uint8_t)
CX_INT_DIV(int32_t, uint32_t)
CX_INT_DIV(int64_t, uint64_t)

void cx_average_finish(void *buf, int dtype, size_t n, int divisor)
{
    if (dtype < 0 || dtype >= CX_NDTYPES || n == 0 || divisor == 0 || divisor == 1)
        return;
    cx_div_fn div = cx_reduce_best(dtype)->div[dtype];
    switch (dtype) {
    case CX_INT8: div = div_int8_t; break;
    case CX_UINT8: div = div_uint8_t; break;
    case CX_INT32: div = div_int32_t; break;
    case CX_INT64: div = div_int64_t; break;
    default: break;
    }
    div(buf, n, divisor);
}
