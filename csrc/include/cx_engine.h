/* cx_engine.h - the executor: runs one rank's packed schedule over its connections.
 *
 * A plan is a validated copy of one rank's steps (cx_step) and dependency array, built
 * once per (collective, size, dtype) and replayed. A comm owns the connections to the
 * other ranks and the reusable per-call state (transfer records, scratch). cx_execute
 * posts every step whose dependencies are done (and whose channel predecessor is posted,
 * which keeps FIFO matching), drives the transports' progress, and checks the deadline
 * and the peers' liveness while it waits. It never sleeps longer than a poll tick and
 * never holds the GIL (the binding releases it). One cx_execute at a time per comm. */
#ifndef CX_ENGINE_H
#define CX_ENGINE_H

#include "cx.h"
#include "cx_transport.h"

typedef struct cx_plan {
    int nsteps;
    cx_step *steps;
    int32_t *deps;
    int32_t *chan_prev;      /* previous step on the same (peer, direction), or -1 */
    size_t scratch_bytes;
    size_t need[CX_NBUFS];   /* bytes each buffer must have (max extent touched) */
    int reduces;             /* any RECV_REDUCE step */
} cx_plan;

cx_status cx_plan_create(const void *steps, size_t steps_len, const void *deps, size_t deps_len,
                         size_t scratch_bytes, int world_size, int self, cx_plan **out);
void cx_plan_destroy(cx_plan *p);

typedef struct cx_comm {
    int rank, size;
    cx_conn **conns;         /* [size]; NULL for self and for ranks not connected */
    int broken;              /* set after a transport error: every later call fails fast */
    unsigned long spin;      /* idle passes that only pause before yielding the core (0 when
                              * ranks outnumber cores: a spinning rank steals the peer's CPU) */
    double yield_s;          /* spin 0: seconds a wait yields the core before it sleeps */
    char broken_msg[512];
    /* per-call state, grown on demand and reused */
    cx_xfer *xfers;
    uint8_t *state;
    int cap;
    void *scratch;
    size_t scratch_cap;
} cx_comm;

cx_status cx_comm_create(int rank, int size, cx_comm **out);
/* Takes ownership of conn (destroyed with the comm). */
cx_status cx_comm_set_conn(cx_comm *c, int peer, cx_conn *conn);
void cx_comm_destroy(cx_comm *c);

typedef struct cx_call {
    void *in;  size_t in_len;
    void *out; size_t out_len;
    int dtype, redop;
    int average_divisor;     /* AVERAGE: divide OUT by this at the end (0/1: no division) */
    uint32_t fingerprint;
    double timeout_s;        /* <= 0: no deadline */
} cx_call;

cx_status cx_execute(cx_comm *c, const cx_plan *p, const cx_call *call);

double cx_now(void);         /* monotonic seconds */

#endif
