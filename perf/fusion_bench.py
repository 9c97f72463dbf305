"""Does tensor fusion pay? 1000 async 1 KiB allreduces through the negotiated engine, with
fusion (COLLX_FUSION_THRESHOLD default, 64 MiB) and without (COLLX_FUSION_THRESHOLD=0), in
one run, side by side; plus the per-tensor engine overhead.

    python perf/fusion_bench.py -np 2 [--tensors 1000] [--bytes 1024] [--iters 20]
                                [--transport auto|shm|tcp] [--freeze N] [--json]

Each configuration is one collxrun job (launched by this script, one after the other, on the
same machine); inside, every rank submits ``--tensors`` named allreduce_async calls of
``--bytes`` float32 bytes, then synchronizes all, ``--iters`` times after 3 warm-up rounds
(the names repeat, so after the first round every request goes through the response cache).

Reported per configuration (rank 0; medians over the iterations):
  batch_ms      submit of the first tensor → result of the last
  per_tensor_us batch_ms / tensors: the engine's cost per tensor in a burst
  submit_us     time allreduce_async takes to return (validation + queueing)
  cpu_per_tensor_us  CPU time of rank 0's process (user thread + worker, both) per tensor
                in a burst: less sensitive to a busy machine than the wall times
  lone_us       one allreduce_async + synchronize on an otherwise idle engine: the
                submit→result latency of a single 1 KiB tensor (cycle wait + coordination
                + the collective), and, for comparison, the same call in the ordered
                engine (no negotiation)
and the ratio batch_ms(no fusion) / batch_ms(fusion). Machines are shared and noisy: compare
only numbers from one run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def child(args: argparse.Namespace) -> None:
    import numpy as np

    import collx
    collx.init(negotiate=True)
    count = max(1, args.bytes // 4)
    xs = [np.full(count, float(i % 7), np.float32) for i in range(args.tensors)]
    batches, submits, cpus = [], [], []
    for it in range(args.iters + 3):
        c0 = time.process_time()
        t0 = time.perf_counter()
        hs = [collx.allreduce_async(x, op=collx.Sum, name=f"t{i}") for i, x in enumerate(xs)]
        t1 = time.perf_counter()
        for h in hs:
            h.wait()
        t2 = time.perf_counter()
        if it >= 3:
            cpus.append(time.process_time() - c0)
            batches.append(t2 - t0)
            submits.append((t1 - t0) / args.tensors)
    res = collx.synchronize(hs[-1])
    ok = bool((res == float((args.tensors - 1) % 7) * collx.size()).all())
    lone = []
    for _ in range(200):
        time.sleep(0.002)               # let the worker go idle
        t0 = time.perf_counter()
        collx.allreduce_async(xs[0], op=collx.Sum, name="lone").wait()
        lone.append(time.perf_counter() - t0)
    stats = dict(collx.api._engine.stats)
    collx.shutdown()
    collx.init(negotiate=False)
    out = np.empty_like(xs[0])
    ordered = []
    for _ in range(200):
        t0 = time.perf_counter()
        collx.allreduce(xs[0], op=collx.Sum, out=out)
        ordered.append(time.perf_counter() - t0)
    rank = collx.rank()
    collx.shutdown()
    if rank == 0:
        batch = statistics.median(batches)
        print("RESULT " + json.dumps({
            "fusion_threshold": os.environ.get("COLLX_FUSION_THRESHOLD", "default"),
            "freeze_after": os.environ.get("COLLX_FREEZE_AFTER", "0"),
            "frozen_groups": stats["frozen_groups"],
            "tensors": args.tensors, "bytes": args.bytes, "correct": ok,
            "batch_ms": round(batch * 1e3, 3),
            "per_tensor_us": round(batch / args.tensors * 1e6, 2),
            "submit_us": round(statistics.median(submits) * 1e6, 2),
            "cpu_per_tensor_us": round(statistics.median(cpus) / args.tensors * 1e6, 2),
            "lone_us": round(statistics.median(lone) * 1e6, 1),
            "ordered_sync_us": round(statistics.median(ordered) * 1e6, 1),
            "fused_responses": stats["fused_responses"], "responses": stats["responses"],
            "cycles": stats["cycles"]}), flush=True)


def launch(args: argparse.Namespace, fusion: str | None, freeze: int = 0) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLX_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if fusion is not None:
        env["COLLX_FUSION_THRESHOLD"] = fusion
    if args.transport != "auto":
        env["COLLX_TRANSPORT"] = args.transport
    if freeze:
        env["COLLX_FREEZE_AFTER"] = str(freeze)
    cmd = [sys.executable, "-m", "collx.runner", "-np", str(args.np), "--timeout",
           str(args.timeout), sys.executable, __file__, "--child", "--tensors",
           str(args.tensors), "--bytes", str(args.bytes), "--iters", str(args.iters)]
    proc = subprocess.run(cmd, env=env, cwd=str(REPO), capture_output=True, text=True,
                          timeout=args.timeout + 30)
    for line in proc.stdout.splitlines():
        if "RESULT " in line:
            return json.loads(line.split("RESULT ", 1)[1])
    raise SystemExit(f"fusion_bench: job failed (exit {proc.returncode}):\n"
                     f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-np", type=int, default=2)
    p.add_argument("--tensors", type=int, default=1000)
    p.add_argument("--bytes", type=int, default=1024)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--transport", default="auto", choices=["auto", "shm", "tcp"],
                   help="COLLX_TRANSPORT for both jobs (tcp: what fusion saves across hosts, "
                        "where each collective costs a network round trip)")
    p.add_argument("--freeze", type=int, default=0, metavar="N",
                   help="also run fusion with COLLX_FREEZE_AFTER=N (frozen order)")
    p.add_argument("--json", action="store_true", help="print the result objects only")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    fused = launch(args, None)
    unfused = launch(args, "0")
    rows = [("fusion 64MiB", fused), ("no fusion", unfused)]
    if args.freeze:
        rows.append((f"fused+frozen{args.freeze}", launch(args, None, args.freeze)))
    if args.json:
        for _, r in rows:
            print(json.dumps(r))
        return
    ratio = unfused["batch_ms"] / fused["batch_ms"]
    print(f"fusion_bench: np={args.np}, transport {args.transport}, {args.tensors} async "
          f"allreduces of {args.bytes} B (float32 Sum), median of {args.iters} batches")
    print(f"{'config':14} {'batch ms':>9} {'us/tensor':>10} {'cpu us/t':>9} {'submit us':>10} "
          f"{'lone us':>8} {'ordered us':>10} {'fused resp':>10} {'correct':>8}")
    for label, r in rows:
        print(f"{label:14} {r['batch_ms']:9.2f} {r['per_tensor_us']:10.2f} "
              f"{r['cpu_per_tensor_us']:9.2f} {r['submit_us']:10.2f} {r['lone_us']:8.1f} "
              f"{r['ordered_sync_us']:10.1f} {r['fused_responses']:10d} {str(r['correct']):>8}")
    print(f"speed-up from fusion: {ratio:.2f}x  (per-tensor engine overhead with fusion: "
          f"{fused['per_tensor_us']:.1f} us in a burst, {fused['lone_us']:.0f} us for a lone "
          f"tensor vs {fused['ordered_sync_us']:.0f} us in the ordered engine)")


if __name__ == "__main__":
    main()
