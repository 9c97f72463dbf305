/* cx_shm.h - shared-memory transport between ranks of one host. */
#ifndef CX_SHM_H
#define CX_SHM_H
#include "cx_transport.h"

/* Map the pair segment `name` (POSIX shm) shared by self and peer. The lower rank creates
 * it (create=1, with eager_bytes per slot), the higher opens it (create=0, eager_bytes
 * read from the segment). alive_fd: a connected socket to the peer, owned by the conn from
 * now on, used only to notice the peer's death. peer_pid: for Cross Memory Attach. */
cx_status cx_shm_conn_create(int alive_fd, int self, int peer, const char *name, int create,
                             int peer_pid, size_t eager_bytes, cx_conn **out);
/* Remove the name once both sides mapped it: nothing is left in /dev/shm after a crash. */
cx_status cx_shm_unlink(const char *name);
/* Allow any process of this user to read our memory with process_vm_readv (Yama). */
void cx_shm_allow_cma(void);
#endif
