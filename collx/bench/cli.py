"""``collx-bench`` / ``python -m collx.bench``: collx's collective microbenchmark.

Run it under collxrun (every rank runs it, rank 0 prints)::

    collxrun -np 2 collx-bench allreduce                      # nccl-tests-style table
    collxrun -np 2 collx-bench all -b 8 -e 16M -f 4 -o sum -d float
    collxrun -np 2 collx-bench allreduce,broadcast --sizes 8,1M,16M -n 50 -w 5
    collxrun -np 2 --no-prefix collx-bench all --json --out collx-shm.jsonl
    COLLX_TRANSPORT=tcp collxrun -np 2 --no-prefix collx-bench allreduce --json
    collxrun -np 2 collx-bench allreduce --sizes 256M --memory -n 3 -w 1
    collxrun -np 3 collx-bench allreduce --algo ring          # force an algorithm
    collxrun -np 4 collx-bench all --algo allreduce:ring,broadcast:binomial

Timing is bench_common.measure of the peers (see collx/bench/measure.py) unless -n fixes
the iteration count; --json lines follow bench_common.record's contract, so that
``/work/shared/peers/compare.py`` puts collx beside Open MPI, MPICH and Gloo.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence, TextIO

import numpy as np

from . import measure as m
from .cases import DTYPES, INPLACE_OPS, REDOPS, REDUCING, make_case
from .report import Row, Timing, emit, footer, format_row, header, table_header


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="collx-bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ops", nargs="?", default="all",
                   help="comma list of %s, or 'all' (default)" % ",".join(m.OPS))
    g = p.add_argument_group("sizes (default: the peers' grid, 8 B then 16 B..256 MiB by x4)")
    g.add_argument("-b", "--minbytes", default=None, help="smallest size (e.g. 8, 1K, 1M)")
    g.add_argument("-e", "--maxbytes", default=None, help="largest size (default 256M)")
    g.add_argument("-f", "--stepfactor", type=float, default=None,
                   help="multiplicative step (default 4)")
    g.add_argument("--sizes", default=None,
                   help="'8,1M,16M' or 'MIN:MAX' (x4 steps); overrides -b/-e/-f")
    t = p.add_argument_group("timing")
    t.add_argument("-n", "--iters", type=int, default=None,
                   help="fixed timed iterations (default: bench_common.measure's batches)")
    t.add_argument("-w", "--warmup_iters", type=int, default=5,
                   help="warm-up calls (measure: at most this many, capped at ~0.5 s)")
    t.add_argument("--batches", type=int, default=10, help="batches per size (measure)")
    t.add_argument("--budget", type=float, default=3.0, help="approx. seconds per size")
    t.add_argument("--pct-calls", type=int, default=None,
                   help="calls timed one by one for p50/p99 (default: -n, else ~budget/3)")
    t.add_argument("--no-inplace", action="store_true",
                   help="skip the in-place variant of allreduce and broadcast")
    p.add_argument("--tune", nargs="?", const="", default=None, metavar="FILE",
                   help="time every algorithm of every op and size and write the tune table "
                        "selection prefers (FILE, else COLLX_TUNE_FILE, else collx-tune.json)")
    p.add_argument("--tune-check", action="store_true",
                   help="with --tune: then time auto selection (using the new table) and "
                        "report auto / fastest forced per op and size")
    p.add_argument("--check-only", action="store_true",
                   help="with --tune FILE: do not sweep; check the table already in FILE")
    p.add_argument("--check-rounds", type=int, default=1, metavar="R",
                   help="with --tune-check: time auto and the fastest forced algorithm R "
                        "times each, interleaved (auto first in even rounds, second in odd "
                        "ones), and compare the best round of each (default 1)")
    p.add_argument("--sweep-rounds", type=int, default=1, metavar="R",
                   help="with --tune: R interleaved rounds, each timing every size with every "
                        "algorithm back to back (order rotated per round); the table keeps "
                        "each algorithm's best round (default 1: one algorithm after another)")
    p.add_argument("--candidates", default=None, metavar="a,b,...",
                   help="with --tune: sweep only these algorithm names")
    p.add_argument("--algo", default=None, metavar="NAME|op:name,...",
                   help="force algorithms for this run (sets COLLX_ALGO): one name for every "
                        "op that has it, or op:name pairs; the 'algo' column shows what ran")
    d = p.add_argument_group("data")
    d.add_argument("-c", "--check", type=int, choices=(0, 1), default=1,
                   help="count wrong elements against numpy (default 1)")
    d.add_argument("-o", "--op", default="sum", choices=REDOPS, help="reduction op")
    d.add_argument("-d", "--datatype", default="float", choices=sorted(DTYPES))
    d.add_argument("-r", "--root", type=int, default=0, help="broadcast root")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true",
                   help="JSON lines on stdout (the table goes to stderr)")
    o.add_argument("--out", default=None, help="also append the JSON lines to this file")
    o.add_argument("--peer", default=None, help="JSON 'peer' (default collx-<transport>)")
    o.add_argument("--memory", action="store_true",
                   help="allreduce only: peak extra RSS of one call beyond input+output "
                        "(MiB; for a clean baseline run one size alone, e.g. --sizes 256M)")
    return p


def _sizes(a: argparse.Namespace) -> list[int]:
    if a.sizes:
        return m.parse_sizes(a.sizes)
    if a.minbytes is None and a.maxbytes is None and a.stepfactor is None:
        return list(m.DEFAULT_SIZES)
    lo = m.parse_size(a.minbytes) if a.minbytes else 8
    hi = m.parse_size(a.maxbytes) if a.maxbytes else max(lo, 256 << 20)
    return m.nccl_grid(lo, hi, a.stepfactor if a.stepfactor is not None else 4.0)


def _ops(spec: str) -> list[str]:
    ops = list(m.OPS) if spec in ("all", "") else [s.strip() for s in spec.split(",")]
    bad = [o for o in ops if o not in m.OPS]
    if bad:
        raise ValueError(f"unknown op(s) {bad}; known: {', '.join(m.OPS)} or all")
    return ops


def last_algo(comm: Any, op: str | None = None, before: Any = ()) -> str:
    """Algorithm of the plan the communicator built last (its plan cache is ordered by
    build; call right after the op under test). With ``op``: the newest plan of that op,
    preferring one not in ``before`` (the plan keys that existed before the case ran), so
    that the bench's own helper collectives (barrier, allreduce of timings) don't count."""
    last = getattr(comm, "last_plan", None)
    if op is not None and last is not None and last.key and last.key[0] == op:
        return str(last.algo)          # the plan the op's last Python-path call executed
    plans = getattr(comm, "_plans", None)
    if not plans:
        return "?"
    if op is None:
        return str(getattr(next(reversed(plans.values())), "algo", "?"))
    mine = [(k, p) for k, p in reversed(plans.items()) if k and k[0] == op]
    for k, p in mine:
        if k not in before:
            return str(getattr(p, "algo", "?"))
    return str(getattr(mine[0][1], "algo", "?")) if mine else "?"


class Bench:
    """One run: the collectives for timing (barrier, allmax) and the output streams."""

    def __init__(self, a: argparse.Namespace) -> None:
        import collx
        from collx import _C
        self.collx, self.a = collx, a
        collx.init()
        self.comm = collx.communicator()
        self.rank, self.n = collx.rank(), collx.size()
        self.transport = self.comm.transport_name()
        self.peer = a.peer or f"collx-{self.transport}"
        self.dtype = np.dtype(DTYPES[a.datatype][0])
        self.type_name = DTYPES[a.datatype][1]
        self.variant = _C.reduce_variant(_C.DTYPE_NAMES.index(self.dtype.name))
        self.version = f"collx {collx.__version__}"
        self.load = m.load1()
        self.human: TextIO | None = sys.stderr if a.json else sys.stdout
        if self.rank != 0:
            self.human = None

    def barrier(self) -> None:
        self.collx.barrier()

    def allmax(self, vals: Sequence[float]) -> list[float]:
        return self.collx.allreduce(np.asarray(vals, np.float64), op=self.collx.Max).tolist()

    def allsum(self, v: int) -> int:
        return int(self.collx.allreduce(np.array([v], np.int64), op=self.collx.Sum)[0])

    def say(self, text: str) -> None:
        if self.human is not None:
            emit(text, self.human)

    def timed(self, run: Any) -> tuple[float, float, float, int, int]:
        a = self.a
        if a.iters is not None:
            return m.measure_fixed(run, self.barrier, self.allmax, iters=a.iters,
                                   warmup=a.warmup_iters)
        return m.measure(run, self.barrier, self.allmax, warmup=a.warmup_iters,
                         batches=a.batches, budget_s=a.budget)

    def one(self, op: str, size: int) -> tuple[Row, dict]:
        """Benchmark one (op, size): check, time out-of-place, p50/p99, then in-place."""
        a, n = self.a, self.n
        count = m.count_for(op, size, n, self.dtype.itemsize)
        nbytes = count * self.dtype.itemsize
        reducing = op in REDUCING
        before = set(getattr(self.comm, "_plans", {}))
        case = make_case(op, count, self.dtype, a.op, a.root,
                         inplace=op in INPLACE_OPS and not a.no_inplace)
        extra: dict = {}
        if a.memory and op == "allreduce":
            from .memory import extra_rss
            first, how = extra_rss(case.run)      # first call of this size: plan + setup
            steady, _ = extra_rss(case.run)
            first, steady = self.allmax([first, steady])
            extra.update(extra_rss_MiB=round(first, 2), extra_rss_steady_MiB=round(steady, 2),
                         rss_method=how)
        # the case's first call: its plan is the comm's last_plan until the bench's own
        # helper collectives (allsum, barrier) run
        checked = case.check() if a.check else case.run()
        algo = last_algo(self.comm, op, before)
        wrong = self.allsum(checked) if a.check else None
        case.run()
        med, lo, hi, iters, nb = self.timed(case.run)
        calls = a.pct_calls or a.iters or m.pct_calls(med, a.budget)
        per_call = m.per_call_times(case.run, self.barrier, self.allmax, calls)
        p50, p99 = m.percentile(per_call, 50), m.percentile(per_call, 99)
        ip = None
        if case.run_inplace is not None:
            ip_wrong = self.allsum(case.check_inplace()) if a.check and case.check_inplace else None
            ip_med = self.timed(case.run_inplace)[0]
            ip = Timing(ip_med * 1e6, nbytes, op, n, ip_wrong)
            extra.update(inplace_us=round(ip_med * 1e6, 3),
                         inplace_algbw_GBps=m.sig(ip.algbw), inplace_busbw_GBps=m.sig(ip.busbw),
                         inplace_wrong=ip_wrong)
        row = Row(nbytes, count, self.type_name, a.op if reducing else "none",
                  a.root if op == "broadcast" else -1, Timing(med * 1e6, nbytes, op, n, wrong),
                  ip, p50 * 1e6, p99 * 1e6, algo, self.transport)
        rec = m.record(self.peer, op, n, nbytes, self.dtype.name, med, lo, hi, iters, nb,
                       load1=self.load, version=self.version, transport=self.transport,
                       algo=algo, p50_us=round(p50 * 1e6, 3), p99_us=round(p99 * 1e6, 3),
                       wrong=wrong, count=count, redop=row.redop, root=row.root,
                       timing="fixed" if a.iters is not None else "batches", pct_calls=calls,
                       **extra)
        bad = (wrong or 0) + ((ip.wrong or 0) if ip else 0)
        if bad:
            rec["error"] = f"wrong result: {bad} elements"
        return row, rec

    def emit_record(self, rec: dict) -> None:
        """Rank 0: the JSON line on stdout (--json) and appended to --out."""
        if self.rank != 0:
            return
        line = json.dumps(rec)
        if self.a.json:
            print(line, flush=True)
        if self.a.out:
            with open(self.a.out, "a") as f:
                f.write(line + "\n")

    def run(self, ops: list[str], sizes: list[int]) -> int:
        a = self.a
        timing = (f"fixed: 1 untimed + {a.warmup_iters} warm-up calls, then {a.iters} timed "
                  f"calls; slowest rank's mean" if a.iters is not None else
                  "bench_common.measure: 1 untimed call, <=5 warm-up, batches of k calls "
                  "(~20 ms), slowest rank per batch, median over batches (~%g s/size)" % a.budget)
        self.say(header(self.version, self.n, self.transport, self.variant, self.dtype.name,
                        timing, "one extra pass timing each out-of-place call on its own "
                        "(slowest rank per call)", self.load))
        rows: list[Row] = []
        for op in ops:
            self.say(table_header(op))
            for size in sizes:
                row, rec = self.one(op, size)
                rows.append(row)
                self.say(format_row(row))
                self.emit_record(rec)
        self.say(footer(rows))
        wrong = sum((r.oop.wrong or 0) + ((r.inplace.wrong or 0) if r.inplace else 0)
                    for r in rows)
        return 1 if wrong else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of collx-bench; returns the exit code (1 when any element was wrong)."""
    parser = _parser()
    a = parser.parse_args(argv)
    try:
        ops, sizes = _ops(a.ops), _sizes(a)
    except ValueError as exc:
        parser.error(str(exc))
    if a.iters is not None and a.iters < 1 or a.warmup_iters < 0:
        parser.error("-n must be >= 1 and -w >= 0")
    if (a.sweep_rounds != 1 or a.candidates) and a.tune is None:
        parser.error("--sweep-rounds and --candidates go with --tune (the sweep they shape)")
    if a.sweep_rounds < 1:
        parser.error("--sweep-rounds must be >= 1")
    only = [x.strip() for x in a.candidates.split(",")] if a.candidates else None
    if only:
        from ..algos.registry import ALGORITHMS
        known = {name for op in ops for name in ALGORITHMS.get(op, {})}
        bad = [x for x in only if x not in known]
        if bad:
            parser.error(f"--candidates: {bad} is not an algorithm of {', '.join(ops)} "
                         f"(known: {', '.join(sorted(known))})")
    if a.algo is not None:
        os.environ["COLLX_ALGO"] = a.algo     # read once, by collx.init() in Bench
    bench = Bench(a)
    if not 0 <= a.root < bench.n:
        parser.error(f"-r/--root {a.root} is not a rank (0..{bench.n - 1})")
    if a.check_only and not a.tune:
        parser.error("--check-only needs --tune FILE (the table to check)")
    if a.tune is not None or a.tune_check:
        from . import tune
        from .. import config
        path = a.tune or config.get("COLLX_TUNE_FILE") or "collx-tune.json"
        return tune.tune(bench, ops, sizes, path, a.tune_check or a.check_only,
                         max(1, a.check_rounds), check_only=a.check_only,
                         sweep_rounds=max(1, a.sweep_rounds), only=only)
    return bench.run(ops, sizes)


if __name__ == "__main__":
    sys.exit(main())
