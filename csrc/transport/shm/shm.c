/* shm.c - shared-memory transport: one mapped segment per pair of ranks on a host.
 *
 * The segment holds two one-way queues (lower->higher, higher->lower) of CX_SHM_SLOTS
 * slots. Message k of a direction uses slot k % SLOTS:
 *   - eager (nbytes <= eager): the sender copies the payload into the slot (into the
 *     slot's own cache line when it fits in 32 bytes) and publishes
 *     slot.seq = k+1; its send is done at once. The receiver copies (or reduces) straight
 *     out of the slot.
 *   - large: the sender publishes only (address, nbytes); the receiver pulls the bytes out
 *     of the sender's memory with process_vm_readv (Cross Memory Attach): ONE copy, directly
 *     into the destination, or piecewise into a cache-sized bounce that is reduced at once
 *     (the copy is fused with the reduction while the bounce is hot in cache). The send is
 *     done when the receiver advances tail past k.
 * The receiver advances tail = k+1 when message k is consumed, freeing the slot. Both
 * indices only grow, so no locks: release stores publish, acquire loads observe.
 * Nothing here blocks or spins: progress does what is possible and returns.
 *
 * Doorbell (for ranks that sleep instead of spinning, e.g. more ranks than cores): before
 * the executor sleeps in poll(), wait_fd raises the ring's rx_sleep (waiting for a slot)
 * and/or tx_sleep (waiting for the tail) flag, re-checks the ring, and returns the pair's
 * socket. The other side, after publishing a slot or advancing the tail, checks the flag
 * (a full fence on both sides orders flag and index, so one of them always sees the other)
 * and, if it was raised, clears it and writes one 'W' byte to the socket. wait_fd drains
 * those bytes before the next sleep; an 'A' (the peer aborted) found there is remembered
 * for the liveness check. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cx_shm.h"

#define CX_SHM_SLOTS 32u
#define CX_SHM_MAGIC 0x636f6c6c78736d31ull /* "collxsm1" */
#define CX_SHM_BOUNCE (256u << 10)           /* reduce piece: stays in L2 */
#define CX_SHM_BUDGET (4u << 20)             /* bytes pulled per progress call per conn */

enum { KIND_EAGER = 0, KIND_CMA = 1 };

typedef struct slot {
    uint64_t seq;          /* k+1 once message k is published */
    uint64_t nbytes;
    uint64_t addr;         /* KIND_CMA: sender's address */
    uint32_t fingerprint;
    uint32_t kind;
    char inline_data[32];  /* eager payloads of <= 32 bytes: one cache line per message */
} slot;
_Static_assert(sizeof(slot) == 64, "a slot is one cache line");

typedef struct ring {
    uint64_t tail;         /* messages consumed (written by the receiver) */
    uint32_t rx_sleep;     /* the receiver sleeps until a slot is published: ring the bell */
    uint32_t tx_sleep;     /* the sender sleeps until the tail moves: ring the bell */
    char pad[48];
    slot slots[CX_SHM_SLOTS];
} ring;

typedef struct seg_header {
    uint64_t magic;
    uint64_t eager;
    char pad[48];
} seg_header;

typedef struct shm_conn {
    cx_conn base;
    void *map;
    size_t map_len;
    ring *out_ring, *in_ring;     /* we send on out_ring, receive on in_ring */
    char *out_payload, *in_payload;
    size_t eager;
    pid_t peer_pid;
    uint64_t sent, received;      /* messages published / consumed by us */
    cx_xfer *sq_head, *sq_tail;   /* sends: FIFO; published ones have tstate[0] = k+1 */
    cx_xfer *rq_head, *rq_tail;   /* receives: FIFO */
    char *bounce;
} shm_conn;

static inline uint64_t load_acq(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_rel(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* After publishing (ours: the slot seq or the tail): if the peer said it sleeps on `flag`,
 * clear it and wake the peer through the pair's socket. */
static void ring_bell(shm_conn *s, uint32_t *flag)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(flag, __ATOMIC_RELAXED) && __atomic_exchange_n(flag, 0, __ATOMIC_SEQ_CST)) {
        ssize_t ignored = send(s->base.alive_fd, "W", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)ignored;   /* a full socket already holds a wake-up byte */
    }
}

static size_t ring_bytes(size_t eager) { return sizeof(ring) + CX_SHM_SLOTS * eager; }
static size_t seg_bytes(size_t eager) { return sizeof(seg_header) + 2 * ring_bytes(eager); }

void cx_shm_allow_cma(void)
{
#ifdef PR_SET_PTRACER
    prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0); /* harmless where Yama is absent */
#endif
}

cx_status cx_shm_unlink(const char *name)
{
    if (shm_unlink(name) < 0 && errno != ENOENT)
        return CX_ERROR(CX_ERR_SYSTEM, -1, "shm_unlink(%s): %s", name, strerror(errno));
    return CX_OK;
}

static void queue_push(cx_xfer **head, cx_xfer **tail, cx_xfer *x)
{
    x->next = NULL;
    if (*tail)
        (*tail)->next = x;
    else
        *head = x;
    *tail = x;
}

static cx_status shm_post(cx_conn *c, cx_xfer *x)
{
    shm_conn *s = (shm_conn *)c;
    x->done = 0;
    x->progress = 0;
    x->tstate[0] = 0;
    if (x->is_send)
        queue_push(&s->sq_head, &s->sq_tail, x);
    else
        queue_push(&s->rq_head, &s->rq_tail, x);
    c->npending++;
    return CX_OK;
}

static cx_status progress_sends_inner(shm_conn *s);

static cx_status progress_sends(shm_conn *s)
{
    uint64_t sent0 = s->sent;
    cx_status st = progress_sends_inner(s);
    if (s->sent != sent0)
        ring_bell(s, &s->out_ring->rx_sleep);
    return st;
}

static cx_status progress_sends_inner(shm_conn *s)
{
    uint64_t tail = load_acq(&s->out_ring->tail);
    cx_xfer **link = &s->sq_head, *prev = NULL;
    while (*link) {
        cx_xfer *x = *link;
        if (!x->tstate[0]) {                   /* not yet published */
            if (s->sent - tail >= CX_SHM_SLOTS)
                break;                          /* queue full; later sends must wait too */
            uint64_t k = s->sent++;
            slot *sl = &s->out_ring->slots[k % CX_SHM_SLOTS];
            sl->nbytes = x->nbytes;
            sl->fingerprint = x->fingerprint;
            if (x->nbytes <= s->eager) {
                sl->kind = KIND_EAGER;
                if (x->nbytes)      /* tiny payloads ride in the slot's own cache line */
                    memcpy(x->nbytes <= sizeof sl->inline_data
                               ? sl->inline_data
                               : s->out_payload + (k % CX_SHM_SLOTS) * s->eager,
                           x->src, x->nbytes);
                x->done = 1;                    /* the buffer may be reused now */
            } else {
                sl->kind = KIND_CMA;
                sl->addr = (uint64_t)(uintptr_t)x->src;
            }
            x->tstate[0] = k + 1;
            store_rel(&sl->seq, k + 1);
        } else if (tail >= x->tstate[0]) {
            x->done = 1;                        /* the peer has pulled it */
        }
        if (x->done) {
            s->base.npending--;
            *link = x->next;
            if (s->sq_tail == x)
                s->sq_tail = prev;
            continue;
        }
        prev = x;
        link = &x->next;
    }
    return CX_OK;
}

static cx_status cma_error(shm_conn *s, size_t nbytes)
{
    int e = errno;
    if (e == ESRCH)
        return CX_ERROR(CX_ERR_TRANSPORT, s->base.peer, "rank %d is gone (process %d exited "
                        "while rank %d was reading its buffer)", s->base.peer, (int)s->peer_pid,
                        s->base.self);
    if (e == EFAULT)
        return CX_ERROR(CX_ERR_TRANSPORT, s->base.peer, "rank %d's buffer disappeared while rank "
                        "%d was reading it: rank %d abandoned the collective after an error of "
                        "its own (its error says which)", s->base.peer, s->base.self,
                        s->base.peer);
    if (e == EPERM)
        return CX_ERROR(CX_ERR_TRANSPORT, s->base.peer, "rank %d may not read rank %d's memory "
                        "(process_vm_readv: EPERM; Yama ptrace_scope or differing users); set "
                        "COLLX_TRANSPORT=tcp or allow ptrace between the ranks", s->base.self,
                        s->base.peer);
    return CX_ERROR(CX_ERR_TRANSPORT, s->base.peer, "reading %zu bytes from rank %d failed: %s",
                    nbytes, s->base.peer, strerror(e));
}

/* Pull up to `budget` bytes of message x from the peer. */
static cx_status pull(shm_conn *s, cx_xfer *x, const slot *sl, size_t *budget)
{
    while (x->progress < x->nbytes && *budget) {
        size_t left = x->nbytes - x->progress;
        size_t piece = left < *budget ? left : *budget;
        char *to = (char *)x->dst + x->progress;
        if (x->fn) {
            if (piece > CX_SHM_BOUNCE)
                piece = CX_SHM_BOUNCE;
            to = s->bounce;
        }
        struct iovec local = {to, piece};
        struct iovec remote = {(void *)(uintptr_t)(sl->addr + x->progress), piece};
        ssize_t got = process_vm_readv(s->peer_pid, &local, 1, &remote, 1, 0);
        if (got <= 0)
            return cma_error(s, piece);
        size_t g = (size_t)got;
        if (x->fn) {
            g -= g % x->itemsize;               /* a short read may end mid-element */
            if (!g)
                return CX_ERROR(CX_ERR_TRANSPORT, s->base.peer, "short read from rank %d",
                                s->base.peer);
            x->fn((char *)x->dst + x->progress, (const char *)x->src + x->progress, s->bounce,
                  g / x->itemsize);
        }
        x->progress += g;
        *budget = g >= *budget ? 0 : *budget - g;
    }
    return CX_OK;
}

static cx_status progress_recvs_inner(shm_conn *s);

static cx_status progress_recvs(shm_conn *s)
{
    uint64_t received0 = s->received;
    cx_status st = progress_recvs_inner(s);
    if (s->received != received0)
        ring_bell(s, &s->in_ring->tx_sleep);
    return st;
}

static cx_status progress_recvs_inner(shm_conn *s)
{
    size_t budget = CX_SHM_BUDGET;
    while (s->rq_head && budget) {
        cx_xfer *x = s->rq_head;
        uint64_t k = s->received;
        slot *sl = &s->in_ring->slots[k % CX_SHM_SLOTS];
        if (load_acq(&sl->seq) != k + 1)
            break;                                    /* not sent yet */
        if (sl->nbytes != x->nbytes || sl->fingerprint != x->fingerprint)
            return CX_ERROR(CX_ERR_MISMATCH, s->base.peer,
                            "rank %d sent %llu bytes (call %08x) where rank %d expected %zu bytes "
                            "(call %08x): the ranks called different collectives or passed "
                            "different sizes/dtypes", s->base.peer,
                            (unsigned long long)sl->nbytes, sl->fingerprint, s->base.self,
                            x->nbytes, x->fingerprint);
        if (sl->kind == KIND_EAGER) {
            const char *p = x->nbytes <= sizeof sl->inline_data
                                ? sl->inline_data
                                : s->in_payload + (k % CX_SHM_SLOTS) * s->eager;
            if (x->fn)
                x->fn(x->dst, x->src, p, x->nbytes / x->itemsize);
            else if (x->nbytes)
                memcpy(x->dst, p, x->nbytes);
            x->progress = x->nbytes;
            budget = budget > x->nbytes ? budget - x->nbytes : 0;
        } else {
            CX_CHECK(pull(s, x, sl, &budget));
            if (x->progress < x->nbytes)
                break;
        }
        s->received = k + 1;
        store_rel(&s->in_ring->tail, k + 1);
        x->done = 1;
        s->base.npending--;
        s->rq_head = x->next;
        if (!s->rq_head)
            s->rq_tail = NULL;
    }
    return CX_OK;
}

static cx_status shm_progress(cx_conn *c)
{
    shm_conn *s = (shm_conn *)c;
    if (s->sq_head)
        CX_CHECK(progress_sends(s));
    if (s->rq_head)
        CX_CHECK(progress_recvs(s));
    return CX_OK;
}

static int shm_wait_fd(cx_conn *c, short *events)
{
    shm_conn *s = (shm_conn *)c;
    *events = 0;
    if (c->alive_fd < 0)
        return -1;
    cx_conn_drain_notes(c);            /* old wake-ups; an abort notice is kept */
    if (s->rq_head)
        __atomic_store_n(&s->in_ring->rx_sleep, 1, __ATOMIC_SEQ_CST);
    if (s->sq_head)
        __atomic_store_n(&s->out_ring->tx_sleep, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    /* re-check after raising the flags: whatever was published before is visible now */
    if (s->rq_head && load_acq(&s->in_ring->slots[s->received % CX_SHM_SLOTS].seq) ==
                          s->received + 1)
        return CX_WAIT_READY;
    if (s->sq_head) {
        uint64_t tail = load_acq(&s->out_ring->tail);
        for (cx_xfer *x = s->sq_head; x; x = x->next)
            if (x->tstate[0] ? tail >= x->tstate[0] : s->sent - tail < CX_SHM_SLOTS)
                return CX_WAIT_READY;
    }
    *events = POLLIN;
    return c->alive_fd;
}

static void shm_destroy(cx_conn *c)
{
    shm_conn *s = (shm_conn *)c;
    if (s->map)
        munmap(s->map, s->map_len);
    if (c->alive_fd >= 0)
        close(c->alive_fd);
    free(s->bounce);
    free(s);
}

static void shm_notify_abort(cx_conn *c)
{
    if (c->alive_fd >= 0) {
        ssize_t ignored = send(c->alive_fd, "A", 1, MSG_DONTWAIT | MSG_NOSIGNAL);
        (void)ignored;   /* best effort: the close that follows is the signal of last resort */
    }
}

static const cx_conn_ops shm_ops = {"shm", shm_post, shm_progress, shm_wait_fd, shm_destroy,
                                    shm_notify_abort};

cx_status cx_shm_conn_create(int alive_fd, int self, int peer, const char *name, int create,
                             int peer_pid, size_t eager_bytes, cx_conn **out)
{
    int fd = shm_open(name, O_RDWR | (create ? O_CREAT | O_EXCL : 0), 0600);
    if (fd < 0)
        return CX_ERROR(CX_ERR_SYSTEM, peer, "shm_open(%s) for rank %d: %s", name, peer,
                        strerror(errno));
    size_t len;
    if (create) {
        eager_bytes = (eager_bytes + 63) & ~(size_t)63;
        len = seg_bytes(eager_bytes);
        if (ftruncate(fd, (off_t)len) < 0) {
            int e = errno;
            close(fd);
            shm_unlink(name);
            return CX_ERROR(CX_ERR_NOMEM, peer, "sizing shared memory %s to %zu B: %s (is "
                            "/dev/shm full?)", name, len, strerror(e));
        }
    } else {
        struct stat st;
        if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof(seg_header)) {
            close(fd);
            return CX_ERROR(CX_ERR_SYSTEM, peer, "shared memory %s from rank %d is not ready",
                            name, peer);
        }
        len = (size_t)st.st_size;
    }
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return CX_ERROR(CX_ERR_NOMEM, peer, "mmap of %zu B shared memory: %s", len,
                        strerror(errno));
    seg_header *h = map;
    if (create) {
        h->eager = eager_bytes;
        h->magic = CX_SHM_MAGIC;
    } else if (h->magic != CX_SHM_MAGIC || seg_bytes(h->eager) != len) {
        munmap(map, len);
        return CX_ERROR(CX_ERR_SYSTEM, peer, "shared memory %s from rank %d has a bad header",
                        name, peer);
    }
    shm_conn *s = calloc(1, sizeof *s);
    if (!s) {
        munmap(map, len);
        return CX_ERROR(CX_ERR_NOMEM, peer, "out of memory");
    }
    s->eager = h->eager;
    s->bounce = malloc(CX_SHM_BOUNCE);
    if (!s->bounce) {
        munmap(map, len);
        free(s);
        return CX_ERROR(CX_ERR_NOMEM, peer, "out of memory");
    }
    char *r0 = (char *)map + sizeof(seg_header), *r1 = r0 + ring_bytes(s->eager);
    /* ring 0 carries lower -> higher */
    int lower = self < peer;
    s->out_ring = (ring *)(lower ? r0 : r1);
    s->in_ring = (ring *)(lower ? r1 : r0);
    s->out_payload = (char *)s->out_ring + sizeof(ring);
    s->in_payload = (char *)s->in_ring + sizeof(ring);
    s->map = map;
    s->map_len = len;
    s->peer_pid = (pid_t)peer_pid;
    s->base.ops = &shm_ops;
    s->base.peer = peer;
    s->base.self = self;
    s->base.alive_fd = alive_fd;
    *out = &s->base;
    return CX_OK;
}
