/* exec.c - the communicator and the executor loop.
 *
 * Loop, per call:
 *   1. post: walk steps from the first unfinished one; a step is posted when its deps are
 *      done and the previous step on its (peer, direction) channel is posted — posting in
 *      list order per channel is what makes FIFO matching line up across ranks. COPY steps
 *      run at once.
 *   2. progress: each connection with pending transfers moves bytes (never blocks).
 *   3. retire: posted steps whose transfer is done become done.
 *   4. idle: nothing moved -> spin briefly, then yield, then poll the sockets for a tick;
 *      every few ms check the deadline and that every peer is still alive.
 * On any error the comm is marked broken and its connections are closed, so peers blocked
 * on us see the close and fail fast too: an abort always finishes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cx_engine.h"

enum { ST_WAIT = 0, ST_POSTED = 1, ST_DONE = 2 };

double cx_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

cx_status cx_comm_create(int rank, int size, cx_comm **out)
{
    if (size < 1 || rank < 0 || rank >= size)
        return CX_ERROR(CX_ERR_INVALID, -1, "comm: rank %d of size %d", rank, size);
    cx_comm *c = calloc(1, sizeof *c);
    if (!c || !(c->conns = calloc((size_t)size, sizeof(cx_conn *)))) {
        free(c);
        return CX_ERROR(CX_ERR_NOMEM, -1, "comm: out of memory");
    }
    c->rank = rank;
    c->size = size;
    c->spin = 4096;
    c->yield_s = 50e-6;
    *out = c;
    return CX_OK;
}

cx_status cx_comm_set_conn(cx_comm *c, int peer, cx_conn *conn)
{
    if (peer < 0 || peer >= c->size || peer == c->rank)
        return CX_ERROR(CX_ERR_INVALID, peer, "comm: bad peer %d", peer);
    if (c->conns[peer])
        c->conns[peer]->ops->destroy(c->conns[peer]);
    c->conns[peer] = conn;
    return CX_OK;
}

static void close_all(cx_comm *c)
{
    for (int i = 0; i < c->size; i++)
        if (c->conns[i]) {
            c->conns[i]->ops->destroy(c->conns[i]);
            c->conns[i] = NULL;
        }
}

void cx_comm_destroy(cx_comm *c)
{
    if (!c)
        return;
    close_all(c);
    free(c->conns);
    free(c->xfers);
    free(c->state);
    free(c->scratch);
    free(c);
}

static cx_status reserve(cx_comm *c, const cx_plan *p)
{
    if (p->nsteps > c->cap) {
        int cap = p->nsteps + 16;
        cx_xfer *x = realloc(c->xfers, sizeof(cx_xfer) * (size_t)cap);
        if (x)
            c->xfers = x;
        uint8_t *s = realloc(c->state, (size_t)cap);
        if (s)
            c->state = s;
        if (!x || !s)
            return CX_ERROR(CX_ERR_NOMEM, -1, "executor: out of memory for %d steps", p->nsteps);
        c->cap = cap;
    }
    if (p->scratch_bytes > c->scratch_cap) {
        void *s = realloc(c->scratch, p->scratch_bytes);
        if (!s)
            return CX_ERROR(CX_ERR_NOMEM, -1, "executor: cannot allocate %zu B scratch",
                            p->scratch_bytes);
        c->scratch = s;
        c->scratch_cap = p->scratch_bytes;
    }
    return CX_OK;
}

/* Abort: remember why, close every connection (peers waiting on us then fail fast). */
static cx_status fail(cx_comm *c, cx_status st)
{
    if (st == CX_ERR_TRANSPORT || st == CX_ERR_TIMEOUT || st == CX_ERR_MISMATCH ||
        st == CX_ERR_SYSTEM) {
        c->broken = 1;
        snprintf(c->broken_msg, sizeof c->broken_msg, "%s", cx_last_error());
        for (int i = 0; i < c->size; i++)
            if (c->conns[i] && c->conns[i]->ops->notify_abort)
                c->conns[i]->ops->notify_abort(c->conns[i]);
        close_all(c);
    }
    return st;
}

/* Check the peers this call still waits on (a peer that finished its part and shut down
 * cleanly is not an error). A close seen here may race with the peer's last message, so the
 * caller retries progress once before it believes the peer is gone. */
static cx_status check_peers(cx_comm *c, const cx_plan *p, const uint8_t *state, int first)
{
    for (int i = first; i < p->nsteps; i++) {
        const cx_step *s = &p->steps[i];
        if (state[i] != ST_DONE && s->kind != CX_STEP_COPY && c->conns[s->peer])
            CX_CHECK(cx_conn_check_alive(c->conns[s->peer]));
    }
    return CX_OK;
}

/* Describe what step i waits for, for timeout messages. */
static void describe_wait(const cx_plan *p, const uint8_t *state, char *buf, size_t len)
{
    static const char *const kinds[] = {"send to", "receive from", "reduce-receive from", "copy"};
    for (int i = 0; i < p->nsteps; i++)
        if (state[i] != ST_DONE) {
            const cx_step *s = &p->steps[i];
            snprintf(buf, len, "step %d/%d: %s rank %d, %llu bytes (%s)", i, p->nsteps,
                     kinds[s->kind], s->peer, (unsigned long long)s->nbytes,
                     state[i] == ST_POSTED ? "posted" : "waiting for earlier steps");
            return;
        }
    snprintf(buf, len, "nothing");
}

static int first_waiting_peer(const cx_plan *p, const uint8_t *state)
{
    for (int i = 0; i < p->nsteps; i++)
        if (state[i] != ST_DONE && p->steps[i].kind != CX_STEP_COPY)
            return p->steps[i].peer;
    return -1;
}

/* Spinning on: CX_IDLE_YIELDS yields after the spins, then sleep. Spinning off (more ranks
 * than cores): yield for c->yield_s of wall time, then sleep until a doorbell or socket.
 * The window is time, not a count: a yield returns at once when no other process waits for
 * this core, so 16 yields were ~5 us — shorter than a peer's Python between two collectives
 * — and a rank that slept costs a doorbell wake-up (tens of us in a VM) on every hop. With
 * 4 ranks on 2 cores a count of 16 made an 8-byte allgather (two collectives) 300-900 us;
 * a 50 us window makes it ~60 us (200 us: no better, and training at np 4 lost ~10%). */
#define CX_IDLE_YIELDS 65536
#define CX_IDLE_SLEEP_MS 2

static cx_status idle_wait(cx_comm *c, unsigned long idle, double *yield_since)
{
    if (idle < c->spin) {
        cpu_relax();
        return CX_OK;
    }
    if (c->spin) {
        if (idle < c->spin + CX_IDLE_YIELDS) {
            sched_yield();
            return CX_OK;
        }
    } else if (c->yield_s > 0) {
        double now = cx_now();
        if (*yield_since == 0)
            *yield_since = now;
        if (now - *yield_since < c->yield_s) {
            sched_yield();
            return CX_OK;
        }
    }
    /* long wait: sleep on the sockets / shm doorbells (bounded, for the periodic checks) */
    struct pollfd fds[64];
    int n = 0;
    for (int i = 0; i < c->size && n < 64; i++)
        if (c->conns[i] && c->conns[i]->npending > 0) {
            short ev = 0;
            int fd = c->conns[i]->ops->wait_fd(c->conns[i], &ev);
            if (fd == CX_WAIT_READY)
                return CX_OK;               /* something arrived while we got ready to sleep */
            if (fd >= 0)
                fds[n++] = (struct pollfd){.fd = fd, .events = ev};
        }
    if (n)
        poll(fds, (nfds_t)n, CX_IDLE_SLEEP_MS);
    else
        sched_yield();
    return CX_OK;
}

cx_status cx_execute(cx_comm *c, const cx_plan *p, const cx_call *call)
{
    if (c->broken)
        return CX_ERROR(CX_ERR_TRANSPORT, -1, "communicator is broken by an earlier error (%s); "
                        "shut down and re-initialize", c->broken_msg);
    if (p->need[CX_BUF_IN] > call->in_len || p->need[CX_BUF_OUT] > call->out_len)
        return CX_ERROR(CX_ERR_INVALID, -1, "executor: buffers too small for the plan (input "
                        "%zu < %zu or output %zu < %zu bytes)", call->in_len,
                        p->need[CX_BUF_IN], call->out_len, p->need[CX_BUF_OUT]);
    size_t isz = cx_dtype_size(call->dtype);
    if (!isz)
        return CX_ERROR(CX_ERR_INVALID, -1, "executor: unknown dtype code %d", call->dtype);
    cx_reduce_fn fn = NULL;
    if (p->reduces && !(fn = cx_reduce_get(call->redop, call->dtype)))
        return CX_ERROR(CX_ERR_INVALID, -1, "executor: no %d kernel for dtype %s", call->redop,
                        cx_dtype_name(call->dtype));
    CX_CHECK(reserve(c, p));

    char *bufs[CX_NBUFS] = {call->in, call->out, c->scratch};
    uint8_t *state = c->state;
    cx_xfer *xf = c->xfers;
    const int n = p->nsteps;
    memset(state, ST_WAIT, (size_t)n);
    for (int i = 0; i < n; i++)
        if (p->steps[i].kind != CX_STEP_COPY && !c->conns[p->steps[i].peer])
            return CX_ERROR(CX_ERR_INVALID, p->steps[i].peer, "executor: no connection to rank "
                            "%d", p->steps[i].peer);

    const double deadline = call->timeout_s > 0 ? cx_now() + call->timeout_s : 0;
    double next_check = 0;
    int first = 0, ndone = 0;
    unsigned long idle = 0;
    double yield_since = 0;          /* when this wait began yielding (spinning off) */
    int retried_dead = 0;
    cx_status st;

    while (ndone < n) {
        int moved = 0;
        /* 1. post */
        for (int i = first; i < n; i++) {
            if (state[i] != ST_WAIT)
                continue;
            const cx_step *s = &p->steps[i];
            int ready = p->chan_prev[i] < 0 || state[p->chan_prev[i]] != ST_WAIT;
            for (int k = 0; ready && k < s->ndeps; k++)
                ready = state[p->deps[s->dep_start + k]] == ST_DONE;
            if (!ready)
                continue;
            moved = 1;
            if (s->kind == CX_STEP_COPY) {
                char *d = bufs[s->buf] + s->off, *src = bufs[s->src_buf] + s->src_off;
                if (d != src && s->nbytes)
                    memmove(d, src, s->nbytes);
                state[i] = ST_DONE;
                ndone++;
                continue;
            }
            cx_xfer *x = &xf[i];
            memset(x, 0, sizeof *x);
            x->nbytes = s->nbytes;
            x->fingerprint = call->fingerprint;
            x->itemsize = isz;
            if (s->kind == CX_STEP_SEND) {
                x->is_send = 1;
                x->src = bufs[s->buf] + s->off;
            } else {
                x->dst = bufs[s->buf] + s->off;
                if (s->kind == CX_STEP_RECV_REDUCE) {
                    x->src = bufs[s->src_buf] + s->src_off;
                    x->fn = fn;
                }
            }
            cx_conn *cn = c->conns[s->peer];
            if ((st = cn->ops->post(cn, x)) != CX_OK)
                return fail(c, st);
            state[i] = ST_POSTED;
        }
        /* 2. progress */
        for (int r = 0; r < c->size; r++) {
            cx_conn *cn = c->conns[r];
            if (cn && cn->npending > 0 && (st = cn->ops->progress(cn)) != CX_OK)
                return fail(c, st);
        }
        /* 3. retire */
        for (int i = first; i < n; i++)
            if (state[i] == ST_POSTED && xf[i].done) {
                state[i] = ST_DONE;
                ndone++;
                moved = 1;
            }
        while (first < n && state[first] == ST_DONE)
            first++;
        if (moved) {
            idle = 0;
            yield_since = 0;
            retried_dead = 0;
            continue;
        }
        /* 4. idle */
        if ((++idle & 63) == 0) {
            double now = cx_now();
            if (now >= next_check) {
                next_check = now + 0.005;
                if ((st = check_peers(c, p, state, first)) != CX_OK) {
                    if (retried_dead)
                        return fail(c, st);
                    retried_dead = 1;        /* one more full pass before believing it */
                    next_check = 0;
                    continue;
                }
                retried_dead = 0;
                if (deadline && now > deadline) {
                    char what[256];
                    describe_wait(p, state, what, sizeof what);
                    int peer = first_waiting_peer(p, state);
                    cx_set_error(CX_ERR_TIMEOUT, peer, __FILE__, __LINE__,
                                 "rank %d timed out after %.3g s waiting on rank %d (%s); is "
                                 "rank %d stuck, or did the ranks call different collectives? "
                                 "raise COLLX_TIMEOUT or the call's timeout= if it is just slow",
                                 c->rank, call->timeout_s, peer, what, peer);
                    return fail(c, CX_ERR_TIMEOUT);
                }
            }
        }
        idle_wait(c, idle, &yield_since);
    }
    /* Not conditioned on this rank's steps reducing: a rank whose ring block is empty
     * receives only finished sums and must still divide them. */
    if (call->redop == CX_AVERAGE && call->average_divisor > 1 && call->out_len)
        cx_average_finish(call->out, call->dtype, call->out_len / isz, call->average_divisor);
    return CX_OK;
}
