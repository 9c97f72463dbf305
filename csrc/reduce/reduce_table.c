/* reduce_table.c - picks the kernel variant at run time, once.
 *
 * The first call fills one table per variant this CPU supports (__builtin_cpu_supports,
 * which also checks that the OS saves the wide registers) and chooses, per dtype, the
 * widest variant that has a kernel. COLLX_REDUCE_VARIANT=scalar|avx2|avx512|auto, read
 * once, caps that choice for debugging; asking for a variant the CPU lacks says so on
 * stderr and uses the best one it has below it. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "reduce_internal.h"

static const char *const cx_variant_names[CX_NVARIANTS] = {"scalar", "avx2", "avx512"};

static cx_reduce_variant cx_variants[CX_NVARIANTS];
static int cx_have[CX_NVARIANTS];
static int cx_best[CX_NDTYPES];
static pthread_once_t cx_once = PTHREAD_ONCE_INIT;

static int cx_env_cap(void)
{
    const char *env = getenv("COLLX_REDUCE_VARIANT");
    if (!env || !*env || !strcmp(env, "auto"))
        return CX_NVARIANTS - 1;
    for (int v = 0; v < CX_NVARIANTS; v++)
        if (!strcmp(env, cx_variant_names[v])) {
            if (!cx_have[v])
                fprintf(stderr, "collx: COLLX_REDUCE_VARIANT=%s: this CPU or build lacks it; "
                        "using the best variant below it\n", env);
            return v;
        }
    fprintf(stderr, "collx: COLLX_REDUCE_VARIANT=%s is not one of scalar, avx2, avx512, "
            "auto; ignored\n", env);
    return CX_NVARIANTS - 1;
}

static void cx_reduce_init(void)
{
    cx_reduce_fill_scalar(&cx_variants[CX_VARIANT_SCALAR]);
    cx_have[CX_VARIANT_SCALAR] = 1;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) {
        cx_reduce_fill_avx2(&cx_variants[CX_VARIANT_AVX2]);
        cx_have[CX_VARIANT_AVX2] = 1;
    }
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) {
        cx_reduce_fill_avx512(&cx_variants[CX_VARIANT_AVX512]);
        cx_have[CX_VARIANT_AVX512] = 1;
    }
#endif
    int cap = cx_env_cap();
    for (int dt = 0; dt < CX_NDTYPES; dt++) {
        int v = cap;
        while (v > 0 && !cx_variants[v].fn[CX_SUM][dt])
            v--;
        cx_best[dt] = v;
    }
}

static void cx_reduce_ready(void) { pthread_once(&cx_once, cx_reduce_init); }

static int cx_kernel_op(int op) { return op == CX_AVERAGE ? CX_SUM : op; }

cx_reduce_fn cx_reduce_get_variant(int op, int dtype, int variant)
{
    if (op < 0 || op >= CX_NREDOPS || dtype < 0 || dtype >= CX_NDTYPES || variant < 0 ||
        variant >= CX_NVARIANTS)
        return NULL;
    cx_reduce_ready();
    return cx_variants[variant].fn[cx_kernel_op(op)][dtype];
}

cx_reduce_fn cx_reduce_get(int op, int dtype)
{
    if (dtype < 0 || dtype >= CX_NDTYPES)
        return NULL;
    cx_reduce_ready();
    return cx_reduce_get_variant(op, dtype, cx_best[dtype]);
}

const char *cx_reduce_variant_name(int dtype)
{
    if (dtype < 0 || dtype >= CX_NDTYPES)
        return "unknown";
    cx_reduce_ready();
    return cx_variant_names[cx_best[dtype]];
}

const cx_reduce_variant *cx_reduce_best(int dtype)
{
    cx_reduce_ready();
    return &cx_variants[cx_best[dtype]];
}
