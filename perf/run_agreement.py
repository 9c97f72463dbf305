"""How often two runs of the same sweep agree on the fastest algorithm: the ceiling any cost
model's hit rate has on that machine (the "measured fastest" of one run is itself a pick).

    python3 perf/run_agreement.py --a 'A/onehost-np4-*.jsonl' --b 'B/onehost-np4-*.jsonl' \
        [--stat best] [--noise 0.03] [--near 0.10]

Both sides are collx-bench --json files of one cluster (perf/algo_sweep.py output; globs are
expanded here). Per (op, np, bytes) present in both: run A's fastest is scored against run B
exactly as perf/algo_table.py scores the model's pick — a hit when B measures it within
--noise of B's fastest, or within the spread of names that build the same schedule in B's row
(``--replicas``) — and the other way round; the report gives both directions, the share of
points where A's fastest is within --near of B's fastest, and the points where they disagree.
"""
from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "perf"))

from algo_table import build, load, parse_cluster  # noqa: E402


def times(data: dict, stat: str) -> dict:
    """{(op, np, bytes): {algo: us}} with repeated records reduced by ``stat``."""
    red = min if stat == "best" else statistics.median
    out = {}
    for (_, op, n), by_size in data.items():
        for nbytes, per in by_size.items():
            out[(op, n, nbytes)] = {al: red(r["us"] for r in recs) for al, recs in per.items()}
    return out


def replica_spread(op: str, n: int, nbytes: int, meas: dict, cluster: str) -> float:
    groups, servers, _ = parse_cluster(cluster, n)
    same: dict[int, list[str]] = {}
    for al in meas:
        try:
            s = build(op, n, nbytes, 4, al, groups, servers, 1 << 20)
        except (ValueError, KeyError):
            continue
        same.setdefault(hash((repr(s.steps), tuple(s.scratch_counts))), []).append(al)
    return max((max(meas[x] for x in g) / min(meas[x] for x in g) - 1
                for g in same.values() if len(g) > 1), default=0.0)


def score(pick_side: dict, judge_side: dict, noise: float, near: float, replicas: bool,
          cluster: str) -> tuple[int, int, int, list[str]]:
    hits = close = points = 0
    misses = []
    for key in sorted(set(pick_side) & set(judge_side)):
        op, n, nbytes = key
        a, b = pick_side[key], judge_side[key]
        common = set(a) & set(b)
        if not common:
            continue
        a = {k: v for k, v in a.items() if k in common}
        b = {k: v for k, v in b.items() if k in common}
        pick, best = min(a, key=a.get), min(b, key=b.get)
        tol = max(noise, replica_spread(op, n, nbytes, b, cluster)) if replicas else noise
        points += 1
        hit = b[pick] <= b[best] * (1 + tol)
        hits += hit
        close += b[pick] <= b[best] * (1 + near)
        if not hit:
            misses.append(f"- {op} np {n} {nbytes} B: fastest {pick} in one run, {best} in the "
                          f"other ({pick} +{(b[pick] / b[best] - 1) * 100:.0f}% there)")
    return hits, close, points, misses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", required=True, help="glob of run A's files")
    ap.add_argument("--b", required=True, help="glob of run B's files")
    ap.add_argument("--cluster", default="onehost")
    ap.add_argument("--stat", choices=("median", "best"), default="best")
    ap.add_argument("--noise", type=float, default=0.03)
    ap.add_argument("--near", type=float, default=0.10)
    ap.add_argument("--replicas", action="store_true")
    a = ap.parse_args(argv)
    ta = times(load(sorted(glob.glob(a.a)), a.cluster), a.stat)
    tb = times(load(sorted(glob.glob(a.b)), a.cluster), a.stat)
    if not ta or not tb:
        print("no usable records", file=sys.stderr)
        return 1
    for name, (p, j) in (("A's fastest judged by B", (ta, tb)),
                         ("B's fastest judged by A", (tb, ta))):
        hits, close, points, misses = score(p, j, a.noise, a.near, a.replicas, a.cluster)
        print(f"**{name}: hit at {hits} of {points} points ({100 * hits / points:.0f}%)**, "
              f"within {a.near * 100:.0f}% at {close} of {points} "
              f"({100 * close / points:.0f}%) (same rule as perf/algo_table.py"
              f"{' --replicas' if a.replicas else ''}, noise {a.noise * 100:.0f}%)")
        print()
        print("\n".join(misses))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
