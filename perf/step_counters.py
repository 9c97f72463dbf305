"""Where a training step's time goes in the negotiated engine: the example model
(examples/train_torch.py) trained with collx.torch's DistributedOptimizer, reporting per rank
the median time of forward+backward and of ``step()`` (the wait for what is still being
reduced) and the engine's counters per step (cycles, responses, fused tensors, cache hits,
frozen groups).

    collxrun -np 2 python perf/step_counters.py [--steps 300] [--batch-size 32]
    COLLX_FREEZE_AFTER=0 collxrun -np 2 python perf/step_counters.py     # never freeze

Counters are deterministic where times are not (a shared machine): compare them first.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("train_example", REPO / "examples" / "train_torch.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    import collx.torch as hvd
    from collx import api
    hvd.init()
    r, n, b = hvd.rank(), hvd.size(), args.batch_size
    torch.manual_seed(1)
    x, y = ex.make_dataset(b * n * 8, seed=1)
    model = ex.Net()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.01),
                                   named_parameters=model.named_parameters())
    engine = api._engine
    fwd_bwd, wait = [], []
    base: dict = {}
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            base = dict(getattr(engine, "stats", {}))
        lo = ((step * n + r) * b) % (len(x) - b)
        t0 = time.perf_counter()
        opt.zero_grad()
        F.nll_loss(model(x[lo:lo + b]), y[lo:lo + b]).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        if step >= args.warmup:
            fwd_bwd.append(t1 - t0)
            wait.append(t2 - t1)
    per_step = {k: round((v - base.get(k, 0)) / args.steps, 2)
                for k, v in getattr(engine, "stats", {}).items() if v != base.get(k, 0)}
    print(f"rank {r}: forward+backward {1e3 * statistics.median(fwd_bwd):.3f} ms, "
          f"step() {1e3 * statistics.median(wait):.3f} ms; per step {per_step}", flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    main()
