"""Every algorithm of every op, forced one at a time, on one cluster shape: the raw data of
the per-algorithm tables in perf/RESULTS.md (perf/algo_table.py adds the cost model).

    python3 perf/algo_sweep.py --np 4 [--ops allreduce,broadcast] [--sizes 8,1K,...]
    python3 perf/algo_sweep.py --netns 2x2 --rate 1gbit            # 2 hosts x 2 ranks
    python3 perf/algo_sweep.py --netns 4x1+4 --rate 1gbit --ops allreduce --algos ring,star
                                                   # 4 worker hosts + 4 server hosts

One launch per (op, algorithm): ``collxrun -np N`` on this host, or
``python -m collx.runner.netns`` on network-namespace hosts. Each launch appends
``collx-bench --json`` lines to OUT/<cluster>-<op>-<algo>.jsonl (rank 0 writes them).

``--interleave R``: one launch per op instead, ``collx-bench --tune --sweep-rounds R``: R
rounds, in each every size timed with every algorithm back to back (order rotated per
round), lines to OUT/<cluster>-<op>-interleaved.jsonl (each with ``sweep_round``; the
launch's tune table beside it). Use it on a shared or oversubscribed machine, where the
one-algorithm-after-another sweep lets minutes of drift decide the ranking; perf/algo_table.py
``--stat best`` then takes each algorithm's best round.
Algorithms come from collx.algos.registry, minus the ones that cannot run the shape (pair
needs 2 ranks, star with servers only where the cluster has server hosts). Everything in
one invocation is one "run" in the sense of RESULTS.md: compare ratios within it.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from collx.algos.registry import ALGORITHMS  # noqa: E402

BENCH_OPS = ("allreduce", "broadcast", "allgather", "reducescatter")
SKIP = {"alltoall"}


def parse_netns(spec: str) -> tuple[int, int, int]:
    """'HxP' or 'HxP+S' -> (worker hosts, ranks per host, server hosts)."""
    main, _, servers = spec.partition("+")
    h, _, p = main.partition("x")
    return int(h), int(p or 1), int(servers or 0)


def algos_for(op: str, n: int, servers: int, wanted: list[str] | None) -> list[str]:
    names = sorted(ALGORITHMS[op])
    if wanted:
        names = [a for a in wanted if a in ALGORITHMS[op]]
    out = []
    for a in names:
        if a == "pair" and n != 2:
            continue
        if a == "pairwise_direct":
            continue
        out.append(a)
    return out


def launch(args: argparse.Namespace, op: str, algo: str | list[str], out: Path) -> int:
    """One job: ``algo`` forced, or (a list) the interleaved tune sweep of those names."""
    if isinstance(algo, list):
        how = ["--tune", str(out.with_suffix(".tune.json")), "--sweep-rounds",
               str(args.interleave), "--candidates", ",".join(algo)]
    else:
        how = ["--algo", f"{op}:{algo}"]
    bench = [sys.executable, "-m", "collx.bench", op, *how, "--sizes",
             args.sizes, "--json", "--out", str(out), "--budget", str(args.budget),
             "--no-inplace", "-w", str(args.warmup)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if args.netns:
        hosts, per_host, servers = parse_netns(args.netns)
        cmd = [sys.executable, "-m", "collx.runner.netns", "--hosts", str(hosts), "--per-host",
               str(per_host), "--keep"]
        if args.rate:
            cmd += ["--rate", args.rate]
        if servers:     # every algorithm on the same cluster; only star uses the servers
            cmd += ["--server-hosts", str(servers)]
        cmd += ["--", *bench]
    else:
        cmd = [sys.executable, "-m", "collx.runner", "-np", str(args.np), "--no-prefix", *bench]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=args.timeout)
    if proc.returncode:
        sys.stderr.write(f"  {op}/{algo}: exit {proc.returncode}\n{proc.stderr[-2000:]}\n")
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--np", type=int, default=4, help="ranks on this host (without --netns)")
    p.add_argument("--netns", default=None, help="HxP[+S]: H hosts x P ranks (+S server hosts)")
    p.add_argument("--rate", default=None, help="netns link rate, e.g. 1gbit")
    p.add_argument("--ops", default=",".join(BENCH_OPS))
    p.add_argument("--algos", default=None, help="comma list (default: every registered one)")
    p.add_argument("--sizes", default="8,1K,64K,1M,16M,256M")
    p.add_argument("--budget", type=float, default=1.0, help="collx-bench --budget per size")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0, help="per launch, seconds")
    p.add_argument("--append", action="store_true",
                   help="add to existing result files (another round: perf/algo_table.py takes "
                        "the median of all records of a point)")
    p.add_argument("--interleave", type=int, default=0, metavar="R",
                   help="one launch per op: R interleaved rounds of all its algorithms "
                        "(collx-bench --tune --sweep-rounds R)")
    p.add_argument("--out", default=None, help="directory (default perf/results/<date>/algos)")
    args = p.parse_args(argv)
    if args.netns:
        hosts, per_host, servers = parse_netns(args.netns)
        n, tag = hosts * per_host, f"netns{args.netns}{'-' + args.rate if args.rate else ''}"
    else:
        n, servers, tag = args.np, 0, f"onehost-np{args.np}"
    out_dir = Path(args.out or REPO / "perf" / "results" / time.strftime("%Y-%m-%d") / "algos")
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = args.algos.split(",") if args.algos else None
    failures = 0
    for op in args.ops.split(","):
        names = algos_for(op, n, servers, wanted)
        # one job of every name interleaved, or one job per name
        jobs = [("interleaved", names)] if args.interleave else [(a, a) for a in names]
        for label, what in jobs:
            out = out_dir / f"{tag}-{op}-{label}.jsonl"
            if not args.append:
                out.unlink(missing_ok=True)
            t0 = time.monotonic()
            rc = launch(args, op, what, out)
            failures += rc != 0
            shown = f"{','.join(names)} x{args.interleave}" if args.interleave else f"{label:12s}"
            print(f"{tag} {op:13s} {shown} rc={rc} {time.monotonic() - t0:6.1f} s -> {out}",
                  flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
