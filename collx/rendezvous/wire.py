"""Binary framing of the TCP store protocol (never pickle, never eval).

A frame is ``u32 length | u8 code | field*`` where ``length`` counts the bytes after itself
and each field is ``u32 length | bytes``; all integers big-endian. Requests carry an opcode,
replies a status. Keys are utf-8 fields, values raw bytes, numbers fixed-width fields
(f64 seconds for timeouts, i64 for counters).

==========  =======================================  ==========================
opcode      request fields                           OK reply fields
==========  =======================================  ==========================
SET    1    key, value                               —
GET    2    key, f64 timeout                         value
ADD    3    key, i64 amount                          i64 new value
WAIT   4    f64 timeout, key, key, ...               —
DELETE 5    key                                      u8 existed
PING   6    —                                        —
==========  =======================================  ==========================

Non-OK replies carry one utf-8 message field: TIMEOUT (→ CollxTimeout), INVALID
(→ InvalidUsage) or ERROR (→ CollxError).
"""
from __future__ import annotations

import socket
import struct

SET, GET, ADD, WAIT, DELETE, PING = 1, 2, 3, 4, 5, 6
OPCODES = {SET: "set", GET: "get", ADD: "add", WAIT: "wait", DELETE: "delete", PING: "ping"}
OK, TIMEOUT, INVALID, ERROR = 0, 1, 2, 3

MAX_FRAME = 1 << 30
_U32 = struct.Struct("!I")
_F64 = struct.Struct("!d")
_I64 = struct.Struct("!q")


class FrameError(Exception):
    """Malformed frame or connection closed mid-frame (caller maps it to a collx error)."""


def encode(code: int, fields: list[bytes]) -> bytes:
    """One frame: code plus length-prefixed fields."""
    parts = [b""]
    for f in fields:
        parts.append(_U32.pack(len(f)))
        parts.append(f)
    body = struct.pack("!B", code) + b"".join(parts)
    if len(body) > MAX_FRAME:
        raise ValueError(f"store message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _U32.pack(len(body)) + body


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes; FrameError when the peer closes first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise FrameError("connection closed")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket) -> tuple[int, list[bytes]]:
    """Read one frame; returns (code, fields)."""
    (length,) = _U32.unpack(recv_exact(sock, 4))
    if length < 1 or length > MAX_FRAME:
        raise FrameError(f"bad frame length {length}")
    body = recv_exact(sock, length)
    code, fields, pos = body[0], [], 1
    while pos < length:
        if pos + 4 > length:
            raise FrameError("truncated field header")
        (flen,) = _U32.unpack_from(body, pos)
        pos += 4
        if pos + flen > length:
            raise FrameError("truncated field")
        fields.append(body[pos:pos + flen])
        pos += flen
    return code, fields


def f64(x: float) -> bytes:
    return _F64.pack(x)


def un_f64(b: bytes) -> float:
    if len(b) != 8:
        raise FrameError("bad f64 field")
    return _F64.unpack(b)[0]


def i64(x: int) -> bytes:
    return _I64.pack(x)


def un_i64(b: bytes) -> int:
    if len(b) != 8:
        raise FrameError("bad i64 field")
    return _I64.unpack(b)[0]
