"""The "auto never loses" table from ``collx-bench --tune --tune-check --json`` records.

    python3 perf/tune_check_table.py perf/results/2026-12-03/tune/2x2-r3.jsonl [--stat best|median]

Uses the records the check emits (``tune_check``: "auto" or "best-forced", ``check_round``):
per (op, size), auto's time and the sweep's fastest forced algorithm's time, each the best
(default) or the median of the interleaved rounds (each round is itself collx-bench's median
over batches; interference on a shared machine only adds time, so the best round is the
least disturbed). Prints a markdown table with both statistics, marks rows where auto ran
the same schedule as the best forced run ("same plan": the ratio is then the machine's
noise, not a selection error), and the worst ratio over the rows where auto chose another
algorithm.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict


def load(path: str) -> dict[tuple[str, int], dict[str, list[dict]]]:
    rows: dict[tuple[str, int], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            which = rec.get("tune_check")
            if which in ("auto", "best-forced"):
                rows[(rec["op"], int(rec["bytes"]))][which].append(rec)
    return rows


def table(rows: dict, stat: str) -> tuple[list[str], float, float]:
    pick = min if stat == "best" else statistics.median
    out = ["| op | bytes | fastest forced | µs | auto ran | µs | auto/best | (medians) | |",
           "|---|---:|---|---:|---|---:|---:|---:|---|"]
    worst = worst_other = 0.0
    order = ["allreduce", "broadcast", "reduce", "allgather", "reducescatter"]
    for op, nbytes in sorted(rows, key=lambda k: (order.index(k[0]) if k[0] in order else 9, k[1])):
        r = rows[(op, nbytes)]
        auto, best = r.get("auto", []), r.get("best-forced", [])
        if not auto or not best:
            continue
        a = pick([x["us"] for x in auto])
        b = pick([x["us"] for x in best])
        am = statistics.median([x["us"] for x in auto])
        bm = statistics.median([x["us"] for x in best])
        a_algo = auto[0]["algo"]
        b_algo = best[0]["algo"]
        same = {x["algo"] for x in auto} == {x["algo"] for x in best}
        ratio = a / b
        worst = max(worst, ratio)
        if not same:
            worst_other = max(worst_other, ratio)
        out.append(f"| {op} | {nbytes} | {b_algo} | {b:.2f} | {a_algo} | {a:.2f} | "
                   f"**{ratio:.2f}** | {am / bm:.2f} | {'same plan' if same else ''} |")
    return out, worst, worst_other


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--stat", choices=("best", "median"), default="best")
    args = ap.parse_args()
    for path in args.files:
        rows = load(path)
        lines, worst, worst_other = table(rows, args.stat)
        print(f"{path} ({args.stat} of the rounds):\n")
        print("\n".join(lines))
        print(f"\nworst auto/best: {worst:.2f}; where auto chose another algorithm than the "
              f"fastest: {worst_other:.2f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
