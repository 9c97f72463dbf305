"""Train a small CNN on generated digit-like images, data-parallel with Horovod's API.

    collxrun -np 4 python examples/train_torch.py [--epochs 3] [--compression fp16]
    horovodrun -np 4 python examples/train_horovod.py      (the same script on Horovod)

The two scripts differ only in their import line (``import collx.torch as hvd`` or
``import horovod.torch as hvd``). The data ships with the script: ten classes of 12x12
images, each class a fixed pattern of strokes drawn once from a seeded generator, every
sample that pattern shifted by up to a pixel, scaled and noised. Every rank builds the
same data set and reads its own shard of every epoch's shuffled order (DistributedSampler);
the gradients are averaged by hvd.DistributedOptimizer while backward runs. Prints loss,
accuracy and step time per epoch (rank 0), and with --json one final JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import collx.torch as hvd

SIDE = 12
CLASSES = 10


def make_dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (n, 1, SIDE, SIDE) float32 and labels (n,) int64; the class patterns are
    the same for every seed, the samples depend on it."""
    pat_rng = np.random.default_rng(1234)
    patterns = np.zeros((CLASSES, SIDE + 2, SIDE + 2), np.float32)
    for c in range(CLASSES):
        for _ in range(3):                       # three strokes per class
            r0, c0, r1, c1 = pat_rng.integers(2, SIDE, size=4)
            steps = max(abs(r1 - r0), abs(c1 - c0)) + 1
            rr = np.linspace(r0, r1, steps).round().astype(int)
            cc = np.linspace(c0, c1, steps).round().astype(int)
            patterns[c, rr, cc] = 1.0
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=n)
    dr, dc = rng.integers(0, 3, size=(2, n))     # shift by -1, 0 or +1 pixel
    images = np.empty((n, 1, SIDE, SIDE), np.float32)
    for i in range(n):
        images[i, 0] = patterns[labels[i], dr[i]:dr[i] + SIDE, dc[i]:dc[i] + SIDE]
    images *= rng.uniform(0.7, 1.3, size=(n, 1, 1, 1)).astype(np.float32)
    images += rng.normal(0.0, 0.35, size=images.shape).astype(np.float32)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 3 * 3, 64)
        self.fc2 = nn.Linear(64, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return F.log_softmax(self.fc2(x), dim=1)


def metric_average(value: float, name: str) -> float:
    return hvd.allreduce(torch.tensor(value), name=name).item()


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Loss and accuracy over this rank's shard, averaged over the ranks."""
    model.eval()
    shard = slice(hvd.rank(), None, hvd.size())
    with torch.no_grad():
        out = model(images[shard])
        loss = F.nll_loss(out, labels[shard]).item()
        acc = (out.argmax(1) == labels[shard]).float().mean().item()
    model.train()
    return metric_average(loss, "test_loss"), metric_average(acc, "test_accuracy")


def train(args: argparse.Namespace) -> dict:
    """Train as the arguments say; returns the final metrics (the same on every rank)."""
    torch.manual_seed(args.seed)
    train_x, train_y = make_dataset(args.train_size, seed=1)
    test_x, test_y = make_dataset(args.test_size, seed=2)
    model = Net()
    # the learning rate scales with the number of ranks, as the global batch does
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=0.9)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    compression = getattr(hvd.Compression, args.compression)
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression,
                                         op=hvd.Adasum if args.use_adasum else hvd.Average,
                                         gradient_predivide_factor=args.gradient_predivide_factor)
    # each rank reads its own shard of every epoch's shuffled order
    train_set = TensorDataset(train_x, train_y)
    sampler = DistributedSampler(train_set, num_replicas=hvd.size(), rank=hvd.rank(),
                                 seed=args.seed, drop_last=True)
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    step_times: list[float] = []
    loss = float("nan")
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        for data, target in loader:
            t0 = time.perf_counter()
            optimizer.zero_grad()
            loss_t = F.nll_loss(model(data), target)
            loss_t.backward()
            optimizer.step()
            step_times.append(time.perf_counter() - t0)
            loss = loss_t.item()
        test_loss, test_acc = evaluate(model, test_x, test_y)
        timed = step_times[5:] or step_times
        if hvd.rank() == 0 and not args.quiet:
            print(f"epoch {epoch}: train loss {loss:.4f}  test loss {test_loss:.4f}  "
                  f"test accuracy {100 * test_acc:.2f}%  step {1e3 * np.median(timed):.2f} ms "
                  f"(ranks {hvd.size()}, batch {args.batch_size}/rank, "
                  f"compression {args.compression})", flush=True)
    timed = step_times[5:] or step_times
    return {"ranks": hvd.size(), "compression": args.compression, "epochs": args.epochs,
            "test_loss": test_loss, "test_accuracy": test_acc,
            "step_ms_median": 1e3 * float(np.median(timed)),
            "step_ms_mean": 1e3 * float(np.mean(timed)), "steps": len(step_times)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="per rank")
    p.add_argument("--lr", type=float, default=0.01, help="per rank (scaled by size)")
    p.add_argument("--train-size", type=int, default=8192)
    p.add_argument("--test-size", type=int, default=2048)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--compression", default="none",
                   choices=[c for c in ("none", "fp16", "bf16", "int8")
                            if hasattr(hvd.Compression, c)])
    p.add_argument("--use-adasum", action="store_true", help="op=hvd.Adasum (Horovod only)")
    p.add_argument("--gradient-predivide-factor", type=float, default=1.0)
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.add_argument("--quiet", action="store_true")
    return p


def main() -> None:
    args = parser().parse_args()
    hvd.init()
    torch.set_num_threads(1)
    result = train(args)
    if args.json and hvd.rank() == 0:
        print(json.dumps(result), flush=True)
    hvd.shutdown()


if __name__ == "__main__":
    main()
