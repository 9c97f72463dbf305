/* tcp.c - the TCP transport: one non-blocking stream per peer, no threads.
 *
 * Wire format: every message is a 16-byte header followed by its payload.
 *
 *     uint32 magic "CXT1" | uint32 fingerprint | uint64 nbytes | payload[nbytes]
 *
 * all little-endian. Zero-byte messages are real messages (header only), so FIFO matching
 * never drifts. The receiver checks the header against the receive at the head of its
 * queue before it trusts a byte of the payload.
 *
 * Data path. Sends and plain receives go straight between the socket and the caller's
 * buffers with sendmsg/recvmsg over an iovec that spans *every* queued transfer (header,
 * payload, next header, ...): many small messages cost one system call, a large one
 * costs as few as the kernel allows, and no payload byte is copied in user space.
 * A reduce-receive cannot land in dst (dst = src op incoming needs both operands), so it
 * reads into a per-connection bounce buffer and reduces whole elements as they arrive;
 * TCP may split anywhere, so a partial trailing element is carried to the front of the
 * bounce buffer for the next read.
 *
 * Per-transfer state lives in the cx_xfer: tstate[0..1] holds the 16 header bytes (to
 * send, or as received), tstate[2] the header bytes moved, tstate[3] the partial element
 * carried in the bounce buffer; x->progress counts payload bytes sent, received, or
 * received-and-reduced.
 *
 * Socket buffers: left to kernel autotuning (no SO_SNDBUF/SO_RCVBUF). Setting either
 * turns autotuning off for that socket and caps it at net.core.[wr]mem_max. Measured
 * here (loopback, 64 MiB one way, 2 busy cores, 8 interleaved runs each, GB/s median):
 * autotuned 3.4, a raw blocking send/recv loop 3.6, fixed 4 MiB 2.6 (worse), fixed
 * 256 KiB 5.0. Small buffers win on loopback only because the data stays in cache
 * between the two copies; across hosts a fixed buffer caps throughput at buffer/RTT
 * (256 KiB over a 1 ms link: 0.26 GB/s), which autotuning never does. So: autotune. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cx_tcp.h"

#define TCP_MAGIC 0x31545843u       /* "CXT1" as little-endian bytes */
#define HDR_BYTES 16
#define BOUNCE_BYTES (256u << 10)   /* reduce-receive staging; L2-sized, so fn reads hot data */
#define MAX_IOV 64                  /* iovec entries per system call */
#define MAX_ROUNDS 32               /* bound on system calls per direction per progress() */

typedef struct tcp_conn {
    int fd;
    cx_xfer *send_head, *send_tail;
    cx_xfer *recv_head, *recv_tail;
    unsigned char *bounce;          /* allocated on the first reduce-receive */
    cx_status broken;               /* sticky: once the stream is lost, it stays lost */
    char why[512];
} tcp_conn;

#define T(c) ((tcp_conn *)(c)->impl)

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* Remember the first fatal error: after a mismatch or a dead peer the stream position
 * is unknown, so every later call must fail the same way rather than read garbage. */
static cx_status tcp_break(cx_conn *c, cx_status st)
{
    tcp_conn *t = T(c);
    t->broken = st;
    snprintf(t->why, sizeof t->why, "%s", cx_last_error());
    return st;
}

/* errno after a failed send/recv on the stream -> status, with the peer named. */
static cx_status tcp_errno(cx_conn *c, int err, const char *what)
{
    switch (err) {
    case ECONNRESET: case EPIPE: case ENOTCONN: case ECONNABORTED:
        CX_ERROR(CX_ERR_TRANSPORT, c->peer,
                 "rank %d is gone (connection closed by peer): %s from rank %d failed (%s); "
                 "the process died or shut down, the communicator must be re-initialized",
                 c->peer, what, c->self, strerror(err));
        return tcp_break(c, CX_ERR_TRANSPORT);
    case ETIMEDOUT: case EHOSTUNREACH: case ENETUNREACH: case ENETDOWN: case EHOSTDOWN:
        CX_ERROR(CX_ERR_TRANSPORT, c->peer, "the network to rank %d broke: %s from rank %d "
                 "failed (%s)", c->peer, what, c->self, strerror(err));
        return tcp_break(c, CX_ERR_TRANSPORT);
    default:
        CX_ERROR(CX_ERR_SYSTEM, c->peer, "%s between rank %d and rank %d failed: %s", what,
                 c->self, c->peer, strerror(err));
        return tcp_break(c, CX_ERR_SYSTEM);
    }
}

static void finish(cx_conn *c, cx_xfer **head, cx_xfer **tail)
{
    cx_xfer *x = *head;
    *head = x->next;
    if (!*head)
        *tail = NULL;
    x->next = NULL;
    x->done = 1;
    c->npending--;
}

/* ---- send ------------------------------------------------------------------------- */

/* One sendmsg over as many queued sends as fit in an iovec. *more is cleared when the
 * socket buffer is full (a short write) or nothing is queued. */
static cx_status send_some(cx_conn *c, int *moved, int *more)
{
    tcp_conn *t = T(c);
    struct iovec iov[MAX_IOV];
    size_t n = 0, want = 0;
    for (cx_xfer *x = t->send_head; x && n + 2 <= MAX_IOV; x = x->next) {
        size_t h = x->tstate[2];
        if (h < HDR_BYTES)
            iov[n++] = (struct iovec){(char *)x->tstate + h, HDR_BYTES - h};
        if (x->progress < x->nbytes)
            iov[n++] = (struct iovec){(char *)x->src + x->progress, x->nbytes - x->progress};
    }
    for (size_t i = 0; i < n; i++)
        want += iov[i].iov_len;
    if (!want) {
        *more = 0;
        return CX_OK;
    }
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = n};
    ssize_t r = sendmsg(t->fd, &m, MSG_NOSIGNAL);   /* MSG_NOSIGNAL: EPIPE, not SIGPIPE */
    if (r < 0) {
        if (errno == EINTR)
            return CX_OK;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *more = 0;
            return CX_OK;
        }
        return tcp_errno(c, errno, "sending");
    }
    *moved = 1;
    if ((size_t)r < want)
        *more = 0;   /* the kernel took what it had room for; the next call would EAGAIN */
    size_t left = (size_t)r;
    cx_xfer *x;
    while ((x = t->send_head)) {
        size_t k = min_sz(left, HDR_BYTES - x->tstate[2]);
        x->tstate[2] += k;
        left -= k;
        k = min_sz(left, x->nbytes - x->progress);
        x->progress += k;
        left -= k;
        if (x->tstate[2] < HDR_BYTES || x->progress < x->nbytes)
            break;
        finish(c, &t->send_head, &t->send_tail);   /* all bytes are in the kernel */
    }
    return CX_OK;
}

/* ---- receive ---------------------------------------------------------------------- */

static cx_status check_header(cx_conn *c, cx_xfer *x)
{
    uint32_t magic, fp;
    uint64_t nb;
    const unsigned char *h = (const unsigned char *)x->tstate;
    memcpy(&magic, h, 4);
    memcpy(&fp, h + 4, 4);
    memcpy(&nb, h + 8, 8);
    magic = le32toh(magic);
    fp = le32toh(fp);
    nb = le64toh(nb);
    if (magic != TCP_MAGIC) {
        CX_ERROR(CX_ERR_TRANSPORT, c->peer,
                 "the byte stream from rank %d to rank %d is corrupted (message header magic "
                 "0x%08x, expected 0x%08x): something other than collx wrote to the socket, "
                 "or the ranks run different collx versions", c->peer, c->self, magic, TCP_MAGIC);
        return tcp_break(c, CX_ERR_TRANSPORT);
    }
    if (nb != x->nbytes) {
        CX_ERROR(CX_ERR_MISMATCH, c->peer,
                 "rank %d sent %zu bytes for this step, rank %d expected %zu: the ranks called "
                 "different collectives or passed different sizes (fingerprints 0x%08x and "
                 "0x%08x)", c->peer, (size_t)nb, c->self, x->nbytes, fp, x->fingerprint);
        return tcp_break(c, CX_ERR_MISMATCH);
    }
    if (fp != x->fingerprint) {
        CX_ERROR(CX_ERR_MISMATCH, c->peer,
                 "rank %d sent a message of collective fingerprint 0x%08x, rank %d expected "
                 "0x%08x (%zu bytes both): the ranks called different collectives, or the "
                 "same ones in a different order or with different op/dtype", c->peer, fp,
                 c->self, x->fingerprint, x->nbytes);
        return tcp_break(c, CX_ERR_MISMATCH);
    }
    return CX_OK;
}

/* Reduce what just arrived in the bounce buffer: `got` new bytes after the carried
 * partial element. Whole elements go through fn; the remainder moves to the front. */
static void reduce_arrived(tcp_conn *t, cx_xfer *x, size_t got)
{
    size_t avail = x->tstate[3] + got;
    size_t whole = avail / x->itemsize, used = whole * x->itemsize;
    if (whole) {
        x->fn((char *)x->dst + x->progress, (const char *)x->src + x->progress, t->bounce, whole);
        x->progress += used;
    }
    if (avail > used)
        memmove(t->bounce, t->bounce + used, avail - used);   /* < itemsize bytes */
    x->tstate[3] = avail - used;
}

/* One recvmsg over as many queued receives as fit: headers into the xfers, plain
 * payloads straight into dst, and at most one reduce payload (it ends the batch, there
 * is one bounce buffer). Payload bytes can only follow a complete header in the stream,
 * and each header is checked the moment it completes, before its payload is reduced or
 * its receive marked done. A plain payload may already sit in dst by then: if its header
 * mismatched, dst holds the wrong message, but that step has failed anyway. */
static cx_status recv_some(cx_conn *c, int *moved, int *more)
{
    tcp_conn *t = T(c);
    struct iovec iov[MAX_IOV];
    size_t n = 0, want = 0;
    for (cx_xfer *x = t->recv_head; x && n + 2 <= MAX_IOV; x = x->next) {
        size_t h = x->tstate[2];
        if (h < HDR_BYTES)
            iov[n++] = (struct iovec){(char *)x->tstate + h, HDR_BYTES - h};
        if (x->fn) {
            size_t carry = x->tstate[3];
            size_t rest = min_sz(x->nbytes - x->progress - carry, BOUNCE_BYTES - carry);
            if (rest)
                iov[n++] = (struct iovec){t->bounce + carry, rest};
            break;
        }
        if (x->progress < x->nbytes)
            iov[n++] = (struct iovec){(char *)x->dst + x->progress, x->nbytes - x->progress};
    }
    for (size_t i = 0; i < n; i++)
        want += iov[i].iov_len;
    if (!want) {
        *more = 0;
        return CX_OK;
    }
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = n};
    ssize_t r = recvmsg(t->fd, &m, 0);
    if (r == 0) {
        CX_ERROR(CX_ERR_TRANSPORT, c->peer,
                 "rank %d is gone (connection closed by peer) while rank %d was receiving "
                 "from it: the process died or shut down; the communicator must be "
                 "re-initialized", c->peer, c->self);
        return tcp_break(c, CX_ERR_TRANSPORT);
    }
    if (r < 0) {
        if (errno == EINTR)
            return CX_OK;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            *more = 0;
            return CX_OK;
        }
        return tcp_errno(c, errno, "receiving");
    }
    *moved = 1;
    if ((size_t)r < want)
        *more = 0;   /* drained the socket */
    size_t left = (size_t)r;
    cx_xfer *x;
    while ((x = t->recv_head)) {
        if (x->tstate[2] < HDR_BYTES) {
            size_t k = min_sz(left, HDR_BYTES - x->tstate[2]);
            x->tstate[2] += k;
            left -= k;
            if (x->tstate[2] < HDR_BYTES)
                break;
            CX_CHECK(check_header(c, x));
        }
        size_t k = min_sz(left, x->nbytes - x->progress - x->tstate[3]);
        left -= k;
        if (x->fn)
            reduce_arrived(t, x, k);
        else
            x->progress += k;
        if (x->progress < x->nbytes)
            break;
        finish(c, &t->recv_head, &t->recv_tail);
    }
    return CX_OK;
}

/* ---- ops -------------------------------------------------------------------------- */

static cx_status tcp_post(cx_conn *c, cx_xfer *x)
{
    tcp_conn *t = T(c);
    if (t->broken)
        return CX_ERROR(t->broken, c->peer, "%s", t->why);
    if (x->nbytes && !(x->is_send ? x->src : x->dst))
        return CX_ERROR(CX_ERR_INVALID, c->peer, "tcp: %s of %zu bytes with a NULL buffer",
                        x->is_send ? "send" : "receive", x->nbytes);
    if (!x->is_send && x->fn) {
        if (!x->itemsize || x->itemsize > BOUNCE_BYTES / 2 || x->nbytes % x->itemsize ||
            (x->nbytes && !x->src))
            return CX_ERROR(CX_ERR_INVALID, c->peer,
                            "tcp: reduce-receive of %zu bytes from rank %d has itemsize %zu "
                            "(must divide nbytes) or no source operand", x->nbytes, c->peer,
                            x->itemsize);
        if (!t->bounce && !(t->bounce = malloc(BOUNCE_BYTES)))
            return CX_ERROR(CX_ERR_NOMEM, c->peer, "tcp: no memory for a %u-byte bounce buffer",
                            BOUNCE_BYTES);
    }
    x->done = 0;
    x->progress = 0;
    memset(x->tstate, 0, sizeof x->tstate);
    x->next = NULL;
    cx_xfer **head = x->is_send ? &t->send_head : &t->recv_head;
    cx_xfer **tail = x->is_send ? &t->send_tail : &t->recv_tail;
    if (x->is_send) {
        uint32_t magic = htole32(TCP_MAGIC), fp = htole32(x->fingerprint);
        uint64_t nb = htole64((uint64_t)x->nbytes);
        unsigned char *h = (unsigned char *)x->tstate;
        memcpy(h, &magic, 4);
        memcpy(h + 4, &fp, 4);
        memcpy(h + 8, &nb, 8);
    }
    if (*tail)
        (*tail)->next = x;
    else
        *head = x;
    *tail = x;
    c->npending++;
    return CX_OK;
}

/* Alternate directions until both would block (or the round bound is hit): a large
 * send and a large receive on one socket make progress together, and neither side of
 * a bidirectional exchange can deadlock the other with full kernel buffers. */
static cx_status tcp_progress(cx_conn *c)
{
    tcp_conn *t = T(c);
    if (t->broken)
        return CX_ERROR(t->broken, c->peer, "%s", t->why);
    int more_s = t->send_head != NULL, more_r = t->recv_head != NULL;
    for (int round = 0; round < MAX_ROUNDS && (more_s || more_r); round++) {
        int moved = 0;
        if (more_s)
            CX_CHECK(send_some(c, &moved, &more_s));
        if (more_r)
            CX_CHECK(recv_some(c, &moved, &more_r));
        more_s = more_s && t->send_head;
        more_r = more_r && t->recv_head;
        if (!moved)
            break;
    }
    return CX_OK;
}

static int tcp_wait_fd(cx_conn *c, short *events)
{
    *events = (short)(POLLIN | (T(c)->send_head ? POLLOUT : 0));
    return T(c)->fd;
}

static void tcp_destroy(cx_conn *c)
{
    if (!c)
        return;
    tcp_conn *t = T(c);
    if (t) {
        if (t->fd >= 0)
            close(t->fd);
        free(t->bounce);
        free(t);
    }
    free(c);
}

static const cx_conn_ops tcp_ops = {
    .name = "tcp",
    .post = tcp_post,
    .progress = tcp_progress,
    .wait_fd = tcp_wait_fd,
    .destroy = tcp_destroy,
};

cx_status cx_tcp_conn_create(int fd, int self, int peer, cx_conn **out)
{
    *out = NULL;
    int fl = fd < 0 ? -1 : fcntl(fd, F_GETFL);
    if (fl < 0)
        return CX_ERROR(CX_ERR_INVALID, peer, "tcp: fd %d for rank %d is not an open socket",
                        fd, peer);
    if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
        return CX_ERROR(CX_ERR_SYSTEM, peer, "tcp: making the socket to rank %d non-blocking: %s",
                        peer, strerror(errno));
    /* Collectives are latency-bound chains of small messages: never let Nagle hold a
     * header back waiting for an ACK. (Not TCP, e.g. a Unix socket in a test: no Nagle.) */
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 &&
        errno != EOPNOTSUPP && errno != ENOPROTOOPT)
        return CX_ERROR(CX_ERR_SYSTEM, peer, "tcp: TCP_NODELAY on the socket to rank %d: %s",
                        peer, strerror(errno));
    cx_conn *c = calloc(1, sizeof *c);
    tcp_conn *t = calloc(1, sizeof *t);
    if (!c || !t) {
        free(c);
        free(t);
        return CX_ERROR(CX_ERR_NOMEM, peer, "tcp: no memory for a connection to rank %d", peer);
    }
    t->fd = fd;
    c->ops = &tcp_ops;
    c->peer = peer;
    c->self = self;
    c->alive_fd = fd;   /* the data socket is the liveness signal too */
    c->alive_is_data = 1;
    c->impl = t;
    *out = c;
    return CX_OK;
}
