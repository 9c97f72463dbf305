/* conn.c - what every transport shares: the liveness check on a peer's socket. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "cx_transport.h"

void cx_conn_drain_notes(cx_conn *c)
{
    char notes[64];
    ssize_t got;
    if (c->alive_fd < 0 || c->alive_is_data)
        return;
    while ((got = recv(c->alive_fd, notes, sizeof notes, MSG_DONTWAIT)) > 0)
        if (memchr(notes, 'A', (size_t)got))
            c->peer_aborted = 1;
}

cx_status cx_conn_check_alive(cx_conn *c)
{
    if (c->alive_fd < 0)
        return CX_OK;
    struct pollfd p = {.fd = c->alive_fd, .events = POLLIN | POLLRDHUP};
    int r = poll(&p, 1, 0);
    if (r < 0)
        return errno == EINTR ? CX_OK
                              : CX_ERROR(CX_ERR_SYSTEM, c->peer, "poll on rank %d's socket: %s",
                                         c->peer, strerror(errno));
    if (r > 0 && (p.revents & POLLIN))
        cx_conn_drain_notes(c);     /* wake-up bytes, or the peer's abort notice */
    if (c->peer_aborted)
        return CX_ERROR(CX_ERR_TRANSPORT, c->peer,
                        "rank %d abandoned the communicator after an error of its own (a "
                        "timeout, a mismatch or a dead peer it saw; its own error says "
                        "which); rank %d cannot finish this collective", c->peer, c->self);
    /* The peer's kernel closes its sockets when it dies: FIN (RDHUP), RST (ERR) or HUP. */
    if (r > 0 && (p.revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)))
        return CX_ERROR(CX_ERR_TRANSPORT, c->peer,
                        "rank %d is gone (its connection to rank %d closed): the process died "
                        "or shut down; the communicator must be re-initialized",
                        c->peer, c->self);
    return CX_OK;
}
