"""``collx-bench --tune``: measure every algorithm of every op on this job, write the tune
table that selection prefers over the cost model (COLLX_TUNE_FILE), and check "auto never
loses" in the same run.

Steps (every rank runs the same loop, so every collective matches):
  1. for each op and each registered algorithm that can serve this world size, force it
     (the communicator's COLLX_ALGO spec is swapped for ``op:algo``) and time every size
     exactly as a normal collx-bench row (same measure, same JSON record).
     ``--sweep-rounds R`` (R > 1) interleaves instead: R rounds, each timing every size with
     every algorithm back to back (the algorithms' order rotated by one per round), so that
     all candidates of a size are timed within seconds of each other and each at R spread
     moments; a table entry is then the best of its R rounds (records carry
     ``sweep_round``). On a shared or oversubscribed machine one algorithm-after-another
     sweep lets the machine's drift (2x over minutes here) decide the ranking;
     ``--candidates a,b`` restricts the algorithms swept;
  2. rank 0 writes ``{"version": 1, "entries": [{op, np, hosts, nbytes, algo, us}]}``;
  3. with ``--tune-check``: the table is loaded into this job's Selector and every size is
     timed once more with nothing forced ("auto"), and right after it the sweep's fastest
     algorithm forced again (adjacent in time, so the machine's drift cancels); the report
     gives, per (op, size), that algorithm, auto's choice and auto's time / its time.
     ``--check-rounds R`` repeats the pair R times, alternating which of the two runs first,
     and compares the best of the R rounds of each (each round is already a median over
     batches; interference on a shared machine only ever adds time, so the best round is
     the least disturbed estimate — at np 4 on 2 cores one schedule timed twice in a row
     differs by up to 1.5x, more than the 10% the check is about). The medians of the
     rounds are printed too, and a row says ``same plan`` when auto ran the very schedule
     the best forced run did (the ratio then measures only the machine's noise).
Sizes and ops as for a normal run; alltoall is not tuned (one algorithm serves it).
"""
from __future__ import annotations

import json
import statistics
from typing import Any

from ..algos.registry import ALGORITHMS, build_schedule

TUNABLE = ("allreduce", "broadcast", "reduce", "allgather", "reducescatter")


def candidates(op: str, n: int, servers: int = 0) -> list[str]:
    """Algorithms of ``op`` that can serve ``n`` ranks at all (a tiny build succeeds)."""
    out = []
    for name in sorted(ALGORITHMS[op]):
        try:
            build_schedule(op, n, count=n, counts=[1] * n, root=0, algo=name, servers=servers)
        except ValueError:
            continue
        out.append(name)
    return out


def _set_forced(comm: Any, text: str | None) -> None:
    comm.set_spec(text)


def _read_table(path: str, n: int) -> tuple[list[dict], dict[tuple[str, int], tuple[float, str]]]:
    """The entries of an earlier tune table for ``n`` ranks, and the fastest per (op, size)."""
    with open(path) as f:
        entries = [e for e in json.load(f)["entries"] if e.get("np") == n]
    best: dict[tuple[str, int], tuple[float, str]] = {}
    for e in entries:
        key = (e["op"], int(e["nbytes"]))
        if key not in best or e["us"] < best[key][0]:
            best[key] = (e["us"], e["algo"])
    return entries, best


def sweep_order(algos: list[str], rnd: int) -> list[str]:
    """Round ``rnd``'s order of the algorithms of one size: rotated by one per round, so that
    no algorithm always runs first (right after the previous size) or last."""
    k = rnd % len(algos) if algos else 0
    return algos[k:] + algos[:k]


def sweep(bench: Any, ops: list[str], sizes: list[int], sweep_rounds: int = 1,
          only: list[str] | None = None) -> tuple[list[dict], int]:
    """Step 1: every candidate algorithm of every op and size timed; returns the table's
    entries (per (op, size, algo) the best of the rounds) and the count of wrong elements."""
    comm, n = bench.comm, bench.n
    hosts = comm.topology.hosts_count if comm.topology is not None else 1
    entries: list[dict] = []
    wrong = 0
    for op in [o for o in ops if o in TUNABLE]:
        algos = [a for a in candidates(op, n, comm.servers) if not only or a in only]
        if sweep_rounds <= 1:               # one algorithm after another, every size each
            plan = [(0, algo, size) for algo in algos for size in sizes]
        else:                               # rounds; in each, a size's algorithms adjacent
            plan = [(rnd, algo, size) for rnd in range(sweep_rounds) for size in sizes
                    for algo in sweep_order(algos, rnd)]
        times: dict[tuple[str, int], list[float]] = {}
        shown = None
        for rnd, algo, size in plan:
            _set_forced(comm, f"{op}:{algo}")
            group = algo if sweep_rounds <= 1 else (rnd, size)    # one progress line each
            if group != shown:
                bench.say(f"# tune: {op} forced {algo}" if sweep_rounds <= 1 else
                          f"# tune: {op} {size} B, round {rnd + 1}/{sweep_rounds}: "
                          f"{', '.join(sweep_order(algos, rnd))}")
                shown = group
            row, rec = bench.one(op, size)
            if sweep_rounds > 1:
                rec["sweep_round"] = rnd
            wrong += rec.get("wrong") or 0
            bench.emit_record(rec)
            times.setdefault((algo, row.nbytes), []).append(row.oop.us)
        for (algo, nbytes), us in times.items():
            # the least disturbed round: interference only ever adds time
            entries.append({"op": op, "np": n, "hosts": hosts, "nbytes": nbytes,
                            "algo": algo, "us": round(min(us), 3)})
    return entries, wrong


def tune(bench: Any, ops: list[str], sizes: list[int], path: str, check: bool,
         rounds: int = 1, check_only: bool = False, sweep_rounds: int = 1,
         only: list[str] | None = None) -> int:
    """Run steps 1-3 (module docstring) on ``bench`` (a collx.bench.cli.Bench); returns the
    exit code (1 when any result was wrong). ``check_only``: skip steps 1-2 and check the
    table already in ``path`` (every rank reads it). ``sweep_rounds``/``only``: step 1's
    interleaved rounds and the algorithms it is restricted to."""
    comm, n = bench.comm, bench.n
    saved = comm.spec
    entries: list[dict] = []
    best: dict[tuple[str, int], tuple[float, str]] = {}
    wrong = 0
    if check_only:
        entries, best = _read_table(path, n)
        bench.say(f"# tune check of {path}: {len(entries)} entries for np {n}")
    else:
        entries, wrong = sweep(bench, ops, sizes, sweep_rounds, only)
        for e in entries:
            key = (e["op"], e["nbytes"])
            if key not in best or e["us"] < best[key][0]:
                best[key] = (e["us"], e["algo"])
    _set_forced(comm, saved.text if saved else None)
    if bench.rank == 0 and not check_only:
        with open(path, "w") as f:
            json.dump({"version": 1, "entries": entries}, f, indent=1)
            f.write("\n")
        bench.say(f"# tune table: {len(entries)} entries written to {path}")
    if not check:
        return 1 if wrong else 0
    from ..topo.select import tune_from_text
    if comm.selector is not None:
        # every rank holds the same entries (each time is the slowest rank's, via allmax):
        # no rank needs to read rank 0's file
        comm.selector.tune = tune_from_text(json.dumps({"version": 1, "entries": entries}),
                                            path)
        comm.choices_changed()
    _set_forced(comm, None)
    lines = ["", f"# auto vs the fastest forced algorithm (same run; auto uses the table; "
             f"best of {rounds} interleaved round(s), each a median over batches; "
             f"med = ratio of the rounds' medians)",
             f"# {'op':<14}{'bytes':>12}  {'fastest':<12}{'us':>12}  {'auto':<12}{'us':>12}"
             f"{'auto/best':>11}{'med':>7}"]
    worst = 0.0
    worst_other = 0.0               # rows where auto ran another algorithm than the best
    for op in [o for o in ops if o in TUNABLE]:
        for size in sizes:
            b_algo = None
            auto_us: list[float] = []
            best_us: list[float] = []
            auto_algo, nbytes = "?", size
            for rnd in range(rounds):
                # the fastest forced algorithm right beside auto: drift between the sweep
                # and the check (this machine's speed wanders by 2x) cancels out
                for which in (("auto", "best") if rnd % 2 == 0 else ("best", "auto")):
                    if which == "auto":
                        _set_forced(comm, None)
                    else:
                        if b_algo is None:
                            b_algo = best.get((op, nbytes), (0.0, "?"))[1]
                        _set_forced(comm, f"{op}:{b_algo}")
                    row, rec = bench.one(op, size)
                    rec["tune_check"] = "auto" if which == "auto" else "best-forced"
                    rec["check_round"] = rnd
                    wrong += rec.get("wrong") or 0
                    bench.emit_record(rec)
                    nbytes = row.nbytes
                    if which == "auto":
                        auto_us.append(row.oop.us)
                        auto_algo = row.algo
                    else:
                        best_us.append(row.oop.us)
            a_us, b_us = min(auto_us), min(best_us)
            ratio = a_us / b_us if b_us > 0 else float("nan")
            b_med = statistics.median(best_us)
            med = statistics.median(auto_us) / b_med if b_med > 0 else float("nan")
            worst = max(worst, ratio) if ratio == ratio else worst
            same = auto_algo == b_algo
            if not same and ratio == ratio:
                worst_other = max(worst_other, ratio)
            lines.append(f"# {op:<14}{nbytes:>12}  {b_algo:<12}{b_us:>12.2f}  "
                         f"{auto_algo:<12}{a_us:>12.2f}{ratio:>11.2f}{med:>7.2f}"
                         f"{'  same plan' if same else ''}")
    lines.append(f"# worst auto/best: {worst:.2f} (rows where auto chose another algorithm "
                 f"than the fastest: worst {worst_other:.2f})")
    for ln in lines:
        bench.say(ln)
    _set_forced(comm, saved.text if saved else None)
    return 1 if wrong else 0
