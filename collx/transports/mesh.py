"""Connect every pair of ranks and hand each connection to a C transport.

Steps (each bounded by the deadline):
  1. open a listener on the address peers can reach (COLLX_HOST_ADDR, else the local address
     of our route to the store) and publish {host, port, host_id, pid} in the store;
  2. read every rank's record (we need all of them for local/cross ranks anyway);
  3. connect to every lower rank, accept from every higher rank — dependencies only point
     downward, so this order cannot deadlock; every connection runs the HMAC handshake
     (collx.rendezvous.auth) before a byte of data, and then names its rank;
  4. per pair choose the transport: ranks with the same host identity use shared memory
     (unless COLLX_TRANSPORT=tcp), others TCP. For shm the lower rank creates the pair
     segment, sends its name, waits for the peer to map it and unlinks the name, so nothing
     lingers in /dev/shm after a crash; the socket stays open only as a liveness signal.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass

from .. import config
from ..errors import CollxTimeout, InvalidUsage, TransportError
from ..rendezvous import auth
from ..rendezvous.store import Store
from .host import host_identity, kernel_identity


@dataclass(frozen=True)
class PeerRecord:
    rank: int
    host: str
    port: int
    host_id: str
    pid: int
    kernel: str = "-"       # boot id: processes with the same one share the CPUs


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise CollxTimeout(f"collx init timed out while {what}; are all ranks started? "
                           f"(COLLX_TIMEOUT)")
    return left


def _keepalive(sock: socket.socket, peer_timeout: float) -> None:
    """Notice a vanished host (no FIN/RST ever arrives) within about peer_timeout s."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    half = max(1, int(peer_timeout / 2))
    for opt, val in (("TCP_KEEPIDLE", half), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", half)):
        if hasattr(socket, opt):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise TransportError("connection closed during collx connection setup")
        data += chunk
    return bytes(data)


def _send_blob(sock: socket.socket, blob: bytes) -> None:
    sock.sendall(struct.pack("!I", len(blob)) + blob)


def _recv_blob(sock: socket.socket) -> bytes:
    (n,) = struct.unpack("!I", _recv_exact(sock, 4))
    return _recv_exact(sock, n)


def publish_and_collect(store: Store, prefix: str, rank: int, size: int, host: str, port: int,
                        deadline: float) -> list[PeerRecord]:
    me = PeerRecord(rank, host, port, host_identity(), os.getpid(), kernel_identity())
    store.set(f"{prefix}/peer/{rank}", json.dumps(me.__dict__).encode())
    records = []
    for r in range(size):
        raw = store.get(f"{prefix}/peer/{r}", timeout=_remaining(deadline, f"waiting for rank {r} to publish its address"))
        records.append(PeerRecord(**json.loads(raw)))
    return records


def choose_transport(a: PeerRecord, b: PeerRecord, forced: str) -> str:
    if forced not in ("auto", "shm", "tcp"):
        raise InvalidUsage(f"COLLX_TRANSPORT={forced!r}: use auto, shm or tcp")
    same_host = a.host_id == b.host_id
    if forced == "shm" and not same_host:
        raise InvalidUsage(f"COLLX_TRANSPORT=shm but ranks {a.rank} and {b.rank} are on "
                           f"different hosts; use auto")
    if forced == "tcp" or not same_host:
        return "tcp"
    return "shm"


def connect_mesh(ccomm, store: Store, rank: int, size: int, secret: bytes, timeout: float,
                 prefix: str = "collx/mesh") -> tuple[list[PeerRecord], dict[int, str]]:
    """Connect this rank to all others; returns (records of every rank, peer -> transport)."""
    deadline = time.monotonic() + timeout
    forced = config.get("COLLX_TRANSPORT")
    eager = config.get("COLLX_SHM_EAGER_BYTES")
    peer_timeout = config.get("COLLX_PEER_TIMEOUT")
    host = config.get("COLLX_HOST_ADDR") or getattr(store, "local_address", lambda: "127.0.0.1")()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, 0))
    except OSError as exc:
        raise InvalidUsage(f"rank {rank} cannot listen on {host!r} ({exc}); set COLLX_HOST_ADDR "
                           f"to an address of this host that the other ranks can reach") from exc
    listener.listen(max(16, size))
    records = publish_and_collect(store, prefix, rank, size, host, listener.getsockname()[1], deadline)
    socks: dict[int, socket.socket] = {}
    try:
        for peer in range(rank):
            rec = records[peer]
            sock = socket.create_connection((rec.host, rec.port),
                                            timeout=_remaining(deadline, f"connecting to rank {peer} at {rec.host}:{rec.port}"))
            sock.settimeout(_remaining(deadline, f"authenticating with rank {peer}"))
            auth.handshake(sock, secret, b"collx-connect", _remaining(deadline, f"authenticating with rank {peer}"))
            sock.sendall(struct.pack("!ii", rank, peer))
            socks[peer] = sock
        while len(socks) < size - 1:
            listener.settimeout(_remaining(deadline, f"waiting for ranks above {rank} to connect"))
            sock, _ = listener.accept()
            sock.settimeout(_remaining(deadline, "authenticating a connecting rank"))
            try:
                auth.handshake(sock, secret, b"collx-accept", _remaining(deadline, "authenticating a connecting rank"))
                src, dst = struct.unpack("!ii", _recv_exact(sock, 8))
            except (TransportError, OSError):
                sock.close()     # not one of ours: refuse it and keep waiting
                continue
            if dst != rank or not (rank < src < size) or src in socks:
                sock.close()
                continue
            socks[src] = sock
        transports = {}
        for peer in sorted(socks):
            transports[peer] = _attach(ccomm, rank, peer, socks.pop(peer), records, forced,
                                       eager, peer_timeout, deadline)
        return records, transports
    finally:
        listener.close()
        for sock in socks.values():
            sock.close()


def _attach(ccomm, rank: int, peer: int, sock: socket.socket, records: list[PeerRecord],
            forced: str, eager: int, peer_timeout: float, deadline: float) -> str:
    kind = choose_transport(records[rank], records[peer], forced)
    _keepalive(sock, peer_timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind == "tcp":
        sock.setblocking(True)
        ccomm.add_tcp(peer, sock.detach())
        return kind
    sock.settimeout(_remaining(deadline, f"setting up shared memory with rank {peer}"))
    if rank < peer:
        name = f"/collx-{uuid.uuid4().hex[:16]}-{rank}-{peer}"
        ccomm.add_shm(peer, os.dup(sock.fileno()), name, 1, records[peer].pid, eager)
        try:
            _send_blob(sock, name.encode())
            if _recv_blob(sock) != b"mapped":
                raise TransportError(f"rank {peer} could not map shared memory {name}")
        finally:
            from .. import _C
            _C.shm_unlink(name)
    else:
        name = _recv_blob(sock).decode()
        ccomm.add_shm(peer, os.dup(sock.fileno()), name, 0, records[peer].pid, eager)
        _send_blob(sock, b"mapped")
    sock.close()     # the C side keeps its own duplicate as the liveness socket
    return kind
