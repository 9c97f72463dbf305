"""Measured time of every algorithm beside the cost model's prediction; hit rate of its pick.

    python3 perf/algo_table.py --links links.json --hosts onehost  perf/results/*/algos-np4.jsonl
    python3 perf/algo_table.py --links links.json --cores 2 a-np4.jsonl@onehost b.jsonl@2x2
    python3 perf/algo_table.py --links links.json --inter net star.jsonl@4+4servers

Inputs are ``collx-bench --json`` files (one JSON object per line; used fields: ``op``,
``np``, ``bytes``, ``us``, ``busbw_GBps``, ``algo`` (what actually ran), ``dtype``,
``transport``). Every file belongs to one cluster: ``FILE@CLUSTER``, else ``--hosts``:

    onehost        every rank on one host
    HxG            H hosts of G ranks, host-contiguous (rank r on host r // G); H x G = np
    HxG+Kservers   the same plus K dedicated summation servers, each on its own host
                   (schedules built with servers=K: ranks np .. np + K - 1)
    W+Kservers     W worker hosts of one rank each, plus K server hosts (= Wx1+Kservers)

For every (cluster, op, np, bytes) point and every algorithm measured there, the schedule is
built with ``collx.algos.registry.build_schedule`` (chunk_count from --chunk-bytes, the
runtime's COLLX_CHUNK_BYTES default; groups and servers from the cluster) and priced with
``collx.algos.costmodel.predict`` including contention (hosts, optional --cores per host).
Link classes come from the ``--links`` JSON (perf/calibrate_links.py): messages inside a host
use --intra (default: the record's transport, shm or tcp), across hosts --inter.
Several records of one (point, algorithm) (repeated runs) are reduced to their median, or
with ``--stat best`` to their minimum (the interleaved rounds of ``algo_sweep.py
--interleave``: interference on a shared machine only adds time, so each algorithm's least
disturbed round is the estimate; every record is itself a median over batches).

Output: paste-ready markdown, one table per (cluster, op, np) — measured time (busbw) and
the prediction per algorithm, the measured fastest, the model's pick (the first of equal
predictions, in record order, with the others named as a tie), hit/miss (hit: the pick or
an algorithm predicted exactly as fast is measured within --noise of the fastest) — then
the hit rate
over all points and the list of misses.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from collx.algos.costmodel import host_link_class, load_params, predict  # noqa: E402


# --- clusters ------------------------------------------------------------------------------

def parse_cluster(spec: str, n: int) -> tuple[list[list[int]], int, str]:
    """(groups of worker ranks per host, number of dedicated servers, label)."""
    s = spec.strip().lower()
    servers = 0
    if "+" in s:
        s, _, tail = s.partition("+")
        if not tail.endswith("servers") and not tail.endswith("server"):
            raise ValueError(f"cluster {spec!r}: want ...+Kservers")
        servers = int(tail.rstrip("s")[:-len("server")])
        if "x" not in s:
            s = f"{s}x1"
    if s in ("onehost", "one", "local", "1"):
        groups = [list(range(n))]
    else:
        h, x, g = s.partition("x")
        if not x:
            raise ValueError(f"cluster {spec!r}: want onehost, HxG or HxG+Kservers")
        h, g = int(h), int(g)
        if h * g != n:
            raise ValueError(f"cluster {spec!r} has {h * g} worker ranks, the records np {n}")
        groups = [list(range(i * g, (i + 1) * g)) for i in range(h)]
    return groups, servers, spec


def host_map(groups: list[list[int]], servers: int) -> list[int]:
    n = sum(len(g) for g in groups)
    hosts = [0] * n
    for h, g in enumerate(groups):
        for r in g:
            hosts[r] = h
    return hosts + [len(groups) + k for k in range(servers)]


# --- schedules and predictions -------------------------------------------------------------

_SPLIT = ("allgather", "reducescatter", "alltoall")


def build(op: str, n: int, nbytes: int, itemsize: int, algo: str, groups, servers: int,
          chunk_bytes: int):
    from collx.algos.registry import build_schedule
    from collx.algos.common import even_split
    count = max(1, nbytes // itemsize)
    kw: dict = dict(algo=algo, chunk_count=max(1, chunk_bytes // itemsize),
                    groups=groups if len(groups) > 1 else None, servers=servers)
    if op in _SPLIT:
        count = max(n, count - count % n)
        if op == "alltoall":
            kw["send_counts"] = [even_split(count, n) for _ in range(n)]
        else:
            kw["counts"] = even_split(count, n)
    else:
        kw["count"] = count
    return build_schedule(op, n, **kw)


def fmt_t(us: float) -> str:
    if us >= 1e4:
        return f"{us / 1e3:.1f} ms"
    if us >= 100:
        return f"{us:.0f} µs"
    return f"{us:.1f} µs"


def fmt_b(n: int) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} B"


# --- main ----------------------------------------------------------------------------------

def load(paths: list[str], default_cluster: str):
    """{(cluster, op, np): {bytes: {algo: [records]}}}, in first-seen order."""
    data: dict = {}
    for spec in paths:
        path, _, cluster = spec.partition("@")
        cluster = cluster or default_cluster
        with open(path) as f:
            for ln, line in enumerate(f, 1):
                line = line.strip()
                if not line.startswith("{"):
                    continue
                rec = json.loads(line)
                if rec.get("error") or "us" not in rec or "algo" not in rec:
                    continue
                key = (cluster, rec["op"], int(rec["np"]))
                by_size = data.setdefault(key, {})
                by_size.setdefault(int(rec["bytes"]), {}).setdefault(rec["algo"], []).append(rec)
    return data


def preference(op: str) -> list[str]:
    """collx.topo.select's order for near-ties: the registry default, ring, binomial."""
    from collx.algos.registry import DEFAULT
    return [DEFAULT[op], "ring", "binomial"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("files", nargs="+", help="collx-bench --json files, FILE or FILE@CLUSTER")
    ap.add_argument("--links", required=True, help="link-params JSON (perf/calibrate_links.py)")
    ap.add_argument("--hosts", "--cluster", dest="hosts", default="onehost",
                    help="cluster of files without @CLUSTER (default onehost)")
    ap.add_argument("--intra", default="auto",
                    help="link class inside a host (default: the record's transport, "
                         "shm or tcp)")
    ap.add_argument("--inter", default="auto",
                    help="link class across hosts (default: net if given, else inter, else tcp)")
    ap.add_argument("--cores", type=int, default=None,
                    help="CPUs per host for the cost model's CPU term (default: not modelled)")
    ap.add_argument("--chunk-bytes", type=int, default=1 << 20,
                    help="pipelining chunk (COLLX_CHUNK_BYTES of the measured run; 1 MiB)")
    ap.add_argument("--noise", type=float, default=0.03,
                    help="measured times within this fraction of the fastest count as "
                         "equally fast (default 0.03)")
    ap.add_argument("--replicas", action="store_true",
                    help="widen the noise of a row to the spread between names that build "
                         "the same schedule in that row (the run's measured resolution)")
    ap.add_argument("--tie", type=float, default=0.0,
                    help="score the pick as collx.topo.select makes it: candidates predicted "
                         "within this fraction of the fastest are tied and the tie goes to "
                         "the registry default, then ring, then binomial (select.TIE = 0.02); "
                         "default 0: the strict minimum, exact ties all count")
    ap.add_argument("--stat", choices=("median", "best"), default="median",
                    help="reduce repeated records of a (point, algorithm): median (default) "
                         "or best (minimum; for interleaved rounds)")
    ap.add_argument("--near", type=float, default=0.10,
                    help="also report how often the pick's measured time is within this "
                         "fraction of the fastest (default 0.10)")
    a = ap.parse_args(argv)
    params = load_params(a.links)
    inter = a.inter
    if inter == "auto":
        inter = next((c for c in ("net", "inter", "tcp") if c in params), "inter")
    data = load(a.files, a.hosts)
    if not data:
        print("no usable records", file=sys.stderr)
        return 1
    points = hits = near = strict = 0
    noise_max = 0.0
    misses: list[str] = []
    out: list[str] = []
    for (cluster, op, n), by_size in data.items():
        groups, servers, label = parse_cluster(cluster, n)
        hosts = host_map(groups, servers)
        algos = sorted({al for per in by_size.values() for al in per})
        why: dict[str, str] = {}
        transports = sorted({r.get("transport", "?") for per in by_size.values()
                             for recs in per.values() for r in recs})
        intra = a.intra
        if intra == "auto":
            intra = "tcp" if transports == ["tcp"] and "tcp" in params else "shm"
        cls = host_link_class(hosts, intra, inter)
        out.append(f"### {op}, np {n}, cluster `{label}` "
                   f"(transport {'/'.join(transports)}; links {intra}"
                   + (f" / {inter}" if len(set(hosts)) > 1 else "")
                   + (f", {a.cores} cores per host" if a.cores else "") + ")")
        out.append("")
        out.append(("measured best of the rounds" if a.stat == "best" else "measured median")
                   + " (busbw GB/s) · *predicted*; **bold** = measured fastest")
        out.append("")
        out.append("| bytes | " + " | ".join(algos) + " | fastest | model's pick | |")
        out.append("|---:|" + "---|" * len(algos) + "---|---|---|")
        for nbytes in sorted(by_size):
            per = by_size[nbytes]
            reduce_ = min if a.stat == "best" else statistics.median
            meas = {al: reduce_(r["us"] for r in recs) for al, recs in per.items()}
            bw = {al: (max if a.stat == "best" else statistics.median)(
                      r.get("busbw_GBps", 0.0) for r in recs) for al, recs in per.items()}
            pred: dict[str, float] = {}
            same: dict[int, list[str]] = {}
            for al in per:
                rec = per[al][0]
                isz = np.dtype(rec.get("dtype", "float32")).itemsize
                try:
                    s = build(op, n, nbytes, isz, al, groups, servers, a.chunk_bytes)
                    pred[al] = predict(s, isz, cls, params, hosts=hosts,
                                       cores=a.cores) * 1e6
                    same.setdefault(hash((repr(s.steps), tuple(s.scratch_counts))),
                                    []).append(al)
                except (ValueError, KeyError) as exc:
                    why[al] = str(exc).splitlines()[0][:80]
            fastest = min(meas, key=meas.get)
            # the run's own resolution: names that build the very same schedule (e.g. hier
            # on one host = ring, tree = binomial) measured apart by this much
            spread = max((max(meas[x] for x in g) / min(meas[x] for x in g) - 1
                          for g in same.values() if len(g) > 1), default=0.0)
            noise = max(a.noise, spread) if a.replicas else a.noise
            noise_max = max(noise_max, noise)
            pick = min(pred, key=pred.get) if pred else None
            ties = [al for al in pred if al != pick and pred[al] <= pred[pick] * (1 + 1e-9)] \
                if pick else []
            if pick is not None and a.tie > 0:
                # what selection runs: near-ties resolved by the preference order
                near_tied = [al for al in pred if pred[al] <= pred[pick] * (1 + a.tie)]
                pick = next((al for al in preference(op) if al in near_tied), pick)
                ties = []
            cells = []
            for al in algos:
                if al not in meas:
                    cells.append("–")
                    continue
                m = fmt_t(meas[al])
                if nbytes >= (64 << 10) and bw[al]:
                    m += f" ({bw[al]:.2f})"
                if al == fastest:
                    m = f"**{m}**"
                p = f"*{fmt_t(pred[al])}*" if al in pred else "*n/a*"
                cells.append(f"{m} · {p}")
            points += 1
            # measured within the noise of one run: not distinguishable from the fastest
            equal = {al for al in meas if meas[al] <= meas[fastest] * (1 + noise)}
            strict += pick == fastest and not ties
            hit = pick is not None and bool(equal & {pick, *ties})
            hits += hit
            if pick is not None and meas[pick] <= meas[fastest] * (1 + a.near):
                near += 1
            mark = ("hit" if hit else "miss") + (f" (±{noise * 100:.0f}%)" if noise > a.noise
                                                  else "")
            out.append(f"| {fmt_b(nbytes)} | " + " | ".join(cells)
                       + f" | {fastest} | {pick or 'n/a'}"
                       + (f" (tie: {', '.join(ties)})" if ties else "") + f" | {mark} |")
            if not hit:
                if pick is None:
                    detail = "no algorithm could be predicted"
                elif ties:
                    detail = (f"model ties {', '.join([pick, *ties])} (predicted "
                              f"{fmt_t(pred[pick])}), measured fastest {fastest} "
                              f"({fmt_t(meas[fastest])})")
                else:
                    detail = (f"model picks {pick} (predicted {fmt_t(pred[pick])}, measured "
                              f"{fmt_t(meas[pick])}, +{(meas[pick] / meas[fastest] - 1) * 100:.0f}%"
                              f"), measured fastest {fastest} ({fmt_t(meas[fastest])}, "
                              f"predicted {fmt_t(pred[fastest]) if fastest in pred else 'n/a'})")
                misses.append(f"- {op} np {n} `{label}` {fmt_b(nbytes)}: {detail}")
        out.append("")
        for al, w in sorted(why.items()):
            out.append(f"(no prediction for {al}: {w})")
            out.append("")
    rate = hits / points if points else 0.0
    out.append(f"**Model's first choice is the measured fastest at {hits} of {points} points "
               f"({rate * 100:.0f}%)** (hit: the model's pick, or an algorithm it predicts "
               f"exactly as fast, measured within {a.noise * 100:.0f}% of the fastest"
               + (f" — or within the row's replica spread (±N%: the same schedule under two "
                  f"names measured that far apart; up to {noise_max * 100:.0f}%)"
                  if a.replicas else "")
               + f" — closer than that one run does not separate; strictly unique and fastest: "
               f"{strict} of {points}); the pick's measured time within "
               f"{a.near * 100:.0f}% of the fastest at {near} of {points} "
               f"({near / points * 100:.0f}%).")
    if misses:
        out.append("")
        out.append("Misses:")
        out.append("")
        out.extend(misses)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
