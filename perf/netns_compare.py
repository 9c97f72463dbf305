"""Two hosts as network namespaces: collx allreduce over TCP vs a one-way raw socket stream.

    python3 perf/netns_compare.py [--sizes 1M,16M,64M] [--rate 10gbit] [--out FILE]

Brings up 2 hosts with ../shared/tools/netns-cluster.sh (optionally rate-shaped), measures
a one-way raw TCP stream host2 -> host1 (python sendall/recv_into of 64 MiB blocks: kernel
speed, no per-byte Python), then runs collx-bench allreduce with one rank per host (store in
host 1) and prints both as JSON lines plus the ratio busbw / stream. On 2 cores the bound
is about half: an allreduce moves twice the bytes of a one-way stream and both hosts' kernel
work shares the same two cores.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(os.environ.get("COLLX_NETNS_SCRIPT", REPO.parent / "shared" / "tools" / "netns-cluster.sh"))

STREAM = r"""
import socket, sys, time
role, host, nbytes, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
buf = bytearray(nbytes)
if role == "recv":
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, 29611)); ls.listen(1); print("ready", flush=True)
    c, _ = ls.accept(); view = memoryview(buf); total = 0
    t0 = None
    while True:
        n = c.recv_into(view)
        if n == 0: break
        if t0 is None: t0 = time.perf_counter()
        total += n
    dt = time.perf_counter() - t0
    print(f"{total} {dt}", flush=True)
else:
    s = socket.create_connection((host, 29611))
    for _ in range(reps): s.sendall(buf)
    s.close()
"""


def sh(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], text=True, capture_output=True, check=True, **kw)


def in_host(i: int, argv: list[str], env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SCRIPT), "exec", str(i), *argv], text=True, env=env, **kw)


def raw_stream(addr1: str, nbytes: int = 64 << 20, reps: int = 16) -> float:
    rx = in_host(1, [sys.executable, "-c", STREAM, "recv", addr1, str(nbytes), "0"], stdout=subprocess.PIPE)
    assert rx.stdout.readline().strip() == "ready"
    tx = in_host(2, [sys.executable, "-c", STREAM, "send", addr1, str(nbytes), str(reps)])
    tx.wait(timeout=120)
    total, dt = rx.stdout.readline().split()
    rx.wait(timeout=30)
    return int(total) / float(dt) / 1e9


def collx_allreduce(addr1: str, sizes: str) -> list[dict]:
    env = dict(os.environ, COLLX_SECRET=secrets.token_hex(16), PYTHONPATH=str(REPO))
    store = in_host(1, [sys.executable, "-m", "collx.rendezvous.serve", "--host", addr1,
                        "--lifetime", "600"], env=env, stdout=subprocess.PIPE)
    try:
        addr = store.stdout.readline().strip()
        ranks = [in_host(r + 1, [sys.executable, "-m", "collx.bench", "allreduce", "--sizes", sizes,
                                 "--json", "--no-inplace", "--peer", "collx-tcp-netns"],
                         env=dict(env, COLLX_STORE_ADDR=addr, COLLX_RANK=str(r), COLLX_SIZE="2"),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=str(REPO))
                 for r in range(2)]
        outs = [p.communicate(timeout=900)[0] for p in ranks]
        return [json.loads(line) for line in outs[0].splitlines() if line.startswith("{")]
    finally:
        store.terminate()
        store.wait(timeout=10)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1M,16M,64M")
    p.add_argument("--rate", default="0", help="tc rate per link (e.g. 10gbit); 0 = unshaped")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    sh("up", "2", a.rate)
    try:
        addr1 = sh("addr", "1").stdout.strip()
        stream = raw_stream(addr1)
        recs = [{"peer": "raw-stream-netns", "op": "stream", "np": 2, "bytes": 64 << 20,
                 "busbw_GBps": round(stream, 4), "rate": a.rate}]
        for rec in collx_allreduce(addr1, a.sizes):
            rec["ratio_vs_stream"] = round(rec["busbw_GBps"] / stream, 3)
            rec["rate"] = a.rate
            recs.append(rec)
        for rec in recs:
            line = json.dumps(rec)
            print(line)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(line + "\n")
    finally:
        sh("down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
