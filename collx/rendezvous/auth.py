"""Mutual HMAC-SHA256 challenge handshake: both ends of a fresh TCP connection prove they
hold the job secret before a single request byte is exchanged.

Used by the rendezvous store and, later, by every data-plane connection. The secret is made
by collxrun (``secrets.token_hex(32)``) and handed to ranks as COLLX_SECRET; it never crosses
the wire.

Protocol (each side does the same steps; the two directions run concurrently, so neither
side waits for the other to go first):

1. send ``HELLO = b"CLXA" | version(1) | len(role)(1) | role | nonce(32)``
2. read the peer's HELLO; refuse it when the magic/version differ or the peer claims *our*
   role (roles on the two ends must differ, e.g. b"store-client"/b"store-server" or
   b"connect"/b"accept")
3. send ``PROOF = HMAC(secret, b"collx-auth-v1" | len+own_role | peer_nonce | own_nonce)``
4. read the peer's PROOF and compare (``hmac.compare_digest``) with the value computed for
   the peer's role and nonces
5. send one verdict byte (1 = accepted, 0 = refused) and read the peer's verdict.

Why it resists the usual tricks: the proof covers the *peer's* fresh nonce, so a recorded
proof cannot be replayed on another connection; it covers the sender's role and roles must
differ, so a proof obtained from us (by reflecting our nonce back through a second
connection) is never a valid proof *to* us.

An empty secret (b"") still runs the protocol but proves nothing: allowed only for
single-process use (tests, one rank), never when ranks listen on a reachable address.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import time

from .. import config
from ..errors import CollxTimeout, TransportError

MAGIC = b"CLXA"
VERSION = 1
NONCE_BYTES = 32
PROOF_BYTES = 32
_LABEL = b"collx-auth-v1"
_FIX = ("the peer did not prove it holds the job secret (COLLX_SECRET); every rank must get "
        "the same COLLX_SECRET from the same collxrun")


def secret_from_env() -> bytes:
    """The job secret from COLLX_SECRET (via config.get), utf-8 encoded; b"" when unset.

    b"" is acceptable only for single-process use (no peer could prove anything with it);
    collxrun always sets a fresh random secret."""
    value = config.get("COLLX_SECRET")
    return value.encode("utf-8") if value else b""


def _proof(secret: bytes, role: bytes, peer_nonce: bytes, own_nonce: bytes) -> bytes:
    msg = _LABEL + struct.pack("!B", len(role)) + role + peer_nonce + own_nonce
    return hmac.new(secret, msg, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int, deadline: float, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise TransportError(f"auth handshake: connection closed by the peer while "
                                 f"reading its {what}; {_FIX}")
        buf += chunk
    return bytes(buf)


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout()
    sock.settimeout(left)
    sock.sendall(data)


def handshake(sock: socket.socket, secret: bytes, role: bytes, timeout: float) -> None:
    """Run the mutual challenge on connected ``sock``; return when both sides proved they
    hold ``secret``. Raises TransportError when the peer fails (or refuses us) and
    CollxTimeout when it does not finish within ``timeout`` s; the caller then closes the
    socket. The socket's previous timeout is restored on success."""
    if not isinstance(secret, (bytes, bytearray)) or not isinstance(role, (bytes, bytearray)):
        raise TypeError("handshake(secret, role) take bytes")
    if not 0 < len(role) < 256:
        raise ValueError("handshake role must be 1..255 bytes")
    secret, role = bytes(secret), bytes(role)
    previous = sock.gettimeout()
    deadline = time.monotonic() + timeout
    try:
        own_nonce = os.urandom(NONCE_BYTES)
        _send_all(sock, MAGIC + struct.pack("!BB", VERSION, len(role)) + role + own_nonce,
                  deadline)
        head = _recv_exact(sock, 6, deadline, "hello")
        if head[:4] != MAGIC or head[4] != VERSION:
            raise TransportError(f"auth handshake: the peer does not speak collx auth v"
                                 f"{VERSION} (got {head!r}); {_FIX}")
        peer_role = _recv_exact(sock, head[5], deadline, "role") if head[5] else b""
        peer_nonce = _recv_exact(sock, NONCE_BYTES, deadline, "nonce")
        if not peer_role or peer_role == role:
            raise TransportError(f"auth handshake: the peer claims role {peer_role!r}, which "
                                 f"must differ from ours; {_FIX}")
        _send_all(sock, _proof(secret, role, peer_nonce, own_nonce), deadline)
        peer_proof = _recv_exact(sock, PROOF_BYTES, deadline, "proof")
        expected = _proof(secret, peer_role, own_nonce, peer_nonce)
        ok = hmac.compare_digest(peer_proof, expected)
        _send_all(sock, b"\x01" if ok else b"\x00", deadline)
        if not ok:
            raise TransportError(f"auth handshake failed: {_FIX}")
        verdict = _recv_exact(sock, 1, deadline, "verdict")
        if verdict != b"\x01":
            raise TransportError(f"auth handshake: the peer refused our proof, so our secret "
                                 f"differs from its secret; {_FIX}")
    except socket.timeout as exc:
        raise CollxTimeout(f"auth handshake did not finish within {timeout:g} s; the peer is "
                           f"not a collx process or is stuck") from exc
    except OSError as exc:
        raise TransportError(f"auth handshake: connection failed ({exc}); {_FIX}") from exc
    sock.settimeout(previous)
