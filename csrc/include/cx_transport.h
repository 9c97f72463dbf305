/* cx_transport.h - the one transport interface.
 *
 * A connection (cx_conn) joins this rank to one peer. The engine posts transfers
 * (cx_xfer) on it and calls progress(); the transport moves bytes and marks each transfer
 * done. Rules every transport keeps:
 *   - Matching is FIFO per direction: the k-th send posted on a's conn to b meets the
 *     k-th receive posted on b's conn to a. Each message carries (nbytes, fingerprint);
 *     a receiver whose posted nbytes or fingerprint differs fails with CX_ERR_MISMATCH.
 *   - progress() never blocks: it does what it can and returns CX_OK (or an error status,
 *     after cx_set_error naming the peer). A dead peer is CX_ERR_TRANSPORT.
 *   - A receive with fn != NULL reduces while it receives: dst = src (op) incoming, in
 *     whole elements of itemsize bytes; fn == NULL is a plain receive into dst.
 *   - A send is done when its buffer may be reused (eager copy taken, or the peer has
 *     read it).
 *   - No transport starts a thread. No transport knows about algorithms.
 * Connections are made by the control plane (Python, collx/transports), which
 * authenticates the peer and hands a connected socket to the transport's constructor. */
#ifndef CX_TRANSPORT_H
#define CX_TRANSPORT_H

#include "cx.h"
#include "cx_reduce.h"

typedef struct cx_conn cx_conn;

typedef struct cx_xfer {
    /* set by the engine before posting */
    int is_send;
    void *dst;              /* receive: destination (plain or reduced)        */
    const void *src;        /* send: the data; reduce-receive: left operand   */
    size_t nbytes;
    cx_reduce_fn fn;        /* reduce-receive kernel, or NULL                 */
    size_t itemsize;        /* element size for fn                            */
    uint32_t fingerprint;   /* identifies the collective call; both sides agree */
    /* owned by the transport */
    int done;               /* set to 1 by the transport when complete        */
    size_t progress;        /* bytes moved so far                             */
    uint64_t tstate[4];     /* transport-private scratch                      */
    struct cx_xfer *next;   /* transport's queue link                         */
} cx_xfer;

#define CX_WAIT_READY (-2)

typedef struct cx_conn_ops {
    const char *name;                                    /* "shm", "tcp" */
    cx_status (*post)(cx_conn *c, cx_xfer *x);           /* queue a send or receive */
    cx_status (*progress)(cx_conn *c);                   /* move bytes; never blocks */
    /* fd to poll when idle (-1 if none, CX_WAIT_READY if progress is possible right now:
     * do not sleep); *events gets POLLIN, plus POLLOUT while a send is blocked on a full
     * socket (never POLLOUT alone: it is almost always ready) */
    int (*wait_fd)(cx_conn *c, short *events);
    void (*destroy)(cx_conn *c);                         /* close and free */
    /* Optional (may be NULL): tell the peer we abandon the communicator after an error of
     * ours, so its error names the cause instead of "rank gone". */
    void (*notify_abort)(cx_conn *c);
} cx_conn_ops;

struct cx_conn {
    const cx_conn_ops *ops;
    int peer;               /* peer rank */
    int self;               /* own rank */
    int alive_fd;           /* a socket to the peer: EOF/HUP on it means the peer is gone */
    int alive_is_data;      /* alive_fd also carries data (tcp): never read it for notices */
    int npending;           /* posted and not yet done (kept by the transport) */
    int peer_aborted;       /* the transport read the peer's abort notice off alive_fd */
    void *impl;
};

/* Check the peer is alive: poll alive_fd without blocking. CX_ERR_TRANSPORT if gone. */
cx_status cx_conn_check_alive(cx_conn *c);
/* Read the notes a peer wrote on a non-data alive_fd ('W' wake-ups; 'A' = it aborted, which
 * sets peer_aborted). Never blocks. */
void cx_conn_drain_notes(cx_conn *c);

#endif
