/* cx.h - the constants of collx, defined once. Python reads them from collx._C
 * (never re-declares them): dtypes, reduction ops, step kinds, buffer ids, status codes.
 * Also the packed schedule format the executor runs and the one check macro. */
#ifndef CX_H
#define CX_H

#include <stddef.h>
#include <stdint.h>

/* ---- status: the one status type ------------------------------------------------ */
typedef enum cx_status {
    CX_OK = 0,
    CX_INPROGRESS = 1,       /* not an error: call again */
    CX_ERR_INVALID = 2,      /* programmer error: bad argument, bad schedule       -> InvalidUsage */
    CX_ERR_TRANSPORT = 3,    /* a peer vanished or the wire broke                  -> TransportError */
    CX_ERR_TIMEOUT = 4,      /* the deadline passed                                -> CollxTimeout */
    CX_ERR_MISMATCH = 5,     /* ranks disagree (op fingerprint, size, tag)         -> MismatchError */
    CX_ERR_NOMEM = 6,        /* allocation or mapping failed                       -> CollxError */
    CX_ERR_SYSTEM = 7,       /* an unexpected errno                                -> CollxError */
} cx_status;

/* Thread-local text of the last error (file:line + message), filled by cx_set_error. */
const char *cx_last_error(void);
int cx_last_error_peer(void);   /* rank the last error names, or -1 */
cx_status cx_set_error(cx_status st, int peer, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

#define CX_ERROR(st, peer, ...) cx_set_error((st), (peer), __FILE__, __LINE__, __VA_ARGS__)

/* The one check macro: propagate a failing status, logging file:line on the way up. */
#define CX_CHECK(expr)                                                                 \
    do {                                                                               \
        cx_status cx_st_ = (expr);                                                     \
        if (cx_st_ != CX_OK && cx_st_ != CX_INPROGRESS) {                              \
            cx_trace_error(cx_st_, __FILE__, __LINE__, #expr);                         \
            return cx_st_;                                                             \
        }                                                                              \
    } while (0)
void cx_trace_error(cx_status st, const char *file, int line, const char *expr);

/* ---- dtypes ---------------------------------------------------------------------- */
typedef enum cx_dtype {
    CX_FLOAT16 = 0, CX_FLOAT32 = 1, CX_FLOAT64 = 2, CX_BFLOAT16 = 3,
    CX_INT8 = 4, CX_UINT8 = 5, CX_INT32 = 6, CX_INT64 = 7,
    CX_NDTYPES = 8
} cx_dtype;
size_t cx_dtype_size(int dtype);
const char *cx_dtype_name(int dtype);

/* ---- reduction ops ----------------------------------------------------------------- */
/* AVERAGE is SUM on the wire; the executor scales the result once at the end. */
typedef enum cx_redop {
    CX_SUM = 0, CX_PROD = 1, CX_MIN = 2, CX_MAX = 3, CX_AVERAGE = 4,
    CX_NREDOPS = 5
} cx_redop;

/* ---- packed schedules ----------------------------------------------------------- */
/* Buffers a step names. IN and OUT may alias (in-place calls); schedules are generated
 * so that aliasing is harmless. SCRATCH is allocated by the executor (plan->scratch_bytes). */
enum { CX_BUF_IN = 0, CX_BUF_OUT = 1, CX_BUF_SCRATCH = 2, CX_NBUFS = 3 };

/* Step vocabulary. Messages between two ranks match in FIFO order per direction:
 * the k-th SEND from a to b is the k-th RECV* on b from a; sizes must agree. */
typedef enum cx_step_kind {
    CX_STEP_SEND = 0,        /* send [buf,off,nbytes] to peer                                 */
    CX_STEP_RECV = 1,        /* receive from peer into [buf,off,nbytes]                       */
    CX_STEP_RECV_REDUCE = 2, /* [buf,off] = [src_buf,src_off] (op) incoming, nbytes each      */
    CX_STEP_COPY = 3,        /* [buf,off,nbytes] = [src_buf,src_off,nbytes] (local)           */
    CX_NSTEP_KINDS = 4
} cx_step_kind;

/* One step, 48 bytes, little-endian, exactly as collx/algos/pack.py writes it
 * (struct format "<BBBBiQQQiiQ"). */
typedef struct cx_step {
    uint8_t kind;      /* cx_step_kind */
    uint8_t buf;       /* destination / send buffer id */
    uint8_t src_buf;   /* source buffer id for RECV_REDUCE and COPY */
    uint8_t flags;     /* reserved, 0 */
    int32_t peer;      /* rank, for SEND / RECV / RECV_REDUCE; -1 otherwise */
    uint64_t off;      /* byte offset into buf */
    uint64_t src_off;  /* byte offset into src_buf */
    uint64_t nbytes;   /* bytes (a multiple of the dtype size) */
    int32_t dep_start; /* index of the first dependency in the plan's deps array */
    int32_t ndeps;     /* steps (indices into this rank's step list) that must be done first */
    uint64_t pad;      /* reserved, 0 */
} cx_step;

_Static_assert(sizeof(cx_step) == 48, "cx_step must stay 48 bytes (collx/algos/pack.py)");

#endif /* CX_H */
