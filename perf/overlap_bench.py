"""Step time of the example model (examples/train_torch.py) with collx.torch's
DistributedOptimizer against torch DDP over gloo, on the same model, data and batch.

One rank of one job (run under collxrun):

    collxrun -np 2 python perf/overlap_bench.py --mode collx --steps 200 --json
    collxrun -np 2 python perf/overlap_bench.py --mode ddp --port 29511 --steps 200 --json

The driver interleaves rounds of both modes at each np (the machine is shared and noisy:
only ratios from one run are claimed) and prints one table plus JSON lines:

    python perf/overlap_bench.py --drive --np 2,4 --rounds 3 --steps 200 [--out FILE]

With ``--timeline`` the collx jobs also write a COLLX_TIMELINE trace and the driver reports,
per job, the share of steps whose first gradient collective started before that step's
backward pass ended (the overlap the DistributedOptimizer exists for).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:           # run from a checkout without installing
    sys.path.insert(0, str(REPO))


def _example():
    spec = importlib.util.spec_from_file_location("train_example", REPO / "examples" / "train_torch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)      # imports collx.torch too (harmless for the ddp mode)
    return mod


def run_rank(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    ex = _example()
    rank, size = int(os.environ["COLLX_RANK"]), int(os.environ["COLLX_SIZE"])
    torch.manual_seed(args.seed)
    x, y = ex.make_dataset(args.batch_size * size * 8, seed=1)
    model = ex.Net()
    if args.mode == "collx":
        import collx.torch as hvd
        hvd.init()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
        net = model
        done = hvd.shutdown
    elif args.mode == "none":       # the same steps without communication: the compute floor
        net = model
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        done = lambda: None  # noqa: E731
    else:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}",
                                rank=rank, world_size=size)
        net = DDP(model)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        def done() -> None:
            dist.barrier()                # nobody tears gloo down under a peer still in it
            dist.destroy_process_group()
    times = []
    for step in range(args.warmup + args.steps):
        lo = ((step * size + rank) * args.batch_size) % (len(x) - args.batch_size)
        xb, yb = x[lo:lo + args.batch_size], y[lo:lo + args.batch_size]
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = F.nll_loss(net(xb), yb)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        if step >= args.warmup:
            times.append(t1 - t0)
    done()
    return {"mode": args.mode, "np": size, "rank": rank, "steps": args.steps,
            "batch": args.batch_size, "step_ms_median": 1e3 * statistics.median(times),
            "step_ms_mean": 1e3 * statistics.fmean(times)}


def overlap_share(trace_path: str) -> float | None:
    """Share of BACKWARD spans (first to last gradient hook of a step, written by
    collx.torch's DistributedOptimizer) inside which an ALLREDUCE of the timeline starts:
    communication that began while backward was still running. None without spans."""
    try:
        data = json.loads(Path(trace_path).read_text())
    except (OSError, ValueError):
        return None
    events = data["traceEvents"] if isinstance(data, dict) else data
    starts = sorted(e["ts"] for e in events if e.get("ph") == "X" and e.get("name") in
                    ("ALLREDUCE", "QUANTIZED_ALLREDUCE"))
    opened, spans = None, []
    for e in sorted((e for e in events if e.get("name") == "BACKWARD"), key=lambda e: e["ts"]):
        if e["ph"] == "B":
            opened = e["ts"]
        elif e["ph"] == "E" and opened is not None:
            spans.append((opened, e["ts"]))
            opened = None
    if not spans:
        return None
    hits = sum(any(b0 <= s < b1 for s in starts) for b0, b1 in spans)
    return hits / len(spans)


def drive(args: argparse.Namespace) -> int:
    rows = []
    port = 29500 + os.getpid() % 1000
    for np_ in [int(v) for v in args.np.split(",")]:
        for rnd in range(args.rounds):
            for mode in args.modes.split(","):
                port += 1
                env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
                trace = None
                if mode == "collx" and args.timeline:
                    trace = tempfile.mktemp(suffix=".json", prefix="collx-timeline-")
                    env["COLLX_TIMELINE"] = trace
                resdir = tempfile.mkdtemp(prefix="collx-overlap-")
                cmd = [sys.executable, "-m", "collx.runner", "-np", str(np_), "--no-prefix",
                       sys.executable, __file__, "--mode", mode, "--port", str(port),
                       "--steps", str(args.steps), "--warmup", str(args.warmup),
                       "--batch-size", str(args.batch_size), "--result-dir", resdir]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
                recs = [json.loads(p.read_text()) for p in sorted(Path(resdir).glob("*.json"))]
                if out.returncode != 0 or len(recs) != np_:
                    print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
                    return 1
                step = max(r["step_ms_median"] for r in recs)    # the slowest rank sets the pace
                row = {"np": np_, "round": rnd, "mode": mode, "step_ms": step}
                if trace:
                    row["overlap_share"] = overlap_share(trace)
                    os.unlink(trace) if os.path.exists(trace) else None
                rows.append(row)
                print(json.dumps(row), flush=True)
    print()
    print("| np | collx step (ms, median of rounds) | DDP gloo step (ms) | collx / DDP | "
          "steps with a collective started before backward ended |")
    print("|---:|---:|---:|---:|---:|")
    for np_ in sorted({r["np"] for r in rows}):
        med = {m: statistics.median(r["step_ms"] for r in rows if r["np"] == np_ and r["mode"] == m)
               for m in {r["mode"] for r in rows if r["np"] == np_}}
        if "none" in med:
            print(f"np {np_}: compute-only step {med['none']:.2f} ms; communication adds "
                  + ", ".join(f"{m} {med[m] - med['none']:+.2f} ms" for m in med if m != "none"))
        if "collx" not in med or "ddp" not in med:
            continue
        c, d = med["collx"], med["ddp"]
        ov = [r.get("overlap_share") for r in rows if r["np"] == np_ and r["mode"] == "collx"
              and r.get("overlap_share") is not None]
        print(f"| {np_} | {c:.2f} | {d:.2f} | {c / d:.2f} | "
              f"{'%.0f%%' % (100 * statistics.median(ov)) if ov else 'n/a'} |")
    if args.out:
        with open(args.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--drive", action="store_true", help="run the comparison (driver)")
    ap.add_argument("--np", default="2,4", help="driver: rank counts")
    ap.add_argument("--rounds", type=int, default=3, help="driver: interleaved rounds")
    ap.add_argument("--timeline", action="store_true", help="driver: measure overlap")
    ap.add_argument("--out", default=None, help="driver: append JSON rows to this file")
    ap.add_argument("--mode", choices=("collx", "ddp", "none"), default="collx")
    ap.add_argument("--modes", default="collx,ddp",
                    help="driver: modes to interleave (none: no communication, the floor)")
    ap.add_argument("--port", type=int, default=29511, help="ddp: rendezvous port")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--result-dir", default=None, help="write this rank's JSON there")
    args = ap.parse_args()
    if args.drive:
        return drive(args)
    res = run_rank(args)
    if args.result_dir:
        Path(args.result_dir, f"rank{res['rank']}.json").write_text(json.dumps(res))
    if args.json:
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
