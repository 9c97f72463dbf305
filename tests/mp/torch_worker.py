"""Worker: collx.torch on real ranks (tests/test_torch_mp.py). Modes:

all
    collectives on tensors of every dtype against numpy references (sync, async, in-place
    writing into the tensor, Horovod's positional and deprecated arguments); gradients of
    allreduce / allgather / broadcast / alltoall / reducescatter against numpy;
    broadcast_object / allgather_object / broadcast_parameters /
    broadcast_optimizer_state; DistributedOptimizer trained for a few steps in float64,
    parameters bitwise identical on every rank after every step and equal to single-process
    training on the concatenated batch (|diff| <= TOL); backward_passes_per_step=2;
    synchronize() + skip_synchronize() with gradient clipping; then shutdown/init three
    times. Prints ``FAIL ...`` per problem, ``MISSING feature`` for what collx does not
    offer yet, and finally ``OK {json}``.
mismatch
    rank 0 passes shape (3,) and the others (4,) for tensor "bad.tensor": every rank must
    get a RuntimeError naming it; after shutdown/init the job works again; then a tensor
    only rank 0 submits ("lonely.tensor") must fail on rank 0 with a RuntimeError naming
    it within COLLX_TIMEOUT (never a hang). Prints ``OK {json}``.
compression MODE...
    trains examples/train_torch.py's model for each compression mode; prints
    ``RESULT {json}`` per mode and ``OK {}``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import worker

worker.arm_watchdog()

import torch  # noqa: E402

import collx  # noqa: E402
import collx.torch as hvd  # noqa: E402

TOL = 1e-12          # float64 training: distributed vs single-process, max |difference|
REPO = Path(__file__).resolve().parents[2]

failures = 0
checks = 0
covered: list[str] = []
missing: list[str] = []


def fail(what: str, detail: str) -> None:
    global failures
    failures += 1
    print(f"FAIL rank={hvd.rank()} {what}: {detail}", flush=True)


def check(what: str, cond: bool, detail: str = "") -> None:
    global checks
    checks += 1
    if not cond:
        fail(what, detail or "condition is false")


def close(what: str, got: torch.Tensor, want: np.ndarray, tol: float = 0.0) -> None:
    g = got.detach().to(torch.float64).numpy() if got.dtype is torch.bfloat16 else \
        got.detach().numpy()
    if g.shape != want.shape:
        return check(what, False, f"shape {g.shape}, want {want.shape}")
    err = float(np.max(np.abs(g.astype(np.float64) - want.astype(np.float64)))) if g.size else 0.0
    check(what, err <= tol, f"max |got - want| = {err} > {tol}; got {g.ravel()[:6]} want "
                            f"{want.ravel()[:6]}")


def data(i: int, r: int, shape: tuple, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Small integers (exact in every dtype) depending on call i, rank r and position."""
    n = int(np.prod(shape)) if shape else 1
    vals = (np.arange(n) * 7 + 13 * i + 5 * r) % 11 - 5
    return torch.tensor(vals.reshape(shape), dtype=torch.float64).to(dtype)


def has(name: str) -> bool:
    ok = hasattr(collx, name)
    if not ok and name not in missing:
        missing.append(name)
    return ok


# ---- collectives -----------------------------------------------------------------------

def collectives() -> None:
    n, r = hvd.size(), hvd.rank()
    i = 0
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32,
                  torch.int64, torch.int16, torch.uint8, torch.int8):
        i += 1
        shape = (5, 3)
        ins = [data(i, s, shape, dtype) for s in range(n)]
        if dtype is torch.uint8:
            ins = [data(i, s, shape).abs().to(dtype) for s in range(n)]
        ref = [x.to(torch.float64).numpy() for x in ins]
        total = sum(ref)
        close(f"allreduce Sum {dtype}", hvd.allreduce(ins[r], op=hvd.Sum, name=f"s{i}"), total)
        if dtype.is_floating_point:
            close(f"allreduce Average {dtype}", hvd.allreduce(ins[r], name=f"a{i}"),
                  total / n, 1e-2 if dtype is torch.bfloat16 else 1e-3)
        close(f"allreduce Max {dtype}", hvd.allreduce(ins[r], op=hvd.Max),
              np.maximum.reduce(ref))
        t = ins[r].clone()
        ptr = t.data_ptr()
        out = hvd.allreduce_(t, op=hvd.Sum, name=f"ip{i}")
        check(f"allreduce_ in place {dtype}", out is t and t.data_ptr() == ptr)
        close(f"allreduce_ value {dtype}", t, total)
        h = hvd.allreduce_async(ins[r], op=hvd.Min, name=f"as{i}")
        res = hvd.synchronize(h)
        check(f"poll after synchronize {dtype}", hvd.poll(h))
        close(f"allreduce_async Min {dtype}", res, np.minimum.reduce(ref))
        check(f"allreduce dtype {dtype}", res.dtype == dtype and out.dtype == dtype)
        close(f"input untouched {dtype}", ins[r], ref[r])
        # broadcast and allgather: any dtype moves as bytes
        root = i % n
        close(f"broadcast {dtype}", hvd.broadcast(ins[r], root, name=f"b{i}"), ref[root])
        t = ins[r].clone()
        hvd.broadcast_(t, root)
        close(f"broadcast_ {dtype}", t, ref[root])
        rows = [data(i, s, (s + 1, 2), dtype) for s in range(n)]
        close(f"allgather {dtype}", hvd.allgather(rows[r], name=f"g{i}"),
              np.concatenate([x.to(torch.float64).numpy() for x in rows]))
        big = [data(i, s, (2 * n, 2)) for s in range(n)]
        big = [(x.abs() if dtype is torch.uint8 else x).to(dtype) for x in big]
        red = sum(x.to(torch.float64).numpy() for x in big)
        close(f"reducescatter {dtype}", hvd.reducescatter(big[r], op=hvd.Sum, name=f"rs{i}"),
              red[2 * r:2 * r + 2])
        outs = hvd.grouped_reducescatter([big[r], big[r]], op=hvd.Sum)
        close(f"grouped_reducescatter {dtype}", outs[1], red[2 * r:2 * r + 2])
        outs = hvd.grouped_allgather([rows[r], big[r]])
        close(f"grouped_allgather {dtype}", outs[0],
              np.concatenate([x.to(torch.float64).numpy() for x in rows]))
    covered.append("collectives-dtypes")
    # Horovod's positional order and the deprecated average=
    x = data(50, r, (4,))
    want_sum = sum(data(50, s, (4,)).numpy() for s in range(n))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        close("positional allreduce(t, False, name)", hvd.allreduce(x, False, "pos.sum"), want_sum)
        close("allreduce(average=True)", hvd.allreduce(x, average=True), want_sum / n, 1e-12)
        close("allreduce_async_(t, False)", hvd.synchronize(hvd.allreduce_async_(x.clone(), False)),
              want_sum)
    check("average= warns", any(issubclass(w.category, DeprecationWarning) for w in caught))
    try:
        hvd.allreduce(x, average=True, op=hvd.Sum)
        check("average and op together", False, "no ValueError")
    except ValueError:
        check("average and op together", True)
    try:
        hvd.allreduce(x, op=hvd.Adasum)
        check("Adasum", False, "no NotImplementedError")
    except NotImplementedError as exc:
        check("Adasum message", "Adasum" in str(exc))
    covered.append("horovod-arguments")
    # alltoall: even split and explicit splits
    t = torch.arange(n * 2, dtype=torch.float32) + 100 * r
    out = hvd.alltoall(t, name="a2a.even")
    want = np.concatenate([(np.arange(n * 2) + 100 * s)[2 * r:2 * r + 2] for s in range(n)])
    close("alltoall even", out, want.astype(np.float32))
    splits = [(r + d) % 3 + 1 for d in range(n)]
    t = torch.arange(sum(splits), dtype=torch.int64) + 1000 * r
    out, recv = hvd.alltoall(t, splits=splits, name="a2a.splits")
    want_parts, want_recv = [], []
    for s in range(n):
        sp = [(s + d) % 3 + 1 for d in range(n)]
        off = sum(sp[:r])
        want_parts.append(np.arange(off, off + sp[r]) + 1000 * s)
        want_recv.append(sp[r])
    close("alltoall splits", out, np.concatenate(want_parts))
    check("alltoall received splits", recv.tolist() == want_recv and recv.dtype == torch.int32,
          f"{recv} want {want_recv}")
    out2, recv2 = hvd.synchronize(hvd.alltoall_async(t, splits=torch.tensor(splits)))
    check("alltoall_async returns (output, splits)", torch.equal(out2, out) and
          recv2.dtype == torch.int64)
    # reducescatter
    x = data(60, r, (2 * n + 1, 3))
    full = sum(data(60, s, (2 * n + 1, 3)).numpy() for s in range(n))
    rows = [(2 * n + 1) // n + (1 if q < (2 * n + 1) % n else 0) for q in range(n)]
    lo = sum(rows[:r])
    close("reducescatter Sum", hvd.reducescatter(x, op=hvd.Sum), full[lo:lo + rows[r]])
    close("reducescatter Average", hvd.synchronize(hvd.reducescatter_async(x)),
          full[lo:lo + rows[r]] / n, 1e-12)
    covered.append("alltoall-reducescatter")
    # objects
    obj = hvd.broadcast_object({"rank": r, "list": [1, 2, r]}, root_rank=n - 1)
    check("broadcast_object", obj == {"rank": n - 1, "list": [1, 2, n - 1]}, str(obj))
    got = hvd.allgather_object(("r", r, "x" * r))
    check("allgather_object", got == [("r", s, "x" * s) for s in range(n)], str(got))
    # objects of different types on different ranks (Horovod's checkpoint idiom): one name
    obj = hvd.broadcast_object({"step": 7} if r == 0 else None, 0)
    check("broadcast_object from a dict to None", obj == {"step": 7}, str(obj))
    got = hvd.allgather_object(r if r % 2 else str(r))
    check("allgather_object of mixed types", got == [s if s % 2 else str(s) for s in range(n)],
          str(got))
    covered.append("objects")
    # grouped (ENGINE)
    if has("grouped_allreduce_async"):
        xs = [data(70 + k, r, (k + 1, 2)) for k in range(3)]
        outs = hvd.grouped_allreduce(xs, op=hvd.Sum, name="grp")
        for k in range(3):
            close(f"grouped_allreduce {k}", outs[k],
                  sum(data(70 + k, s, (k + 1, 2)).numpy() for s in range(n)))
        covered.append("grouped")
    if "prescale_factor" in collx.allreduce.__code__.co_varnames:
        close("prescale/postscale", hvd.allreduce(x, op=hvd.Sum, prescale_factor=0.5,
                                                  postscale_factor=3.0), full * 1.5, 1e-12)
        covered.append("prescale")
    else:
        missing.append("allreduce(prescale_factor=, postscale_factor=)")


# ---- autograd --------------------------------------------------------------------------

def gradients() -> None:
    n, r = hvd.size(), hvd.rank()
    w = [data(80, s, (4, 3)).numpy() for s in range(n)]

    def run(f, x: torch.Tensor, wr: np.ndarray) -> torch.Tensor:
        x = x.clone().requires_grad_(True)
        y = f(x)
        (y * torch.from_numpy(wr)).sum().backward()
        return x.grad

    g = run(lambda x: hvd.allreduce(x, op=hvd.Sum), data(81, r, (4, 3)), w[r])
    close("grad allreduce Sum", g, sum(w), 1e-12)
    g = run(lambda x: hvd.allreduce(x), data(81, r, (4, 3)), w[r])
    close("grad allreduce Average", g, sum(w) / n, 1e-12)
    root = n - 1
    g = run(lambda x: hvd.broadcast(x, root), data(82, r, (4, 3)), w[r])
    close("grad broadcast", g, sum(w) / n if r == root else np.zeros((4, 3)), 1e-12)
    rows = [s + 1 for s in range(n)]
    total = sum(rows)
    wg = [data(83, s, (total, 2)).numpy() for s in range(n)]
    g = run(lambda x: hvd.allgather(x), data(84, r, (rows[r], 2)), wg[r])
    lo = sum(rows[:r])
    close("grad allgather", g, (sum(wg) / n)[lo:lo + rows[r]], 1e-12)
    splits = [[(s + d) % 3 + 1 for d in range(n)] for s in range(n)]
    recv_rows = sum(splits[s][r] for s in range(n))
    wa = [data(85, d, (sum(splits[s][d] for s in range(n)), 2)).numpy() for d in range(n)]
    g = run(lambda x: hvd.alltoall(x, splits=splits[r])[0],
            data(86, r, (sum(splits[r]), 2)), wa[r])
    want = np.concatenate([wa[d][sum(splits[s][d] for s in range(r)):][:splits[r][d]]
                           for d in range(n)])
    close("grad alltoall", g, want, 1e-12)
    check("alltoall recv rows", recv_rows == wa[r].shape[0])
    nrows = 2 * n
    wr_ = [data(87, s, (2, 2)).numpy() for s in range(n)]
    g = run(lambda x: hvd.reducescatter(x), data(88, r, (nrows, 2)), wr_[r])
    close("grad reducescatter Average", g, np.concatenate(wr_) / n, 1e-12)
    covered.append("autograd")


# ---- model helpers ---------------------------------------------------------------------

def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, 3)).double()


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def batch(step: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return (torch.randn(rows, 6, generator=g, dtype=torch.float64),
            torch.randn(rows, 3, generator=g, dtype=torch.float64))


def same_everywhere(what: str, vec: torch.Tensor) -> None:
    rows = hvd.allgather(vec.reshape(1, -1))
    check(what, all(torch.equal(rows[s], rows[0]) for s in range(hvd.size())),
          "parameters differ between ranks")


def training() -> None:
    n, r, B = hvd.size(), hvd.rank(), 4
    for passes in (1, 2):
        dist, ref = mlp(), mlp()
        opt = hvd.DistributedOptimizer(torch.optim.SGD(dist.parameters(), lr=0.1, momentum=0.9),
                                       named_parameters=dist.named_parameters(),
                                       backward_passes_per_step=passes)
        check("DistributedOptimizer is an SGD", isinstance(opt, torch.optim.SGD))
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
        for step in range(4):
            opt.zero_grad()
            ref_opt.zero_grad()
            for k in range(passes):
                x, y = batch(10 * step + k, n * B)
                torch.nn.functional.mse_loss(dist(x[r * B:(r + 1) * B]), y[r * B:(r + 1) * B]
                                             ).backward()
                torch.nn.functional.mse_loss(ref(x), y).backward()
            opt.step()
            ref_opt.step()
            same_everywhere(f"bitwise identical (passes={passes}) step {step}", flat(dist))
            err = float((flat(dist) - flat(ref)).abs().max())
            check(f"equals single-process (passes={passes}) step {step}", err <= TOL,
                  f"max |diff| {err} > {TOL}")
    # a longer loop with no other collective in between: the engine freezes the order
    # (COLLX_FREEZE_AFTER, default 3) and the frozen steps must stay exact
    from collx import api as _api
    eng = _api._engine
    before = dict(getattr(eng, "stats", {}))
    dist, ref = mlp(), mlp()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(dist.parameters(), lr=0.1, momentum=0.9),
                                   named_parameters=dist.named_parameters())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for step in range(10):
        opt.zero_grad()
        ref_opt.zero_grad()
        x, y = batch(500 + step, n * B)
        torch.nn.functional.mse_loss(dist(x[r * B:(r + 1) * B]), y[r * B:(r + 1) * B]).backward()
        torch.nn.functional.mse_loss(ref(x), y).backward()
        opt.step()
        ref_opt.step()
    after = getattr(eng, "stats", {})
    if n > 1 and int(os.environ.get("COLLX_FREEZE_AFTER", "3")) > 0:
        frozen = after.get("frozen_groups", 0) - before.get("frozen_groups", 0)
        check("training loop runs frozen", frozen > 0, f"stats {after}")
    same_everywhere("bitwise identical after frozen steps", flat(dist))
    err = float((flat(dist) - flat(ref)).abs().max())
    check("frozen steps equal single-process", err <= TOL, f"max |diff| {err} > {TOL}")
    covered.append("optimizer-equivalence")
    # synchronize() + clipping + skip_synchronize()
    dist, ref = mlp(), mlp()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(dist.parameters(), lr=0.5),
                                   named_parameters=dist.named_parameters())
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for step in range(3):
        x, y = batch(100 + step, n * B)
        opt.zero_grad()
        ref_opt.zero_grad()
        torch.nn.functional.mse_loss(dist(x[r * B:(r + 1) * B]), y[r * B:(r + 1) * B]).backward()
        torch.nn.functional.mse_loss(ref(x), y).backward()
        opt.synchronize()
        torch.nn.utils.clip_grad_norm_(dist.parameters(), 0.05)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
        with opt.skip_synchronize():
            opt.step()
        ref_opt.step()
        same_everywhere(f"bitwise identical (clip) step {step}", flat(dist))
        err = float((flat(dist) - flat(ref)).abs().max())
        check(f"clip equals single-process step {step}", err <= TOL, f"max |diff| {err}")
    covered.append("synchronize-skip")
    # broadcast_parameters / broadcast_optimizer_state from rank-specific starting points
    model = mlp(seed=r)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    check("broadcast_parameters", torch.equal(flat(model), flat(mlp(seed=0))))
    adam = torch.optim.Adam(model.parameters(), lr=0.01 * (r + 1))
    if r == 0:
        model(batch(200, 4)[0]).sum().backward()
        adam.step()
    hvd.broadcast_optimizer_state(adam, root_rank=0)
    state = adam.state_dict()
    check("broadcast_optimizer_state lr", state["param_groups"][0]["lr"] == 0.01)
    exp_avg = torch.cat([state["state"][k]["exp_avg"].reshape(-1) for k in sorted(state["state"])])
    check("broadcast_optimizer_state buffers", len(state["state"]) == 4)
    same_everywhere("optimizer state identical", exp_avg)
    covered.append("broadcast-state")


def optimizer_options() -> None:
    """groups=, gradient_predivide_factor=, sparse gradients (allgathered, and as dense):
    equal to single-process training; int8: bitwise identical on every rank and close."""
    n, r, B = hvd.size(), hvd.rank(), 4
    for label, kw in (("groups=2", {"groups": 2}), ("predivide=2", {"gradient_predivide_factor": 2.0}),
                      ("groups=list", None)):
        dist, ref = mlp(), mlp()
        if kw is None:
            layers = list(dist.children())
            kw = {"groups": [[layers[0].weight, layers[2].bias]]}
        opt = hvd.DistributedOptimizer(torch.optim.SGD(dist.parameters(), lr=0.1),
                                       named_parameters=dist.named_parameters(), **kw)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        for step in range(3):
            x, y = batch(300 + step, n * B)
            opt.zero_grad()
            ref_opt.zero_grad()
            torch.nn.functional.mse_loss(dist(x[r * B:(r + 1) * B]), y[r * B:(r + 1) * B]).backward()
            torch.nn.functional.mse_loss(ref(x), y).backward()
            opt.step()
            ref_opt.step()
            same_everywhere(f"bitwise identical ({label}) step {step}", flat(dist))
            err = float((flat(dist) - flat(ref)).abs().max())
            check(f"{label} equals single-process step {step}", err <= TOL, f"max |diff| {err}")
    covered.append("groups-predivide")
    for dense in (False, True):
        torch.manual_seed(3)
        emb = torch.nn.Embedding(10, 3, sparse=True).double()
        torch.manual_seed(3)
        ref = torch.nn.Embedding(10, 3, sparse=True).double()
        opt = hvd.DistributedOptimizer(torch.optim.SGD(emb.parameters(), lr=0.5),
                                       named_parameters=emb.named_parameters(),
                                       sparse_as_dense=dense)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
        for step in range(3):
            idx = torch.tensor([[(step + 3 * s + k) % 10 for k in range(2)] for s in range(n)])
            opt.zero_grad()
            ref_opt.zero_grad()
            emb(idx[r]).pow(2).sum().div(n).backward()
            ref(idx).pow(2).sum().div(n * n).backward()
            opt.step()
            ref_opt.step()
            same_everywhere(f"bitwise identical (sparse dense={dense}) step {step}",
                            emb.weight.detach().reshape(-1))
            err = float((emb.weight - ref.weight).detach().abs().max())
            check(f"sparse dense={dense} equals single-process step {step}", err <= TOL,
                  f"max |diff| {err}")
    covered.append("sparse")
    if has("quantized_allreduce_async"):
        dist, ref = mlp(), mlp()
        dist, ref = dist.float(), ref.float()
        opt = hvd.DistributedOptimizer(torch.optim.SGD(dist.parameters(), lr=0.1),
                                       named_parameters=dist.named_parameters(),
                                       compression=hvd.Compression.int8,
                                       gradient_predivide_factor=2.0)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        for step in range(3):
            x, y = batch(400 + step, n * B)
            x, y = x.float(), y.float()
            opt.zero_grad()
            ref_opt.zero_grad()
            torch.nn.functional.mse_loss(dist(x[r * B:(r + 1) * B]), y[r * B:(r + 1) * B]).backward()
            torch.nn.functional.mse_loss(ref(x), y).backward()
            opt.step()
            ref_opt.step()
            same_everywhere(f"bitwise identical (int8) step {step}", flat(dist))
            err = float((flat(dist) - flat(ref)).abs().max())
            # lr 0.1 times the int8 error of gradients of magnitude <~ 2: a few 1e-3
            check(f"int8 close to single-process step {step}", err <= 2e-2, f"max |diff| {err}")
        check("int8 keeps residuals", len(opt._residuals) == (4 if n > 1 else 0))
        covered.append("int8-error-feedback")


def sync_batch_norm() -> None:
    """hvd.SyncBatchNorm on each rank's slice == BatchNorm2d on the concatenated batch:
    output, input and parameter gradients (summed over ranks), running statistics."""
    n, r, B = hvd.size(), hvd.rank(), 3
    g = torch.Generator().manual_seed(7)
    x = torch.randn(n * B, 4, 5, 5, generator=g, dtype=torch.float64)
    w = torch.randn(n * B, 4, 5, 5, generator=g, dtype=torch.float64)
    ref = torch.nn.BatchNorm2d(4).double()
    sbn = hvd.SyncBatchNorm(4).double()
    with torch.no_grad():
        for m in (ref, sbn):
            m.weight.copy_(torch.linspace(0.5, 2.0, 4))
            m.bias.copy_(torch.linspace(-1.0, 1.0, 4))
    xr = x[r * B:(r + 1) * B].clone().requires_grad_(True)
    xf = x.clone().requires_grad_(True)
    for _ in range(2):
        xr.grad = xf.grad = None
        sbn.zero_grad()
        ref.zero_grad()
        out = sbn(xr)
        (out * w[r * B:(r + 1) * B]).sum().backward()
        out_ref = ref(xf)
        (out_ref * w).sum().backward()
        close("SyncBatchNorm output", out, out_ref[r * B:(r + 1) * B].detach().numpy(), 1e-12)
        close("SyncBatchNorm input grad", xr.grad, xf.grad[r * B:(r + 1) * B].numpy(), 1e-10)
        wgrad = hvd.allreduce(sbn.weight.grad, op=hvd.Sum)
        close("SyncBatchNorm weight grad", wgrad, ref.weight.grad.numpy(), 1e-10)
        close("SyncBatchNorm running_var", sbn.running_var, ref.running_var.numpy(), 1e-12)
        close("SyncBatchNorm running_mean", sbn.running_mean, ref.running_mean.numpy(), 1e-12)
    sbn.eval()
    ref.eval()
    close("SyncBatchNorm eval", sbn(xr), ref(xf)[r * B:(r + 1) * B].detach().numpy(), 1e-12)
    covered.append("sync-batch-norm")


def process_sets_and_join() -> None:
    n, r = hvd.size(), hvd.rank()
    if n >= 2 and has("add_process_set"):
        ps = hvd.add_process_set([0, n - 1])
        check("process set included", ps.included() == (r in (0, n - 1)))
        if ps.included():
            x = data(500, r, (3,))
            close("allreduce in process set", hvd.allreduce(x, op=hvd.Sum, process_set=ps),
                  data(500, 0, (3,)).numpy() + data(500, n - 1, (3,)).numpy())
            got = hvd.allgather(torch.tensor([[float(r)]]), process_set=ps)
            close("allgather in process set", got, np.array([[0.0], [float(n - 1)]]))
            obj = hvd.broadcast_object(("from", r), 0, process_set=ps)
            check("broadcast_object in process set", obj == ("from", 0), str(obj))
        # DistributedOptimizer over the set: members average among themselves (equal to
        # one process on the members' concatenated batch); the others step alone
        B, members = 4, [0, n - 1]
        dist, ref = mlp(), mlp()
        opt = hvd.DistributedOptimizer(torch.optim.SGD(dist.parameters(), lr=0.1),
                                       named_parameters=dist.named_parameters(), process_set=ps)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
        for step in range(2):
            x, y = batch(600 + step, n * B)
            mine = slice(r * B, (r + 1) * B)
            rows = torch.cat([torch.arange(m * B, (m + 1) * B) for m in members]) \
                if ps.included() else torch.arange(r * B, (r + 1) * B)
            opt.zero_grad()
            ref_opt.zero_grad()
            torch.nn.functional.mse_loss(dist(x[mine]), y[mine]).backward()
            torch.nn.functional.mse_loss(ref(x[rows]), y[rows]).backward()
            opt.step()
            ref_opt.step()
            err = float((flat(dist) - flat(ref)).abs().max())
            check(f"process-set optimizer step {step}", err <= TOL, f"max |diff| {err}")
        hvd.remove_process_set(ps)
        covered.append("process-sets")
    if has("join"):
        # rank 0 runs two more allreduces than the others; the joined ranks add zeros
        if r == 0:
            for k in range(3):
                got = hvd.allreduce(torch.ones(2), op=hvd.Sum, name=f"uneven.{k}")
                close(f"allreduce with joined ranks {k}", got, np.full(2, float(n if k == 0 else 1)))
        else:
            hvd.allreduce(torch.ones(2), op=hvd.Sum, name="uneven.0")
        last = hvd.join()
        check("join returns the last rank", last == (0 if n > 1 else 0), f"got {last}")
        covered.append("join")


def init_cycles() -> None:
    for k in range(3):
        hvd.shutdown()
        check(f"shutdown {k}", not hvd.is_initialized())
        hvd.init()
        close(f"after re-init {k}", hvd.allreduce(torch.ones(3), op=hvd.Sum, name="again"),
              np.full(3, float(hvd.size())))
    if hvd.size() > 1:           # Horovod's init(process_sets=[...]) registers them
        hvd.shutdown()
        ps = hvd.ProcessSet([0, 1])
        hvd.init(process_sets=[ps])
        check("init(process_sets=) registers", ps.process_set_id not in (None, 0),
              f"id {ps.process_set_id}")
        if ps.included():
            close("allreduce on init's process set",
                  hvd.allreduce(torch.ones(2), op=hvd.Sum, process_set=ps), np.full(2, 2.0))
    covered.append("init-cycles")


# ---- modes -----------------------------------------------------------------------------

def mode_all() -> None:
    collectives()
    gradients()
    training()
    optimizer_options()
    sync_batch_norm()
    process_sets_and_join()
    init_cycles()


def mode_mismatch() -> None:
    r = hvd.rank()
    try:
        hvd.allreduce(torch.ones(3 if r == 0 else 4), name="bad.tensor")
        check("mismatch raises", False, "no error")
    except RuntimeError as exc:
        check("mismatch names the tensor", "bad.tensor" in str(exc), str(exc))
        check("mismatch is HorovodInternalError", isinstance(exc, hvd.HorovodInternalError))
    covered.append("mismatch")
    hvd.shutdown()
    hvd.init()
    close("works after re-init", hvd.allreduce(torch.ones(2), op=hvd.Sum, name="ok"),
          np.full(2, float(hvd.size())))
    if r == 0:
        t0 = time.monotonic()
        try:
            hvd.allreduce(torch.ones(2), name="lonely.tensor")
            check("missing tensor raises", False, "no error")
        except RuntimeError as exc:
            check("missing tensor names it", "lonely.tensor" in str(exc), str(exc))
            print(f"LONELY {json.dumps({'seconds': time.monotonic() - t0, 'error': str(exc)})}",
                  flush=True)
    else:      # stay in the job, submitting nothing, past rank 0's deadline
        time.sleep(float(os.environ.get("COLLX_TIMEOUT", "5")) + 2.0)
    covered.append("missing-tensor")


def mode_compression(modes: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("train_torch", REPO / "examples" / "train_torch.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    torch.set_num_threads(1)
    for mode in modes:
        args = example.parser().parse_args(["--epochs", "3", "--train-size", "4096", "--test-size", "1024", "--lr", "0.03",
                                       "--compression", mode, "--quiet"])
        res = example.train(args)
        print("RESULT " + json.dumps(res), flush=True)
        covered.append(mode)


def main() -> None:
    mode = sys.argv[1]
    hvd.init()
    if mode == "all":
        mode_all()
    elif mode == "mismatch":
        mode_mismatch()
    elif mode == "compression":
        mode_compression(sys.argv[2:])
    else:
        raise SystemExit(f"unknown mode {mode}")
    hvd.shutdown()
    print(f"OK {json.dumps({'checks': checks, 'failures': failures, 'covered': covered, 'missing': missing})}",
          flush=True)
    sys.stdout.flush()
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
