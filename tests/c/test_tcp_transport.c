/* test_tcp_transport.c - conformance test of the TCP transport (csrc/transport/tcp).
 *
 * Each scenario forks two processes joined by a real loopback TCP connection and runs
 * one role in each: rank 0 in the parent, rank 1 in the child. Some roles drive the
 * transport, some write raw bytes to the socket to control exactly where the stream
 * splits or to corrupt it. Exits 0 when everything passed; prints each failure.
 *
 * Build (tests/test_tcp_transport_c.py does this):
 *   gcc -O2 -Wall -D_GNU_SOURCE -Icsrc/include tests/c/test_tcp_transport.c \
 *       csrc/transport/tcp/tcp.c csrc/engine/status.c csrc/engine/conn.c */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../csrc/transport/tcp/cx_tcp.h"
#include "cx_transport.h"

static const char *g_role = "rank 0";
static const char *g_scenario = "setup";
static int g_fail;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "FAIL [%s, %s] %s:%d: ", g_scenario, g_role, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            g_fail++;                                                                      \
        }                                                                                  \
    } while (0)

#define DIE(...) do { CHECK(0, __VA_ARGS__); _exit(3); } while (0)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Each scenario gets 30 s (it needs ~1): a hang is a failure that names the scenario. */
static void on_alarm(int sig)
{
    (void)sig;
    static const char a[] = "FAIL: timed out (the transport hung) in: ";
    if (write(2, a, sizeof a - 1) < 0 || write(2, g_scenario, strlen(g_scenario)) < 0 ||
        write(2, "\n", 1) < 0) { /* nothing more to do */ }
    _exit(2);
}

/* ---- plumbing ----------------------------------------------------------------------- */

/* Tiny kernel buffers: the stream then arrives in small, arbitrary pieces. */
static void shrink(int fd)
{
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
}

/* A connected loopback pair: fds[0] accepted (rank 0), fds[1] connected (rank 1). */
static void tcp_pair(int fds[2], int small)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int l = socket(AF_INET, SOCK_STREAM, 0), s = socket(AF_INET, SOCK_STREAM, 0);
    if (small) {   /* before connect: the window is negotiated in the handshake */
        shrink(l);
        shrink(s);
    }
    if (l < 0 || s < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&a, &len) || connect(s, (struct sockaddr *)&a, sizeof a))
        DIE("loopback socket setup: %s", strerror(errno));
    fds[0] = accept(l, NULL, NULL);
    fds[1] = s;
    if (fds[0] < 0)
        DIE("accept: %s", strerror(errno));
    close(l);
}

static cx_conn *conn_of(int fd, int rank)
{
    cx_conn *c = NULL;
    cx_status st = cx_tcp_conn_create(fd, rank, 1 - rank, &c);
    if (st != CX_OK || !c)
        DIE("cx_tcp_conn_create: status %d: %s", st, cx_last_error());
    return c;
}

static void post(cx_conn *c, cx_xfer *x)
{
    cx_status st = c->ops->post(c, x);
    if (st != CX_OK)
        DIE("post: status %d: %s", st, cx_last_error());
}

static cx_xfer mk_send(const void *src, size_t n, uint32_t fp)
{
    return (cx_xfer){.is_send = 1, .src = src, .nbytes = n, .fingerprint = fp};
}

static cx_xfer mk_recv(void *dst, size_t n, uint32_t fp)
{
    return (cx_xfer){.dst = dst, .nbytes = n, .fingerprint = fp};
}

static cx_xfer mk_rred(void *dst, const void *src, size_t n, cx_reduce_fn fn, size_t isz,
                       uint32_t fp)
{
    return (cx_xfer){.dst = dst, .src = src, .nbytes = n, .fn = fn, .itemsize = isz,
                     .fingerprint = fp};
}

/* Progress until xs[0..n) are all done, or xs[0] moved stop_at bytes (returns
 * CX_INPROGRESS), or an error. Polls wait_fd when idle, as the engine does: POLLOUT only
 * while a send is pending, or poll would return at once and spin. */
static cx_status drive(cx_conn *c, cx_xfer *xs, int n, size_t stop_at)
{
    for (;;) {
        cx_status st = c->ops->progress(c);
        if (st != CX_OK)
            return st;
        if (stop_at && xs[0].progress >= stop_at)
            return CX_INPROGRESS;
        int left = 0, sends = 0;
        for (int i = 0; i < n; i++)
            if (!xs[i].done) {
                left++;
                sends |= xs[i].is_send;
            }
        if (!left)
            return CX_OK;
        short ev_unused = 0;
        struct pollfd p = {.fd = c->ops->wait_fd(c, &ev_unused), .events = POLLIN | (sends ? POLLOUT : 0)};
        poll(&p, 1, 100);
    }
}

/* Write a buffer whole to a blocking socket (raw roles). */
static void write_all(int fd, const void *p, size_t n)
{
    for (size_t off = 0; off < n;) {
        ssize_t r = write(fd, (const char *)p + off, n - off);
        if (r < 0 && errno != EINTR)
            DIE("raw write: %s", strerror(errno));
        off += r > 0 ? (size_t)r : 0;
    }
}

/* The wire header, written independently of tcp.c: "CXT1", fingerprint, nbytes (LE). */
static size_t put_header(unsigned char *p, uint32_t magic, uint32_t fp, uint64_t nb)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (unsigned char)(magic >> (8 * i));
        p[4 + i] = (unsigned char)(fp >> (8 * i));
    }
    for (int i = 0; i < 8; i++)
        p[8 + i] = (unsigned char)(nb >> (8 * i));
    return 16;
}

/* Content that differs per sender, message and offset (a shifted copy would not pass). */
static uint8_t pat(int rank, int msg, size_t j)
{
    return (uint8_t)(j * 131u + (j >> 11) + (unsigned)msg * 17u + (unsigned)rank * 101u);
}

static void fill(uint8_t *p, size_t n, int rank, int msg)
{
    for (size_t j = 0; j < n; j++)
        p[j] = pat(rank, msg, j);
}

static size_t first_bad(const uint8_t *p, size_t n, int rank, int msg)
{
    for (size_t j = 0; j < n; j++)
        if (p[j] != pat(rank, msg, j))
            return j;
    return n;
}

/* ---- test reduction kernels (independent of csrc/reduce) ---------------------------- */

static int g_fn_calls;

static void sum_f32(void *d, const void *a, const void *b, size_t n)
{
    g_fn_calls++;
    for (size_t i = 0; i < n; i++) {
        float x, y;
        memcpy(&x, (const char *)a + 4 * i, 4);
        memcpy(&y, (const char *)b + 4 * i, 4);
        x += y;
        memcpy((char *)d + 4 * i, &x, 4);
    }
}

static void sum_i8(void *d, const void *a, const void *b, size_t n)
{
    g_fn_calls++;
    for (size_t i = 0; i < n; i++)   /* wraps, as int8 sums do */
        ((uint8_t *)d)[i] = (uint8_t)(((const uint8_t *)a)[i] + ((const uint8_t *)b)[i]);
}

static void sum_i64(void *d, const void *a, const void *b, size_t n)
{
    g_fn_calls++;
    for (size_t i = 0; i < n; i++) {
        uint64_t x, y;
        memcpy(&x, (const char *)a + 8 * i, 8);
        memcpy(&y, (const char *)b + 8 * i, 8);
        x += y;
        memcpy((char *)d + 8 * i, &x, 8);
    }
}

/* Operands: the receiver's own value (a) and the sender's (b), exact in float32. */
static float fa(size_t i) { return (float)((int)(i % 1000) - 500); }
static float fb(size_t i) { return (float)(i % 77) * 0.25f; }
static uint8_t ba(size_t i) { return (uint8_t)(i * 7u); }
static uint8_t bb(size_t i) { return (uint8_t)(i * 13u + 5u); }
static uint64_t la(size_t i) { return i * 0x9E3779B97F4A7C15ull; }
static uint64_t lb(size_t i) { return i ^ 0x5555AAAA5555AAAAull; }

#define NF 300007   /* float32 elements */
#define NB 100001   /* int8 elements    */
#define NL 50021    /* int64 elements   */
#define NP 12345    /* plain message first: odd-sized, so the reductions' payloads start
                     * at stream offsets that are not multiples of their element size */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        DIE("out of memory (%zu bytes)", n);
    return p;
}

/* The sender's side of the reduction scenarios, as one buffer per message. */
typedef struct red_msgs { float *f; uint8_t *b; uint64_t *l; uint8_t *p; } red_msgs;

static red_msgs red_make(size_t nf, size_t nb, size_t nl, size_t np)
{
    red_msgs m = {xmalloc(nf * 4), xmalloc(nb), xmalloc(nl * 8), xmalloc(np)};
    for (size_t i = 0; i < nf; i++)
        m.f[i] = fb(i);
    for (size_t i = 0; i < nb; i++)
        m.b[i] = bb(i);
    for (size_t i = 0; i < nl; i++)
        m.l[i] = lb(i);
    fill(m.p, np, 0, 9);
    return m;
}

/* Receiver: post a plain receive, then f32 (out of place), int8 and int64 (in place)
 * reduce-receives, all at once; drive them, verify every element exactly. */
static void red_receive(cx_conn *c, size_t nf, size_t nb, size_t nl, size_t np)
{
    float *fs = xmalloc(nf * 4), *fd = xmalloc(nf * 4);
    uint8_t *bsd = xmalloc(nb), *pd = xmalloc(np);
    uint64_t *lsd = xmalloc(nl * 8);
    for (size_t i = 0; i < nf; i++)
        fs[i] = fa(i), fd[i] = -1.0f;
    for (size_t i = 0; i < nb; i++)
        bsd[i] = ba(i);
    for (size_t i = 0; i < nl; i++)
        lsd[i] = la(i);
    cx_xfer x[4] = {mk_recv(pd, np, 12), mk_rred(fd, fs, nf * 4, sum_f32, 4, 11),
                    mk_rred(bsd, bsd, nb, sum_i8, 1, 13), mk_rred(lsd, lsd, nl * 8, sum_i64, 8, 14)};
    for (int i = 0; i < 4; i++)
        post(c, &x[i]);
    g_fn_calls = 0;
    cx_status st = drive(c, x, 4, 0);
    CHECK(st == CX_OK, "reduce-receives: status %d: %s", st, cx_last_error());
    size_t bad = 0;
    for (size_t i = 0; i < nf; i++)
        bad += fd[i] != fa(i) + fb(i);
    CHECK(!bad, "float32 sum: %zu of %zu elements wrong", bad, nf);
    bad = first_bad(pd, np, 0, 9);
    CHECK(bad == np, "plain message before the reductions: byte %zu of %zu wrong", bad, np);
    bad = 0;
    for (size_t i = 0; i < nb; i++)
        bad += bsd[i] != (uint8_t)(ba(i) + bb(i));
    CHECK(!bad, "int8 sum: %zu of %zu elements wrong", bad, nb);
    bad = 0;
    for (size_t i = 0; i < nl; i++)
        bad += lsd[i] != la(i) + lb(i);
    CHECK(!bad, "int64 sum: %zu of %zu elements wrong", bad, nl);
    CHECK(g_fn_calls > 3, "the reduction did not stream (%d kernel calls)", g_fn_calls);
    CHECK(c->npending == 0, "npending %d after all done", c->npending);
    free(fs), free(fd), free(bsd), free(pd), free(lsd);
}

/* ---- roles -------------------------------------------------------------------------- */

static const size_t k_sizes[] = {0, 1, 7, 4096, (1u << 20) + 3, 64u << 20};
#define NSIZES (int)(sizeof k_sizes / sizeof k_sizes[0])

/* Every size in both directions at once, all posted before any progress. */
static void role_bidir(int fd, int rank)
{
    cx_conn *c = conn_of(fd, rank);
    cx_xfer x[2 * NSIZES];
    uint8_t *sb[NSIZES], *rb[NSIZES];
    for (int i = 0; i < NSIZES; i++) {
        sb[i] = xmalloc(k_sizes[i]);
        rb[i] = xmalloc(k_sizes[i]);
        fill(sb[i], k_sizes[i], rank, i);
        memset(rb[i], 0xEE, k_sizes[i]);
        x[2 * i] = mk_send(sb[i], k_sizes[i], 0x100 + i);
        x[2 * i + 1] = mk_recv(rb[i], k_sizes[i], 0x100 + i);
        post(c, &x[2 * i]);
        post(c, &x[2 * i + 1]);
    }
    CHECK(c->npending == 2 * NSIZES, "npending %d after posting %d", c->npending, 2 * NSIZES);
    double t0 = now();
    cx_status st = drive(c, x, 2 * NSIZES, 0);
    double dt = now() - t0;
    CHECK(st == CX_OK, "bidirectional exchange: status %d: %s", st, cx_last_error());
    CHECK(c->npending == 0, "npending %d after all done", c->npending);
    for (int i = 0; i < NSIZES; i++) {
        size_t bad = first_bad(rb[i], k_sizes[i], 1 - rank, i);
        CHECK(x[2 * i].done && x[2 * i + 1].done, "message %d not marked done", i);
        CHECK(bad == k_sizes[i], "message %d (%zu bytes) from rank %d: byte %zu wrong", i,
              k_sizes[i], 1 - rank, bad);
        free(sb[i]), free(rb[i]);
    }
    if (rank == 0)
        printf("    both directions at once, %d messages each way (largest 64 MiB): %.3f s\n",
               NSIZES, dt);
    c->ops->destroy(c);
}

/* Throughput: 64 MiB one way, timed by rank 0 from posting to rank 1's 0-byte ack. */
static void role_tput(int fd, int rank)
{
    enum { REPS = 6 };
    const size_t n = 64u << 20;
    cx_conn *c = conn_of(fd, rank);
    uint8_t *buf = xmalloc(n);
    char none = 0;
    if (rank == 0)
        fill(buf, n, 0, 1);
    else
        memset(buf, 0, n);
    double total = 0, best = 1e9;
    for (int rep = 0; rep <= REPS; rep++) {   /* rep 0 warms up (page faults, windows) */
        if (rank == 0) {
            cx_xfer go = mk_recv(&none, 0, 1), big = mk_send(buf, n, 2), ack = mk_recv(&none, 0, 3);
            post(c, &go);
            CHECK(drive(c, &go, 1, 0) == CX_OK, "go: %s", cx_last_error());
            double t0 = now();
            post(c, &big);
            post(c, &ack);
            CHECK(drive(c, &big, 1, 0) == CX_OK, "64 MiB send: %s", cx_last_error());
            CHECK(drive(c, &ack, 1, 0) == CX_OK, "ack: %s", cx_last_error());
            double dt = now() - t0;
            if (rep) {
                total += dt;
                best = dt < best ? dt : best;
            }
        } else {
            cx_xfer big = mk_recv(buf, n, 2), go = mk_send(&none, 0, 1), ack = mk_send(&none, 0, 3);
            post(c, &big);
            post(c, &go);
            CHECK(drive(c, &go, 1, 0) == CX_OK, "go: %s", cx_last_error());
            CHECK(drive(c, &big, 1, 0) == CX_OK, "64 MiB receive: %s", cx_last_error());
            post(c, &ack);
            CHECK(drive(c, &ack, 1, 0) == CX_OK, "ack: %s", cx_last_error());
        }
    }
    if (rank == 1) {
        size_t bad = first_bad(buf, n, 0, 1);
        CHECK(bad == n, "64 MiB payload: byte %zu wrong", bad);
    } else {
        printf("    64 MiB one way over loopback: %.2f GB/s mean, %.2f GB/s best (%d reps)\n",
               REPS * n / total / 1e9, n / best / 1e9, REPS);
    }
    free(buf);
    c->ops->destroy(c);
}

static void role_red_send(int fd, int rank)
{
    cx_conn *c = conn_of(fd, rank);
    red_msgs m = red_make(NF, NB, NL, NP);
    cx_xfer x[4] = {mk_send(m.p, NP, 12), mk_send(m.f, NF * 4, 11), mk_send(m.b, NB, 13),
                    mk_send(m.l, NL * 8, 14)};
    for (int i = 0; i < 4; i++)
        post(c, &x[i]);
    cx_status st = drive(c, x, 4, 0);
    CHECK(st == CX_OK, "sends for the reductions: status %d: %s", st, cx_last_error());
    free(m.f), free(m.b), free(m.l), free(m.p);
    c->ops->destroy(c);
}

static void role_red_recv(int fd, int rank)
{
    cx_conn *c = conn_of(fd, rank);
    red_receive(c, NF, NB, NL, NP);
    c->ops->destroy(c);
}

/* Raw writer: the same four messages, dribbled in 1..13-byte writes with pauses, so
 * headers and elements (4 and 8 bytes) are certainly split across reads. */
static void role_red_dribble(int fd, int rank)
{
    (void)rank;
    enum { F = 2000, B = 999, L = 1000, P = 777 };
    static const size_t chunks[] = {1, 3, 5, 2, 7, 11, 13, 6};
    red_msgs m = red_make(F, B, L, P);
    size_t total = 4 * 16 + F * 4 + B + L * 8 + P, off = 0;
    unsigned char *s = xmalloc(total);
    off += put_header(s + off, 0x31545843u, 12, P);
    memcpy(s + off, m.p, P), off += P;
    off += put_header(s + off, 0x31545843u, 11, F * 4);
    memcpy(s + off, m.f, F * 4), off += F * 4;
    off += put_header(s + off, 0x31545843u, 13, B);
    memcpy(s + off, m.b, B), off += B;
    off += put_header(s + off, 0x31545843u, 14, L * 8);
    memcpy(s + off, m.l, L * 8), off += L * 8;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (size_t i = 0, k = 0; i < total; k++) {
        size_t n = chunks[k % 8] < total - i ? chunks[k % 8] : total - i;
        write_all(fd, s + i, n);
        i += n;
        if (k % 4 == 0)
            usleep(50);
    }
    char b;
    while (read(fd, &b, 1) > 0) {}   /* hold the stream open until the receiver is done */
    free(s), free(m.f), free(m.b), free(m.l), free(m.p);
}

static void role_dribble_recv(int fd, int rank)
{
    cx_conn *c = conn_of(fd, rank);
    red_receive(c, 2000, 999, 1000, 777);
    c->ops->destroy(c);
}

/* Receives queued before any data exists; the sender waits first. */
static const size_t k_queued[] = {0, 5, 0, 70000, 16, 3};

static void role_queued_send(int fd, int rank)
{
    cx_conn *c = conn_of(fd, rank);
    uint8_t *b[6];
    cx_xfer x[6];
    usleep(150 * 1000);
    for (int i = 0; i < 6; i++) {
        b[i] = xmalloc(k_queued[i]);
        fill(b[i], k_queued[i], rank, i);
        if (i == 4)   /* the reduce-receive's operand: four float32 ones */
            for (int j = 0; j < 4; j++)
                memcpy(b[i] + 4 * j, &(float){1.0f}, 4);
        x[i] = mk_send(b[i], k_queued[i], 0x200 + i);
        post(c, &x[i]);
    }
    CHECK(drive(c, x, 6, 0) == CX_OK, "queued sends: %s", cx_last_error());
    for (int i = 0; i < 6; i++)
        free(b[i]);
    c->ops->destroy(c);
}

static void role_queued_recv(int fd, int rank)
{
    cx_conn *c = conn_of(fd, rank);
    uint8_t *b[6];
    cx_xfer x[6];
    float src[4] = {1, 2, 3, 4}, dst[4] = {0};
    for (int i = 0; i < 6; i++) {
        b[i] = xmalloc(k_queued[i]);
        x[i] = i == 4 ? mk_rred(dst, src, 16, sum_f32, 4, 0x204)
                      : mk_recv(b[i], k_queued[i], 0x200 + i);
        post(c, &x[i]);
    }
    for (int k = 0; k < 5; k++) {   /* nothing has been sent yet: progress must not block */
        double t0 = now();
        cx_status st = c->ops->progress(c);
        CHECK(st == CX_OK && now() - t0 < 0.05, "idle progress: status %d after %.3f s", st,
              now() - t0);
        usleep(10 * 1000);
    }
    CHECK(c->npending == 6 && !x[0].done, "receives completed before any data was sent");
    CHECK(drive(c, x, 6, 0) == CX_OK, "queued receives: %s", cx_last_error());
    for (int i = 0; i < 6; i++) {
        size_t bad = i == 4 ? k_queued[i] : first_bad(b[i], k_queued[i], 1 - rank, i);
        CHECK(bad == k_queued[i], "queued message %d: byte %zu wrong", i, bad);
        free(b[i]);
    }
    CHECK(dst[0] == 2 && dst[1] == 3 && dst[2] == 4 && dst[3] == 5, "queued reduce-receive: "
          "%g %g %g %g", dst[0], dst[1], dst[2], dst[3]);
    c->ops->destroy(c);
}

/* Mismatches: rank 0 sends (g_mm[0] bytes, fingerprint g_mm[1]); rank 1 expects
 * (g_mm[2], g_mm[3]) and must fail with CX_ERR_MISMATCH naming both sides. */
static size_t g_mm[4];
static const char *g_mm_want;

static void role_mm(int fd, int rank)
{
    cx_conn *c = conn_of(fd, rank);
    uint8_t *buf = xmalloc(g_mm[0] > g_mm[2] ? g_mm[0] : g_mm[2]);
    memset(buf, 1, g_mm[0] > g_mm[2] ? g_mm[0] : g_mm[2]);
    if (rank == 0) {
        cx_xfer x = mk_send(buf, g_mm[0], (uint32_t)g_mm[1]);
        post(c, &x);
        CHECK(drive(c, &x, 1, 0) == CX_OK, "send: %s", cx_last_error());
    } else {
        cx_xfer x = mk_recv(buf, g_mm[2], (uint32_t)g_mm[3]);
        post(c, &x);
        cx_status st = drive(c, &x, 1, 0);
        CHECK(st == CX_ERR_MISMATCH, "status %d, wanted CX_ERR_MISMATCH: %s", st, cx_last_error());
        CHECK(strstr(cx_last_error(), g_mm_want), "message lacks \"%s\": %s", g_mm_want,
              cx_last_error());
        CHECK(cx_last_error_peer() == 0, "error names peer %d", cx_last_error_peer());
        CHECK(c->ops->progress(c) == CX_ERR_MISMATCH, "the mismatch did not stick");
    }
    free(buf);
    c->ops->destroy(c);
}

static void role_bad_magic(int fd, int rank)
{
    (void)rank;
    unsigned char h[24] = {0};
    put_header(h, 0x48545450u /* "PTTH" */, 1, 8);
    write_all(fd, h, sizeof h);
    char b;
    while (read(fd, &b, 1) > 0) {}
}

static void role_expect_corrupt(int fd, int rank)
{
    cx_conn *c = conn_of(fd, rank);
    char buf[8];
    cx_xfer x = mk_recv(buf, 8, 1);
    post(c, &x);
    cx_status st = drive(c, &x, 1, 0);
    CHECK(st == CX_ERR_TRANSPORT && strstr(cx_last_error(), "corrupted"),
          "bad magic: status %d: %s", st, cx_last_error());
    c->ops->destroy(c);
}

/* Peer death. g_death selects who dies and how:
 *   0: rank 1 sends 64 MiB and _exit()s after 1 MiB (rank 0 sees EOF while receiving)
 *   1: rank 1 receives 64 MiB and _exit()s after 1 MiB (rank 0 sees a reset while sending)
 *      (0 and 1 run with tiny kernel buffers, so one progress call cannot finish 64 MiB)
 *   2: rank 1 streams; rank 0 SIGKILLs it after receiving 8 MiB
 *   3: rank 1 sleeps; rank 0 waits on a receive and SIGKILLs it */
static int g_death;
static pid_t g_child;

static void role_die(int fd, int rank)
{
    /* far more than loopback socket buffers hold (autotuned rmem reaches 32 MiB on
     * recent kernels): the transfer must still be in flight when the peer dies */
    const size_t n = 256u << 20;
    uint8_t *buf = xmalloc(n);
    memset(buf, 7, n);
    cx_conn *c = conn_of(fd, rank);
    if (g_death == 3)
        for (;;)
            pause();
    cx_xfer x = g_death == 1 ? mk_recv(buf, n, 5) : mk_send(buf, n, 5);
    post(c, &x);
    cx_status st = drive(c, &x, 1, g_death <= 1 ? 1u << 20 : 0);
    if (g_death == 2)
        for (;;) {   /* keep streaming until killed */
            x = mk_send(buf, n, 5);
            post(c, &x);
            drive(c, &x, 1, 0);
        }
    CHECK(st == CX_INPROGRESS && !x.done, "dying rank: status %d (done %d): %s", st, x.done,
          cx_last_error());
    _exit(g_fail ? 1 : 0);   /* mid-transfer, without closing anything */
}

static void role_survive(int fd, int rank)
{
    /* far more than loopback socket buffers hold (autotuned rmem reaches 32 MiB on
     * recent kernels): the transfer must still be in flight when the peer dies */
    const size_t n = 256u << 20;
    uint8_t *buf = xmalloc(n);
    memset(buf, 9, n);
    cx_conn *c = conn_of(fd, rank);
    cx_xfer x = g_death == 1 ? mk_send(buf, n, 5) : mk_recv(buf, g_death == 3 ? 8 : n, 5);
    post(c, &x);
    cx_status st = CX_OK;
    if (g_death >= 2) {
        if (g_death == 2)
            st = drive(c, &x, 1, 8u << 20);
        else
            for (int k = 0; k < 10; k++, usleep(10 * 1000))
                st = c->ops->progress(c);
        CHECK(st == (g_death == 2 ? CX_INPROGRESS : CX_OK), "before the kill: status %d: %s", st,
              cx_last_error());
        kill(g_child, SIGKILL);
    }
    double t0 = now();
    st = drive(c, &x, 1, 0);
    double dt = now() - t0;
    CHECK(st == CX_ERR_TRANSPORT, "status %d, wanted CX_ERR_TRANSPORT: %s", st, cx_last_error());
    CHECK(strstr(cx_last_error(), "rank 1 is gone"), "message does not name the dead rank: %s",
          cx_last_error());
    CHECK(dt < 10.0, "the dead peer took %.1f s to notice", dt);
    CHECK(c->ops->progress(c) == CX_ERR_TRANSPORT, "the transport error did not stick");
    free(buf);
    c->ops->destroy(c);
}

/* ---- driver ------------------------------------------------------------------------- */

static void run_pair(const char *name, int small, void (*r0)(int, int), void (*r1)(int, int),
                     int child_dies)
{
    int fds[2], before = g_fail;
    g_scenario = name;
    alarm(30);
    tcp_pair(fds, small);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0)
        DIE("fork: %s", strerror(errno));
    if (pid == 0) {
        g_role = "rank 1";
        prctl(PR_SET_PDEATHSIG, SIGKILL);   /* never outlive a parent that timed out */
        alarm(30);
        close(fds[0]);
        r1(fds[1], 1);
        _exit(g_fail ? 1 : 0);
    }
    g_child = pid;
    close(fds[1]);
    r0(fds[0], 0);
    int ws = 0;
    waitpid(pid, &ws, 0);
    if (!child_dies)
        CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "rank 1 failed (wait status 0x%x)", ws);
    printf("%-58s %s\n", name, g_fail == before ? "ok" : "FAILED");
}

/* Constructor and post() argument checks, in one process. */
static void local_checks(void)
{
    int fds[2], before = g_fail;
    g_scenario = "constructor and post checks";
    tcp_pair(fds, 0);
    cx_conn *c = (cx_conn *)1;
    CHECK(cx_tcp_conn_create(-1, 0, 1, &c) == CX_ERR_INVALID && c == NULL, "bad fd accepted");
    c = conn_of(fds[0], 0);
    int nodelay = 0;
    socklen_t len = sizeof nodelay;
    getsockopt(fds[0], IPPROTO_TCP, TCP_NODELAY, &nodelay, &len);
    CHECK(c->alive_fd == fds[0] && c->ops->wait_fd(c, &(short){0}) == fds[0], "alive_fd/wait_fd not the socket");
    CHECK(fcntl(fds[0], F_GETFL) & O_NONBLOCK, "socket left blocking");
    CHECK(nodelay, "TCP_NODELAY not set");
    CHECK(!strcmp(c->ops->name, "tcp") && c->peer == 1 && c->self == 0, "name/peer/self wrong");
    float a[3];
    cx_xfer x = mk_rred(a, a, 10, sum_f32, 4, 0);   /* 10 bytes is not whole float32s */
    CHECK(c->ops->post(c, &x) == CX_ERR_INVALID, "partial-element reduce-receive accepted");
    x = mk_recv(NULL, 4, 0);
    CHECK(c->ops->post(c, &x) == CX_ERR_INVALID, "NULL destination accepted");
    CHECK(c->npending == 0, "refused posts counted as pending");
    CHECK(c->ops->progress(c) == CX_OK, "idle progress failed: %s", cx_last_error());
    c->ops->destroy(c);
    CHECK(fcntl(fds[0], F_GETFD) < 0, "destroy did not close the socket");
    close(fds[1]);
    printf("%-58s %s\n", g_scenario, g_fail == before ? "ok" : "FAILED");
}

int main(void)
{
    signal(SIGALRM, on_alarm);
    signal(SIGPIPE, SIG_IGN);   /* the raw roles write with plain write() */
    setvbuf(stdout, NULL, _IOLBF, 0);
    local_checks();
    run_pair("sizes 0..64 MiB, both directions at once", 0, role_bidir, role_bidir, 0);
    run_pair("throughput, 64 MiB one way", 0, role_tput, role_tput, 0);
    run_pair("reduce-receive f32/int8/int64, tiny kernel buffers", 1, role_red_send,
             role_red_recv, 0);
    run_pair("reduce-receive, stream split mid-header and mid-element", 0, role_red_dribble,
             role_dribble_recv, 0);
    run_pair("receives queued before any data", 0, role_queued_recv, role_queued_send, 0);
    g_mm[0] = 100, g_mm[1] = 7, g_mm[2] = 200, g_mm[3] = 7;
    g_mm_want = "rank 0 sent 100 bytes for this step, rank 1 expected 200";
    run_pair("size mismatch -> CX_ERR_MISMATCH", 0, role_mm, role_mm, 0);
    g_mm[0] = 0, g_mm[1] = 7, g_mm[2] = 8, g_mm[3] = 7;
    g_mm_want = "rank 0 sent 0 bytes for this step, rank 1 expected 8";
    run_pair("zero-byte vs 8-byte mismatch -> CX_ERR_MISMATCH", 0, role_mm, role_mm, 0);
    g_mm[0] = 64, g_mm[1] = 0xAAAA, g_mm[2] = 64, g_mm[3] = 0xBBBB;
    g_mm_want = "fingerprint 0x0000aaaa, rank 1 expected 0x0000bbbb";
    run_pair("fingerprint mismatch -> CX_ERR_MISMATCH", 0, role_mm, role_mm, 0);
    run_pair("corrupted stream (bad magic) -> CX_ERR_TRANSPORT", 0, role_expect_corrupt,
             role_bad_magic, 0);
    static const char *deaths[] = {"peer _exit()s mid-send -> CX_ERR_TRANSPORT",
                                   "peer _exit()s mid-receive -> CX_ERR_TRANSPORT",
                                   "peer SIGKILLed mid-transfer -> CX_ERR_TRANSPORT",
                                   "peer SIGKILLed while idle -> CX_ERR_TRANSPORT"};
    for (g_death = 0; g_death < 4; g_death++)
        run_pair(deaths[g_death], g_death <= 1, role_survive, role_die, 1);
    if (g_fail)
        printf("%d check(s) FAILED\n", g_fail);
    else
        printf("all TCP transport checks passed\n");
    return g_fail ? 1 : 0;
}
