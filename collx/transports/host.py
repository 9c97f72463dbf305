"""Host identity: which ranks share memory.

Hostname alone is not enough: network namespaces on one kernel (our multi-host tests, and
containers) may share or differ in hostname while being separate "hosts" on the network.
Two ranks are on one host when they share the kernel (boot id) and the network, IPC, PID
and UTS namespaces — then POSIX shared memory and process_vm_readv reach each other.
"""
from __future__ import annotations

import hashlib
import os
import socket


def _ns_inode(kind: str) -> str:
    try:
        return str(os.stat(f"/proc/self/ns/{kind}").st_ino)
    except OSError:
        return "-"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "-"


def kernel_identity() -> str:
    """Equal for processes on one kernel, hence on the same CPUs (network-namespace "hosts"
    of one machine included): what decides whether busy-polling steals a peer's core."""
    return _boot_id()


def host_identity() -> str:
    """A short stable id equal for exactly the ranks that can share memory.
    COLLX_HOSTNAME replaces the detection: ranks giving the same name are one host (shm
    between them), different names are different hosts (tcp), e.g. to emulate hosts."""
    from .. import config
    forced = config.get("COLLX_HOSTNAME")
    if forced:
        return "name:" + hashlib.sha256(forced.encode()).hexdigest()[:16]
    parts = [_boot_id(), socket.gethostname()] + [_ns_inode(k) for k in ("net", "ipc", "pid", "uts")]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
