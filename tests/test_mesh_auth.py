"""Data connections between ranks are accepted only from peers that prove they hold the job
secret: a stranger connecting to a rank's listener is refused (and learns nothing), and the
job still forms and computes correctly afterwards."""
from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from collx.errors import TransportError
from collx.rendezvous import TCPStore, TCPStoreServer, handshake

pytestmark = pytest.mark.timeout(90)
REPO = Path(__file__).resolve().parents[1]
RANK = ("import numpy as np, collx; collx.init(); "
        "y = collx.allreduce(np.arange(5.0) * (collx.rank() + 1), op=collx.Sum); "
        "assert (y == np.arange(5.0) * 3).all(), y; print('OK', collx.rank(), flush=True); "
        "collx.shutdown()")


def _start(rank: int, addr: str, secret: str) -> subprocess.Popen:
    env = dict(os.environ, COLLX_RANK=str(rank), COLLX_SIZE="2", COLLX_STORE_ADDR=addr,
               COLLX_SECRET=secret, PYTHONPATH=str(REPO), COLLX_TIMEOUT="60")
    return subprocess.Popen([sys.executable, "-c", RANK], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_stranger_is_refused_by_a_rank_and_the_job_still_forms():
    secret = secrets.token_hex(16)
    with TCPStoreServer(secret=secret.encode()) as server:
        rank0 = _start(0, server.address, secret)
        store = TCPStore(server.address, secret.encode(), timeout=30)
        rec = json.loads(store.get("collx/g1/peer/0", timeout=30))   # rank 0's listener
        # Strangers connect while rank 0 still waits for rank 1 to publish: they sit in its
        # listen queue, so rank 0 meets them first when it starts accepting.
        results: dict[str, object] = {}

        def stranger(name: str, wrong: bytes) -> None:
            try:
                with socket.create_connection((rec["host"], rec["port"]), timeout=30) as s:
                    handshake(s, wrong, b"collx-connect", timeout=30)
                    results[name] = "accepted"
            except TransportError as exc:
                results[name] = exc

        def garbage() -> None:
            with socket.create_connection((rec["host"], rec["port"]), timeout=30) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n" * 8)
                s.settimeout(30)
                data = b""
                try:
                    while chunk := s.recv(4096):
                        data += chunk
                except (ConnectionResetError, socket.timeout):
                    pass
                results["garbage"] = data

        threads = [threading.Thread(target=stranger, args=("wrong", b"not-the-secret")),
                   threading.Thread(target=stranger, args=("empty", b"")),
                   threading.Thread(target=garbage)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        rank1 = _start(1, server.address, secret)
        outs = [p.communicate(timeout=60)[0] for p in (rank0, rank1)]
        for t in threads:
            t.join(timeout=30)
        assert isinstance(results.get("wrong"), TransportError), results
        assert isinstance(results.get("empty"), TransportError), results
        # the garbage client got at most rank 0's public hello (magic + nonce), nothing else
        assert len(results["garbage"]) < 100, results["garbage"]
        for r, (p, out) in enumerate(zip((rank0, rank1), outs)):
            assert p.returncode == 0 and f"OK {r}" in out, out
        store.close()
