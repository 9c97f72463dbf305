"""Calibrate the cost model's link classes with collx itself: alpha, beta, gamma per class.

    python3 perf/calibrate_links.py                            # shm and tcp on this host
    python3 perf/calibrate_links.py --classes shm -o perf/out/links.json
    python3 perf/calibrate_links.py --inter net:alpha=60e-6,beta=125e6   # + a given class

For every measured class (``shm``: the default transport between two ranks of one host;
``tcp``: the same with COLLX_TRANSPORT=tcp, i.e. loopback TCP) it runs

    collxrun -np 2 collx-bench allreduce --algo allreduce:ring --sizes 8,64K,1M,16M --json

(short batches, ``--rounds`` times; per size the lowest median counts, since the machine is
shared) and picks alpha and beta so that the cost model's own prediction of that schedule
(ring_allreduce(2, N, 1 MiB chunks), the runtime's chunking) matches: alpha = t(8 B) / the
schedule's rounds (whole-call latency per message round, Python entry included), then
beta from the sizes >= 1 MiB (bisection: the beta at which the model, contention included,
gives the measured time; geometric mean over sizes), with gamma fixed beforehand. The JSON
keeps the measured and the refitted model times per size (``_points_us``, ``_model_us``).

Rendezvous (``--rdv``, shm only): the shm transport copies messages up to
COLLX_SHM_EAGER_BYTES (16 KiB) through its queue and pulls larger ones with
process_vm_readv after a handshake. Its extra latency ``rdv_s`` is measured, not fitted:
the same ring at two sizes whose per-step messages are E and E + 4 bytes (E the eager
size: N = p E and p (E + 4)), so the bytes are equal to 0.03% and only the protocol differs;
rdv = (t(N') - t(N)) / the ring's 2 (p - 1) message rounds (best of the rounds for each).
beta is then fitted with rdv in the model.

gamma (seconds per reduced byte) comes from collx._C's reduce kernel, float32 sum, on 256 KiB
arrays (the engine reduces what it pulls block by block through a cache-resident bounce
buffer; see perf/bench_reduce.py) — the best of a few batches.

A shaped inter-host class cannot be measured on one host (inside network namespaces it is
measured separately, e.g. perf/netns_compare.py); ``--inter NAME:alpha=..,beta=..[,gamma=..]
[,shared=..]`` adds it with the given values (gamma defaults to the measured one).

Output: JSON ``{class: {"alpha_s", "beta_Bps", "gamma_s_per_B"}, "_meta": {...}}``, which
``collx.algos.costmodel.load_params`` reads. Runs in well under a minute.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SIZES = (8, 64 << 10, 1 << 20, 16 << 20)


def measure_gamma(nbytes: int = 256 << 10) -> float:
    """Seconds per byte of ``dst = a + b`` (float32, collx's best kernel), best batch."""
    import collx._C as C
    n = nbytes // 4
    a = np.random.default_rng(0).random(n, dtype=np.float32)
    b = a.copy()
    dst = np.empty_like(a)

    def call():
        C.reduce_kernel(C.SUM, C.FLOAT32, -1, dst, a, b)

    call()
    t0 = time.perf_counter()
    call()
    once = max(time.perf_counter() - t0, 1e-7)
    k = max(1, int(0.01 / once))
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(k):
            call()
        best = min(best, (time.perf_counter() - t0) / k)
    return best / nbytes


def bench_ring(transport: str | None, sizes, timeout: float, ranks: int = 2) -> list[dict]:
    """JSON records of the ring allreduce at np ``ranks`` (rank 0's stdout)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if transport:
        env["COLLX_TRANSPORT"] = transport
    else:
        env.pop("COLLX_TRANSPORT", None)
    cmd = [sys.executable, "-m", "collx.runner", "-np", str(ranks), "--no-prefix",
           "--timeout", str(int(timeout)),
           sys.executable, "-m", "collx.bench", "allreduce", "--algo", "allreduce:ring",
           "--sizes", ",".join(str(s) for s in sizes), "--json", "--no-inplace",
           "--batches", "5", "--budget", "0.5", "--pct-calls", "10", "-w", "3"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout + 10)
    recs = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            recs.append(json.loads(line))
    if p.returncode != 0 or not recs:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {p.returncode}):\n{p.stderr[-2000:]}")
    bad = [r for r in recs if r.get("algo") != "ring"]
    if bad:
        raise RuntimeError(f"expected the ring algorithm, got {sorted({r.get('algo') for r in bad})}")
    return recs


def _model(nbytes: int, alpha: float, beta: float, gamma: float, chunk_bytes: int,
           ranks: int = 2, rdv: float = 0.0) -> float:
    """The cost model's time (contention included: all ranks on one host) of the ``ranks``-rank
    ring allreduce of ``nbytes`` float32, chunked like the runtime."""
    from collx.algos.costmodel import LinkParams, predict
    from collx.algos.ring import ring_allreduce
    s = ring_allreduce(ranks, max(1, nbytes // 4), max(1, chunk_bytes // 4))
    return predict(s, 4, lambda a, b: "x", {"x": LinkParams(alpha, beta, gamma, rdv_s=rdv)},
                   hosts=[0] * ranks)


def _solve_beta(n: int, t: float, alpha: float, gamma: float, chunk_bytes: int,
                ranks: int = 2, rdv: float = 0.0) -> float:
    """beta with model(n; alpha, beta, gamma) = t (the model falls as beta grows), by
    bisection on log(beta); gamma is dropped when it alone explains t."""
    if _model(n, alpha, 1e18, gamma, chunk_bytes, ranks, rdv) >= t:
        gamma = 0.0
    lo, hi = 1e3, 1e15
    for _ in range(100):
        mid = (lo * hi) ** 0.5
        if _model(n, alpha, mid, gamma, chunk_bytes, ranks, rdv) > t:
            lo = mid
        else:
            hi = mid
    return (lo * hi) ** 0.5


def rdv_sizes(ranks: int, eager: int = 16384) -> tuple[int, int]:
    """Ring allreduce sizes whose per-step messages are ``eager`` and ``eager + 4`` bytes."""
    return ranks * eager, ranks * (eager + 4)


def measure_rdv(recs: list[dict], ranks: int, eager: int = 16384) -> float:
    """Extra latency of a message just above the eager size (module docstring), >= 0."""
    lo, hi = rdv_sizes(ranks, eager)
    t = {int(r["bytes"]): float(r["us"]) * 1e-6 for r in recs}
    return max(0.0, (t[hi] - t[lo]) / (2 * (ranks - 1)))


def fit(recs: list[dict], gamma: float, chunk_bytes: int = 1 << 20, ranks: int = 2,
        rdv: float = 0.0, skip: tuple[int, ...] = ()) -> dict:
    """alpha and beta such that the cost model reproduces the measured 2-rank ring:
    alpha = t(smallest) / the model's time with alpha 1 and no byte cost (its rounds);
    beta = the geometric mean over sizes >= 1 MiB of the beta that makes the model's time
    (with the rendezvous latency ``rdv`` for messages above 16 KiB) equal the measured one.
    ``skip``: sizes measured for other purposes (the rendezvous pair)."""
    pts = sorted((int(r["bytes"]), float(r["us"]) * 1e-6) for r in recs
                 if int(r["bytes"]) not in skip)
    n0, t0 = pts[0]
    alpha = t0 / max(_model(n0, 1.0, 0.0, 0.0, chunk_bytes, ranks), 1e-30)
    big = [(n, t) for n, t in pts if n >= (1 << 20)] or pts[-1:]
    betas = [_solve_beta(n, t, alpha, gamma, chunk_bytes, ranks, rdv) for n, t in big]
    beta = float(np.exp(np.mean(np.log(betas))))
    out = {"alpha_s": alpha, "beta_Bps": beta, "gamma_s_per_B": gamma,
           "_points_us": {str(n): round(t * 1e6, 3) for n, t in pts},
           "_model_us": {str(n): round(_model(n, alpha, beta, gamma, chunk_bytes, ranks, rdv)
                                       * 1e6, 3) for n, _ in pts}}
    if rdv > 0:
        out["rdv_s"] = rdv
    return out


def parse_given(spec: str, gamma: float) -> tuple[str, dict]:
    """'NAME:alpha=60e-6,beta=125e6[,gamma=..][,shared=..]' -> (NAME, params)."""
    name, _, kv = spec.partition(":")
    if not name or not kv:
        raise ValueError(f"--inter {spec!r}: want NAME:alpha=..,beta=..")
    vals = {}
    for item in kv.split(","):
        k, _, v = item.partition("=")
        vals[k.strip()] = float(v)
    if "alpha" not in vals or "beta" not in vals:
        raise ValueError(f"--inter {spec!r}: alpha= and beta= are required")
    out = {"alpha_s": vals["alpha"], "beta_Bps": vals["beta"],
           "gamma_s_per_B": vals.get("gamma", gamma), "given": True}
    if "shared" in vals:
        out["shared_Bps"] = vals["shared"]
    unknown = set(vals) - {"alpha", "beta", "gamma", "shared"}
    if unknown:
        raise ValueError(f"--inter {spec!r}: unknown keys {sorted(unknown)}")
    return name, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--classes", default="shm,tcp",
                    help="measured classes: shm (default transport), tcp (COLLX_TRANSPORT=tcp)")
    ap.add_argument("--inter", action="append", default=[], metavar="NAME:alpha=..,beta=..",
                    help="a given (not measured) class, e.g. net:alpha=60e-6,beta=125e6")
    ap.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                    help="bytes of the ring allreduce runs (default 8,64K,1M,16M)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="collxrun runs per class; per size the lowest median counts")
    ap.add_argument("--timeout", type=float, default=40.0, help="per collxrun, seconds")
    ap.add_argument("--np", type=int, default=2, dest="ranks",
                    help="ranks of the calibration ring (default 2); with more ranks than "
                         "cores alpha and beta include the cost of sharing them")
    ap.add_argument("--rdv", action="store_true",
                    help="shm: also measure the rendezvous latency of messages above 16 KiB")
    ap.add_argument("-o", "--out", default=None, help="write the JSON here (default stdout)")
    a = ap.parse_args(argv)
    from collx.bench.measure import parse_sizes
    sizes = parse_sizes(a.sizes)
    t_start = time.time()
    gamma = measure_gamma()
    result: dict = {}
    for cls in [c.strip() for c in a.classes.split(",") if c.strip()]:
        if cls not in ("shm", "tcp"):
            raise SystemExit(f"unknown class {cls!r}: measurable are shm, tcp (use --inter "
                             "for given values)")
        best: dict[int, dict] = {}
        extra = rdv_sizes(a.ranks) if a.rdv and cls == "shm" else ()
        for _ in range(a.rounds):       # the machine is shared: per size, the best round
            for r in bench_ring("tcp" if cls == "tcp" else None, list(sizes) + list(extra),
                                a.timeout, a.ranks):
                if r["bytes"] not in best or r["us"] < best[r["bytes"]]["us"]:
                    best[r["bytes"]] = r
        recs = list(best.values())
        if cls == "shm" and recs[0].get("transport") not in ("shm", None):
            print(f"# note: the default transport here is {recs[0].get('transport')}",
                  file=sys.stderr)
        rdv = measure_rdv(recs, a.ranks) if extra else 0.0
        result[cls] = fit(recs, gamma, ranks=a.ranks, rdv=rdv, skip=extra)
        if extra:
            lo, hi = extra
            result[cls]["_rdv_from"] = (f"ring np {a.ranks} at {lo} B and {hi} B (per-step "
                                        f"messages 16384 and 16388 B): "
                                        f"{best[lo]['us']:.3f} and {best[hi]['us']:.3f} us")
    for spec in a.inter:
        name, params = parse_given(spec, gamma)
        result[name] = params
    result["_meta"] = {"host": socket.gethostname(), "cores": os.cpu_count(),
                       "load1": round(os.getloadavg()[0], 2),
                       "gamma_from": "collx._C.reduce_kernel float32 sum, 256 KiB, best batch",
                       "alpha_beta_from": f"collx-bench ring allreduce np {a.ranks}, best of "
                                          f"{a.rounds} runs, t = alpha + N/beta + gamma N",
                       "seconds": round(time.time() - t_start, 1)}
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    for cls, p in result.items():
        if not cls.startswith("_"):
            print(f"# {cls:6} alpha {p['alpha_s'] * 1e6:8.2f} us  beta {p['beta_Bps'] / 1e9:7.3f} "
                  f"GB/s  gamma {p['gamma_s_per_B'] * 1e12:7.1f} ps/B"
                  f"  rdv {p.get('rdv_s', 0.0) * 1e6:.2f} us"
                  + ("  (given)" if p.get("given") else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
