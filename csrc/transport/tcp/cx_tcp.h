/* cx_tcp.h - the TCP transport: one connected, authenticated stream per peer.
 *
 * The control plane (collx/transports, Python) connects/accepts and runs the HMAC
 * handshake, then hands the socket here. The transport owns it from then on. */
#ifndef CX_TCP_H
#define CX_TCP_H

#include "cx_transport.h"

/* Wrap a connected TCP socket `fd` joining rank `self` to rank `peer`.
 * Makes fd non-blocking and sets TCP_NODELAY; the connection's alive_fd is fd itself
 * (the data socket is the liveness signal). On CX_OK, *out owns fd: ops->destroy closes
 * it and frees everything. On failure *out is NULL, the error is set (cx_last_error) and
 * fd stays open and owned by the caller. */
cx_status cx_tcp_conn_create(int fd, int self, int peer, cx_conn **out);

#endif
