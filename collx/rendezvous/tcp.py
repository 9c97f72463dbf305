"""TCP rendezvous store: a server run by the launcher (collxrun) in background threads, and
a client every rank uses.

Every connection first completes :func:`collx.rendezvous.auth.handshake`; a client that
fails it is disconnected before a single request is read or answered. Requests use the
binary framing of :mod:`collx.rendezvous.wire`. The server keeps its data in an
:class:`InProcessStore` and serves each connection on its own thread, so a blocked ``get``
never holds up other clients (jobs have tens of ranks, not thousands).
"""
from __future__ import annotations

import math
import select
import socket
import struct
import threading
import time

from .. import config
from ..errors import CollxError, CollxTimeout, InvalidUsage, TransportError
from . import wire
from .auth import handshake, secret_from_env
from .memory import InProcessStore
from .store import Store, check_key, check_keys, check_value, resolve_timeout

CLIENT_ROLE = b"collx-store-client"
SERVER_ROLE = b"collx-store-server"
_FIX = "is collxrun's store running? check COLLX_STORE_ADDR"
_SLACK = 10.0  # extra seconds a client waits for a reply beyond the server-side deadline
_WAIT_SLICE = 1.0  # server re-checks a waiting client's socket this often


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) -> (host, port)."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidUsage(f"store address {address!r} is not host:port; {_FIX}")
    return host.strip("[]"), int(port)


def _sock_timeout(seconds: float) -> float | None:
    return None if math.isinf(seconds) else max(seconds, 0.001)


class TCPStoreServer:
    """The job's rendezvous store server. ``start()`` binds and serves in daemon threads;
    ``address`` is then "host:port"; ``stop()`` closes every connection and wakes waiters."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, secret: bytes | None = None,
                 handshake_timeout: float = 10.0) -> None:
        if not isinstance(secret, (bytes, bytearray)):
            raise InvalidUsage("TCPStoreServer needs secret=bytes (collxrun makes one with "
                               "secrets.token_hex(32))")
        self._host, self._port, self._secret = host, port, bytes(secret)
        self._handshake_timeout = handshake_timeout
        self.store = InProcessStore(name=f"TCPStoreServer({host}:{port})")
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stopping = False
        self.rejected = 0  # connections that failed the handshake (tests, diagnostics)

    @property
    def address(self) -> str:
        if self._listener is None:
            raise InvalidUsage("TCPStoreServer.address is known after start()")
        host, port = self._listener.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> "TCPStoreServer":
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, self._port))
        sock.listen(256)
        self._listener = sock
        self.store._name = f"TCPStoreServer({self.address})"
        t = threading.Thread(target=self._accept_loop, name="collx-store-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        """Stop serving: close the listener and all connections, wake blocked requests."""
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
            conns = list(self._conns)
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        self.store.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(timeout=2.0)

    def __enter__(self) -> "TCPStoreServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.01)
                continue
            with self._lock:
                if self._stopping:
                    conn.close()
                    return
                self._conns.add(conn)
                self._threads = [t for t in self._threads if t.is_alive()]
                t = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                     name="collx-store-conn")
                self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                handshake(conn, self._secret, SERVER_ROLE, self._handshake_timeout)
            except CollxError:
                with self._lock:
                    self.rejected += 1
                return
            conn.settimeout(None)
            while not self._stopping:
                try:
                    op, fields = wire.recv_frame(conn)
                except (wire.FrameError, OSError):
                    return
                conn.sendall(self._dispatch(conn, op, fields))
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _dispatch(self, conn: socket.socket, op: int, fields: list[bytes]) -> bytes:
        """Run one request against the in-memory store; the reply frame."""
        try:
            if op == wire.SET and len(fields) == 2:
                self.store.set(fields[0].decode(), fields[1])
                return wire.encode(wire.OK, [])
            if op == wire.GET and len(fields) == 2:
                key = fields[0].decode()
                self._wait(conn, [key], wire.un_f64(fields[1]))
                return wire.encode(wire.OK, [self.store.get(key, timeout=0)])
            if op == wire.ADD and len(fields) == 2:
                new = self.store.add(fields[0].decode(), wire.un_i64(fields[1]))
                return wire.encode(wire.OK, [wire.i64(new)])
            if op == wire.WAIT and len(fields) >= 1:
                self._wait(conn, [f.decode() for f in fields[1:]], wire.un_f64(fields[0]))
                return wire.encode(wire.OK, [])
            if op == wire.DELETE and len(fields) == 1:
                existed = self.store.delete(fields[0].decode())
                return wire.encode(wire.OK, [b"\x01" if existed else b"\x00"])
            if op == wire.PING:
                return wire.encode(wire.OK, [])
            return wire.encode(wire.INVALID, [f"malformed request op={op} with "
                                              f"{len(fields)} fields".encode()])
        except _WaitTimeout as exc:
            return wire.encode(wire.TIMEOUT, [k.encode() for k in exc.missing])
        except (InvalidUsage, UnicodeDecodeError, wire.FrameError, OverflowError,
                struct.error) as exc:
            return wire.encode(wire.INVALID, [str(exc).encode()])
        except CollxError as exc:
            return wire.encode(wire.ERROR, [str(exc).encode()])

    def _wait(self, conn: socket.socket, keys: list[str], timeout: float) -> None:
        """Wait for ``keys`` in slices, giving up early when the client hangs up (so a
        crashed rank does not pin a server thread until its deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                self.store.wait(keys, timeout=max(0.0, min(left, _WAIT_SLICE)))
                return
            except CollxTimeout:
                if left <= _WAIT_SLICE or _peer_closed(conn):
                    raise _WaitTimeout(self.store.missing(keys)) from None


class _WaitTimeout(Exception):
    """Server side: a get/wait passed its deadline; carries the keys still missing."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(missing)
        self.missing = missing


def _peer_closed(conn: socket.socket) -> bool:
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class TCPStore(Store):
    """Client of a :class:`TCPStoreServer`. Connecting retries with backoff until
    ``timeout`` (the server may start after the ranks). Thread-safe: each request borrows
    a connection from a small pool (opening another when all are busy), so one thread's
    blocking ``get`` does not stall another thread's ``set``."""

    def __init__(self, address: str, secret: bytes, timeout: float | None = None) -> None:
        self._address = str(address)
        self._host, self._port = parse_address(self._address)
        if not isinstance(secret, (bytes, bytearray)):
            raise InvalidUsage("TCPStore secret must be bytes (see auth.secret_from_env)")
        self._secret = bytes(secret)
        self._timeout = resolve_timeout(timeout)
        self._lock = threading.Lock()
        self._idle: list[socket.socket] = []
        self._closed = False
        first = self._connect()
        self._local = first.getsockname()[0]
        self._idle.append(first)

    @classmethod
    def from_env(cls, timeout: float | None = None) -> "TCPStore":
        """Client of the launcher's store: COLLX_STORE_ADDR and COLLX_SECRET."""
        address = config.get("COLLX_STORE_ADDR")
        if not address:
            raise InvalidUsage("COLLX_STORE_ADDR is not set; start the job with collxrun "
                               "(or set COLLX_STORE_ADDR=host:port and COLLX_SECRET)")
        return cls(address, secret_from_env(), timeout)

    def describe(self) -> str:
        return f"TCPStore({self._address})"

    def local_address(self) -> str:
        """This host's IP on the route to the store: an address peers can likely reach."""
        return self._local

    def _connect(self) -> socket.socket:
        deadline = time.monotonic() + self._timeout
        delay = 0.02
        while True:
            left = deadline - time.monotonic()
            try:
                sock = socket.create_connection((self._host, self._port),
                                                timeout=_sock_timeout(min(max(left, 0.5), 5.0)))
            except OSError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CollxTimeout(f"could not connect to the store at {self._address} "
                                       f"within {self._timeout:g} s (last error: {exc}); "
                                       f"{_FIX}") from exc
                time.sleep(min(delay, left))
                delay = min(delay * 2, 1.0)
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                handshake(sock, self._secret, CLIENT_ROLE, min(max(left, 5.0), 60.0))
            except CollxError as exc:
                sock.close()
                raise type(exc)(f"store at {self._address}: {exc} (check that this process's "
                                f"COLLX_SECRET is the one collxrun gave the job)") from exc
            return sock

    def _request(self, op: int, fields: list[bytes], wait_s: float = 0.0,
                 timeout: float = 0.0) -> list[bytes]:
        """Send one request on a pooled connection and return the OK reply's fields."""
        with self._lock:
            if self._closed:
                raise CollxError(f"{self.describe()} is closed")
            sock = self._idle.pop() if self._idle else None
        if sock is None:
            sock = self._connect()
        what = wire.OPCODES.get(op, str(op))
        try:
            sock.settimeout(_sock_timeout(wait_s + max(self._timeout, _SLACK)))
            sock.sendall(wire.encode(op, fields))
            status, reply = wire.recv_frame(sock)
        except (OSError, wire.FrameError) as exc:
            sock.close()
            raise TransportError(f"{what} on the store at {self._address} failed: the "
                                 f"connection broke ({exc}); {_FIX}") from exc
        with self._lock:
            if self._closed or len(self._idle) >= 8:
                sock.close()
            else:
                self._idle.append(sock)
        if status == wire.OK:
            return reply
        if status == wire.TIMEOUT:
            missing = [k.decode("utf-8", "replace") for k in reply]
            raise CollxTimeout(f"{what}: key(s) {missing!r} did not appear in "
                               f"{self.describe()} within {timeout:g} s; a rank that should "
                               f"set them may have failed or be slow (raise COLLX_TIMEOUT or "
                               f"pass timeout=)")
        message = reply[0].decode("utf-8", "replace") if reply else "(no message)"
        if status == wire.INVALID:
            raise InvalidUsage(f"{what} on {self.describe()}: {message}")
        raise CollxError(f"{what} on {self.describe()}: {message}")

    def set(self, key: str, value: bytes) -> None:
        self._request(wire.SET, [check_key(key).encode(), check_value(value)])

    def get(self, key: str, timeout: float | None = None) -> bytes:
        t = resolve_timeout(timeout, self._timeout)
        return self._request(wire.GET, [check_key(key).encode(), wire.f64(t)], t, t)[0]

    def add(self, key: str, amount: int) -> int:
        try:
            amount_field = wire.i64(int(amount))
        except Exception as exc:
            raise InvalidUsage(f"add({key!r}, {amount!r}): amount must fit in int64") from exc
        return wire.un_i64(self._request(wire.ADD, [check_key(key).encode(), amount_field])[0])

    def wait(self, keys: list[str], timeout: float | None = None) -> None:
        t = resolve_timeout(timeout, self._timeout)
        self._request(wire.WAIT, [wire.f64(t)] + [k.encode() for k in check_keys(keys)], t, t)

    def delete(self, key: str) -> bool:
        return self._request(wire.DELETE, [check_key(key).encode()])[0] == b"\x01"

    def ping(self) -> None:
        """Round-trip to the server (health check)."""
        self._request(wire.PING, [])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for s in idle:
            s.close()
