"""Rendezvous store: InProcessStore and TCPStore/TCPStoreServer over real sockets, the HMAC
handshake, and a client in a separate process. No mocks: every TCP test talks to a real
server thread."""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from collx.errors import CollxError, CollxTimeout, InvalidUsage, TransportError
from collx.rendezvous import (InProcessStore, Store, TCPStore, TCPStoreServer, handshake,
                              secret_from_env)
from collx.rendezvous import auth, wire
from collx.rendezvous.tcp import CLIENT_ROLE, SERVER_ROLE

pytestmark = pytest.mark.timeout(30)

SECRET = b"0123456789abcdef" * 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def server():
    srv = TCPStoreServer("127.0.0.1", 0, secret=SECRET).start()
    yield srv
    srv.stop()


@pytest.fixture(params=["memory", "tcp"])
def store_pair(request, server):
    """Two handles on one store: (a, b). For TCP, two separate client connections."""
    if request.param == "memory":
        s = InProcessStore()
        yield s, s
        s.close()
    else:
        a = TCPStore(server.address, SECRET, timeout=10)
        b = TCPStore(server.address, SECRET, timeout=10)
        yield a, b
        a.close()
        b.close()


# ---------------------------------------------------------------- the Store contract

def test_set_get_add_wait_delete(store_pair):
    a, b = store_pair
    assert isinstance(a, Store)
    a.set("k", b"v1")
    assert b.get("k") == b"v1"
    a.set("k", b"v2")  # overwrite
    assert b.get("k", timeout=1) == b"v2"
    assert a.add("ctr", 5) == 5
    assert b.add("ctr", -2) == 3
    assert a.get("ctr") == b"3"  # counters are decimal ASCII
    b.wait(["k", "ctr"], timeout=1)
    assert a.delete("k") is True
    assert a.delete("k") is False
    with pytest.raises(CollxTimeout):
        b.get("k", timeout=0)


def test_binary_values(store_pair):
    a, b = store_pair
    blob = bytes(range(256)) * 3 + b"\x00\x00end\x00"
    a.set("bin", blob)
    a.set("empty", b"")
    a.set("big", os.urandom(1 << 20))
    assert b.get("bin") == blob
    assert b.get("empty") == b""
    assert len(b.get("big")) == 1 << 20
    a.set("ключ/ünïcode", bytearray(b"\x00x"))
    assert b.get("ключ/ünïcode") == b"\x00x"


def test_get_timeout_is_prompt_and_named(store_pair):
    a, _ = store_pair
    t0 = time.monotonic()
    with pytest.raises(CollxTimeout) as info:
        a.get("never-set", timeout=0.3)
    elapsed = time.monotonic() - t0
    assert 0.25 <= elapsed < 1.5
    assert "never-set" in str(info.value) and a.describe() in str(info.value)
    a.add("ctr0", 1)
    with pytest.raises(CollxTimeout) as info:
        a.wait(["ctr0", "missing-1"], timeout=0.1)
    assert "missing-1" in str(info.value) and "ctr0" not in str(info.value)


def test_default_timeout_from_knob(monkeypatch):
    monkeypatch.setenv("COLLX_TIMEOUT", "0.2")
    s = InProcessStore()
    t0 = time.monotonic()
    with pytest.raises(CollxTimeout):
        s.get("x")
    assert time.monotonic() - t0 < 1.5


def test_blocked_get_woken_by_other_client(store_pair):
    a, b = store_pair
    got: list[bytes] = []
    waiter = threading.Thread(target=lambda: got.append(a.get("late", timeout=10)))
    waiter.start()
    time.sleep(0.2)
    assert not got
    t0 = time.monotonic()
    b.set("late", b"\x00here")
    waiter.join(5)
    assert got == [b"\x00here"] and time.monotonic() - t0 < 1.0

    done = threading.Event()
    w2 = threading.Thread(target=lambda: (a.wait(["w1", "w2"], timeout=10), done.set()))
    w2.start()
    b.set("w1", b"")
    time.sleep(0.1)
    assert not done.is_set()
    b.add("w2", 1)
    w2.join(5)
    assert done.is_set()


def test_concurrent_add_exact(store_pair):
    a, b = store_pair
    per_thread, threads = 200, 8

    def work(i: int) -> None:
        s = a if i % 2 else b
        for _ in range(per_thread):
            s.add("total", 1)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert a.get("total") == str(per_thread * threads).encode()


def test_one_client_many_threads_does_not_serialize_waits(server):
    """A blocking get on one thread must not stall a set on another thread of the same
    client (the client pools connections)."""
    c = TCPStore(server.address, SECRET, timeout=10)
    got = []
    t = threading.Thread(target=lambda: got.append(c.get("x", timeout=10)))
    t.start()
    time.sleep(0.1)
    c.set("x", b"1")
    t.join(5)
    assert got == [b"1"]
    c.close()


def test_invalid_usage(store_pair):
    a, _ = store_pair
    with pytest.raises(InvalidUsage):
        a.set("k", "not bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidUsage):
        a.set("", b"x")
    with pytest.raises(InvalidUsage):
        a.wait("single-key")  # type: ignore[arg-type]
    a.set("text", b"hello")
    with pytest.raises(InvalidUsage):
        a.add("text", 1)
    assert a.get("text") == b"hello"
    a.add("big", 2**63 - 1)
    with pytest.raises(InvalidUsage):
        a.add("big", 1)
    assert a.get("big") == str(2**63 - 1).encode()


def test_closed_store_wakes_waiters():
    s = InProcessStore()
    errors = []

    def waiter() -> None:
        try:
            s.get("x", timeout=10)
        except CollxError as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    s.close()
    t.join(2)
    assert errors and not isinstance(errors[0], CollxTimeout)


def test_server_stop_fails_blocked_client():
    srv = TCPStoreServer(secret=SECRET).start()
    c = TCPStore(srv.address, SECRET, timeout=1)  # reconnect attempts give up after 1 s
    errors = []

    def waiter() -> None:
        try:
            c.get("x", timeout=10)
        except CollxError as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    srv.stop()
    t.join(5)
    assert errors and time.monotonic() - t0 < 3
    with pytest.raises(CollxError):
        c.set("y", b"1")


# ---------------------------------------------------------------- connecting

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_until_server_starts():
    port = _free_port()
    result = []
    t = threading.Thread(target=lambda: result.append(
        TCPStore(f"127.0.0.1:{port}", SECRET, timeout=10)))
    t.start()
    time.sleep(0.4)
    srv = TCPStoreServer("127.0.0.1", port, secret=SECRET).start()
    try:
        t.join(10)
        assert result
        result[0].set("a", b"1")
        assert srv.store.get("a", timeout=0) == b"1"
        assert result[0].local_address() == "127.0.0.1"
        result[0].close()
    finally:
        srv.stop()


def test_unreachable_store_error_names_address_and_fix():
    port = _free_port()
    t0 = time.monotonic()
    with pytest.raises(CollxTimeout) as info:
        TCPStore(f"127.0.0.1:{port}", SECRET, timeout=0.5)
    assert time.monotonic() - t0 < 2.0
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "COLLX_STORE_ADDR" in msg
    with pytest.raises(InvalidUsage):
        TCPStore("no-port-here", SECRET, timeout=0.5)


# ---------------------------------------------------------------- authentication

def _port(server: TCPStoreServer) -> int:
    return int(server.address.rsplit(":", 1)[1])


def _seed(server: TCPStoreServer) -> dict[str, bytes]:
    server.store.set("victim", b"original")
    return {k: server.store.get(k, timeout=0) for k in server.store.keys()}


def _snapshot(server: TCPStoreServer) -> dict[str, bytes]:
    return {k: server.store.get(k, timeout=0) for k in server.store.keys()}


def _read_until_closed(sock: socket.socket, limit: float = 5.0) -> bytes:
    """Everything the server sends before closing; proves it does close."""
    sock.settimeout(limit)
    data = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def test_wrong_secret_client_can_neither_read_nor_write(server):
    before = _seed(server)
    with pytest.raises(TransportError) as info:
        TCPStore(server.address, b"wrong-secret", timeout=5)
    assert "COLLX_SECRET" in str(info.value)
    assert _snapshot(server) == before
    _eventually(lambda: server.rejected == 1)


def test_raw_socket_without_handshake_is_dropped(server):
    """A client that skips the handshake and sends requests straight away gets nothing."""
    before = _seed(server)
    s = socket.create_connection(("127.0.0.1", _port(server)))
    s.sendall(wire.encode(wire.SET, [b"evil", b"x"]) + wire.encode(wire.GET, [b"victim",
                                                                            wire.f64(1)]))
    data = _read_until_closed(s)
    s.close()
    # It saw at most the server's public hello (magic, role, nonce), never the value.
    assert b"original" not in data and len(data) <= 6 + len(SERVER_ROLE) + auth.NONCE_BYTES
    assert _snapshot(server) == before and "evil" not in server.store.keys()


def _hello(role: bytes, nonce: bytes) -> bytes:
    return auth.MAGIC + struct.pack("!BB", auth.VERSION, len(role)) + role + nonce


def _read_hello(sock: socket.socket) -> tuple[bytes, bytes]:
    head = wire.recv_exact(sock, 6)
    role = wire.recv_exact(sock, head[5])
    return role, wire.recv_exact(sock, auth.NONCE_BYTES)


def test_raw_socket_with_forged_proof_is_dropped(server):
    """Speaks the handshake correctly but cannot compute the HMAC: the server refuses,
    closes, and never reads the request that follows."""
    before = _seed(server)
    s = socket.create_connection(("127.0.0.1", _port(server)))
    s.settimeout(5)
    s.sendall(_hello(CLIENT_ROLE, os.urandom(32)))
    _read_hello(s)
    s.sendall(os.urandom(32))  # a guessed proof
    wire.recv_exact(s, auth.PROOF_BYTES)  # the server's proof (useless without the secret)
    assert wire.recv_exact(s, 1) == b"\x00"  # verdict: refused
    try:
        s.sendall(wire.encode(wire.SET, [b"evil", b"x"]))
    except OSError:
        pass
    assert _read_until_closed(s) == b""
    s.close()
    assert _snapshot(server) == before and "evil" not in server.store.keys()


def test_reflection_and_replay_fail(server):
    """Reflection: claim the server's own role and echo its proof back. Replay: resend a
    legitimate client's recorded hello+proof on a new connection."""
    before = _seed(server)
    port = _port(server)
    # reflection: two connections, feed the server's nonce and proof back to itself
    s1 = socket.create_connection(("127.0.0.1", port))
    s1.settimeout(5)
    _, n1 = _read_hello(s1)
    s2 = socket.create_connection(("127.0.0.1", port))
    s2.settimeout(5)
    _, n2 = _read_hello(s2)
    s2.sendall(_hello(SERVER_ROLE, n1))
    s1.sendall(_hello(SERVER_ROLE, n2))
    assert _read_until_closed(s1) == b"" and _read_until_closed(s2) == b""
    s1.close()
    s2.close()
    # replay: record a real client's proof for a nonce we chose, then replay it
    a, b = socket.socketpair()
    t = threading.Thread(target=lambda: _swallow(lambda: handshake(a, SECRET, CLIENT_ROLE, 5)))
    t.start()
    b.settimeout(5)
    role, client_nonce = _read_hello(b)
    b.sendall(_hello(SERVER_ROLE, os.urandom(32)))
    recorded = wire.recv_exact(b, auth.PROOF_BYTES)
    b.close()
    t.join(5)
    a.close()
    s3 = socket.create_connection(("127.0.0.1", port))
    s3.settimeout(5)
    s3.sendall(_hello(role, client_nonce))
    _read_hello(s3)
    s3.sendall(recorded)
    wire.recv_exact(s3, auth.PROOF_BYTES)
    assert wire.recv_exact(s3, 1) == b"\x00"
    assert _read_until_closed(s3) == b""
    s3.close()
    assert _snapshot(server) == before
    _eventually(lambda: server.rejected == 3)


def _eventually(cond, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _swallow(fn) -> None:
    try:
        fn()
    except CollxError:
        pass


def _pair_handshake(secret_a: bytes, secret_b: bytes, role_a: bytes = b"connect",
                    role_b: bytes = b"accept") -> list[BaseException | None]:
    a, b = socket.socketpair()
    results: list[BaseException | None] = [None, None]

    def side(i: int, sock: socket.socket, secret: bytes, role: bytes) -> None:
        try:
            handshake(sock, secret, role, 5)
        except CollxError as exc:
            results[i] = exc
            sock.close()

    ts = [threading.Thread(target=side, args=(0, a, secret_a, role_a)),
          threading.Thread(target=side, args=(1, b, secret_b, role_b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    a.close()
    b.close()
    return results


def test_handshake_on_socketpair():
    assert _pair_handshake(SECRET, SECRET) == [None, None]
    res = _pair_handshake(SECRET, b"other")
    assert all(isinstance(r, TransportError) for r in res)
    assert all("COLLX_SECRET" in str(r) for r in res)
    res = _pair_handshake(SECRET, SECRET, b"same", b"same")  # anti-reflection rule
    assert all(isinstance(r, TransportError) for r in res)


def test_handshake_deadline():
    a, b = socket.socketpair()  # b never answers
    t0 = time.monotonic()
    with pytest.raises(CollxTimeout):
        handshake(a, SECRET, b"connect", 0.3)
    assert time.monotonic() - t0 < 1.5
    a.close()
    b.close()


def test_secret_from_env(monkeypatch):
    monkeypatch.setenv("COLLX_SECRET", "abc123")
    assert secret_from_env() == b"abc123"
    monkeypatch.delenv("COLLX_SECRET")
    assert secret_from_env() == b""


# ---------------------------------------------------------------- another process

def test_client_in_separate_process(server):
    code = (
        "from collx.rendezvous import TCPStore\n"
        "s = TCPStore.from_env(timeout=10)\n"
        "assert s.get('question') == b'\\x00ping'\n"
        "s.add('arrived', 1)\n"
        "s.set('answer', b'\\x00pong:' + s.local_address().encode())\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO, COLLX_STORE_ADDR=server.address,
               COLLX_SECRET=SECRET.decode())
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    local = TCPStore(server.address, SECRET, timeout=10)
    local.set("question", b"\x00ping")
    assert local.get("answer", timeout=20) == b"\x00pong:127.0.0.1"
    assert proc.wait(20) == 0
    assert local.get("arrived") == b"1"
    # the same process with the wrong secret fails with a clear error and changes nothing
    env["COLLX_SECRET"] = "wrong"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=20)
    assert bad.returncode != 0 and "TransportError" in bad.stderr
    assert local.get("arrived") == b"1"
    local.close()
