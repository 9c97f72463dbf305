/* status.c - the error side of cx_status: thread-local last-error text and the trace the
 * check macro leaves on the way up, plus dtype facts. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cx.h"

static _Thread_local char cx_err_text[1024];
static _Thread_local int cx_err_peer = -1;

const char *cx_last_error(void) { return cx_err_text; }
int cx_last_error_peer(void) { return cx_err_peer; }

cx_status cx_set_error(cx_status st, int peer, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cx_err_text, sizeof cx_err_text, fmt, ap);
    va_end(ap);
    cx_err_peer = peer;
    if (getenv("COLLX_DEBUG_C"))
        fprintf(stderr, "collx: %s:%d: status %d: %s\n", file, line, (int)st, cx_err_text);
    return st;
}

void cx_trace_error(cx_status st, const char *file, int line, const char *expr)
{
    if (getenv("COLLX_DEBUG_C"))
        fprintf(stderr, "collx:   at %s:%d: %s -> %d\n", file, line, expr, (int)st);
}

static const size_t cx_sizes[CX_NDTYPES] = {2, 4, 8, 2, 1, 1, 4, 8};
static const char *const cx_names[CX_NDTYPES] = {"float16", "float32", "float64", "bfloat16",
                                                 "int8", "uint8", "int32", "int64"};

size_t cx_dtype_size(int dtype)
{
    return (dtype >= 0 && dtype < CX_NDTYPES) ? cx_sizes[dtype] : 0;
}

const char *cx_dtype_name(int dtype)
{
    return (dtype >= 0 && dtype < CX_NDTYPES) ? cx_names[dtype] : "?";
}
