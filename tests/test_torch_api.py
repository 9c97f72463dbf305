"""collx.torch in one process (size 1): Horovod's names, argument order and errors; the
tensor <-> numpy plumbing (no copies, in-place writes, every dtype, the bfloat16 detours);
compression; autograd wiring; DistributedOptimizer construction; init/shutdown/init.
Multi-rank behaviour is in tests/test_torch_mp.py."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from torch_support import require_torch

torch = require_torch()

import collx
import collx.torch as hvd
from collx.torch import mpi_ops

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def job():
    hvd.init()
    yield
    hvd.shutdown()


def test_horovod_names_exist() -> None:
    names = ["init", "shutdown", "is_initialized", "size", "rank", "local_size", "local_rank",
             "cross_size", "cross_rank", "allreduce", "allreduce_", "allreduce_async",
             "allreduce_async_", "grouped_allreduce", "grouped_allreduce_",
             "grouped_allreduce_async", "grouped_allreduce_async_", "allgather",
             "allgather_async", "grouped_allgather", "broadcast", "broadcast_",
             "broadcast_async", "broadcast_async_", "alltoall", "alltoall_async",
             "reducescatter", "reducescatter_async", "grouped_reducescatter",
             "sparse_allreduce_async", "poll", "synchronize", "join", "barrier",
             "DistributedOptimizer", "broadcast_parameters", "broadcast_optimizer_state",
             "broadcast_object", "allgather_object", "Compression", "Average", "Sum", "Adasum",
             "Min", "Max", "Product", "mpi_built", "mpi_enabled", "gloo_built", "gloo_enabled",
             "nccl_built", "ddl_built", "ccl_built", "cuda_built", "rocm_built",
             "mpi_threads_supported", "is_homogeneous", "HorovodInternalError",
             "start_timeline", "stop_timeline", "ProcessSet", "global_process_set",
             "add_process_set", "remove_process_set", "SyncBatchNorm"]
    assert [n for n in names if not hasattr(hvd, n)] == []
    assert not hvd.mpi_built() and not hvd.nccl_built() and not hvd.cuda_built()
    assert hvd.is_homogeneous() and hvd.size() == 1 and hvd.rank() == 0
    assert issubclass(hvd.HorovodInternalError, RuntimeError)
    assert collx.is_negotiated()                      # collx.torch runs Horovod's engine


def test_positional_and_deprecated_arguments() -> None:
    t = torch.arange(6, dtype=torch.float32)
    with pytest.warns(DeprecationWarning):
        assert torch.equal(hvd.allreduce(t, False, "p"), t)          # (tensor, average, name)
    with pytest.warns(DeprecationWarning):
        hvd.allreduce(t, average=True)
    with pytest.raises(ValueError, match="supersedes"):
        hvd.allreduce(t, average=True, op=hvd.Sum)
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd.allreduce(t, op=hvd.Adasum)
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd.DistributedOptimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1),
                                 op=hvd.Adasum)
    out = hvd.allreduce(t, None, "q", hvd.Compression.fp16, hvd.Sum, 2.0, 0.5)
    assert out.dtype == torch.float32 and torch.equal(out, t)      # pre 2 * post 0.5
    assert hvd.broadcast(t, 0, "b").data_ptr() != t.data_ptr()


def test_local_argument_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="torch.Tensor"):
        hvd.allreduce(np.zeros(3))
    with pytest.raises(ValueError, match="contiguous"):
        hvd.allreduce_(torch.zeros(4, 4).t())
    with pytest.raises(ValueError, match="GPU build"):
        hvd.allreduce(torch.zeros(2, device="meta"))
    with pytest.raises(ValueError, match="no reduction for dtype torch.bool"):
        hvd.allreduce(torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="splits"):
        hvd.alltoall(torch.zeros(3, 2), splits=[2])
    with pytest.raises(ValueError, match="named_parameters"):
        p = torch.zeros(1, requires_grad=True)
        hvd.DistributedOptimizer(torch.optim.SGD([p], lr=1), named_parameters=[p])
    with pytest.raises(ValueError, match="unique"):
        a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        hvd.DistributedOptimizer(torch.optim.SGD([a, b], lr=1),
                                 named_parameters=[("w", a), ("w", b)])
    with pytest.raises(ValueError, match="not in it"):
        a, b = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        hvd.DistributedOptimizer(torch.optim.SGD([a, b], lr=1), named_parameters=[("a", a)])
    with pytest.raises(ValueError, match="gradient_predivide_factor"):
        hvd.DistributedOptimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1),
                                 op=hvd.Sum, gradient_predivide_factor=2.0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32,
                                   torch.float64, torch.int8, torch.uint8, torch.int16,
                                   torch.int32, torch.int64])
def test_dtypes_round_trip(dtype: torch.dtype) -> None:
    t = torch.arange(12).reshape(3, 4).to(dtype)
    for out in (hvd.allreduce(t, op=hvd.Sum), hvd.broadcast(t, 0), hvd.allgather(t),
                hvd.reducescatter(t, op=hvd.Sum), hvd.alltoall(t)):
        assert out.dtype == dtype and torch.equal(out, t)
    x = t.clone()
    ptr = x.data_ptr()
    assert hvd.allreduce_(x, op=hvd.Max) is x and x.data_ptr() == ptr and torch.equal(x, t)
    assert hvd.synchronize(hvd.broadcast_async_(x, 0)) is x


def test_views_share_memory() -> None:
    """Contiguous CPU tensors reach collx as views: allreduce_ writes into the storage."""
    t = torch.ones(5)
    view = mpi_ops._reduce_view(t, "x", None)[0]
    assert np.shares_memory(view, t.numpy())
    b = torch.ones(4, dtype=torch.bfloat16)
    assert np.shares_memory(mpi_ops._view(b), b.view(torch.int16).numpy())


def test_bfloat16_without_ml_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The float32 detour gives the same result as the native bfloat16 kernel here."""
    t = (torch.arange(10) * 0.37).to(torch.bfloat16)
    native = hvd.allreduce(t, op=hvd.Sum)
    monkeypatch.setattr(mpi_ops, "_BF16", None)
    x = t.clone()
    hvd.allreduce_(x, op=hvd.Sum)
    assert torch.equal(hvd.allreduce(t, op=hvd.Sum), native) and torch.equal(x, native)


def test_compression_round_trips() -> None:
    t = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for comp, wire in ((hvd.Compression.fp16, torch.float16), (hvd.Compression.bf16, torch.bfloat16)):
        c, ctx = comp.compress(t)
        assert c.dtype == wire and comp.decompress(c, ctx).dtype == torch.float64
        ints = torch.arange(3)
        assert comp.compress(ints)[0] is ints          # non-float tensors pass unchanged
    assert hvd.Compression.none.compress(t)[0] is t
    out = hvd.allreduce(t, compression=hvd.Compression.int8)
    assert out.dtype == torch.float64
    assert float((out - t).abs().max()) <= 1.02 * 3 / 127     # one rank: one block, max 3
    scaled = hvd.allreduce(t, compression=hvd.Compression.int8, prescale_factor=2.0,
                           postscale_factor=0.25)
    assert float((scaled - t / 2).abs().max()) <= 1.02 * 3 / 127


def test_autograd_single_rank() -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64)
    for f in (lambda v: hvd.allreduce(v), lambda v: hvd.allreduce(v, op=hvd.Sum),
              lambda v: hvd.allgather(v), lambda v: hvd.broadcast(v, 0),
              lambda v: hvd.alltoall(v), lambda v: hvd.alltoall(v, splits=[4])[0],
              lambda v: hvd.reducescatter(v),
              lambda v: hvd.grouped_allreduce([v, v * 2])[1] / 2):
        x.grad = None
        (f(x) * w).sum().backward()
        assert torch.allclose(x.grad, w), f
    with torch.no_grad():
        assert not hvd.allreduce(x).requires_grad


def test_sparse_allreduce_single_rank() -> None:
    s = torch.sparse_coo_tensor([[0, 2], [1, 0]], [3.0, 4.0], (3, 2), check_invariants=True)
    h = hvd.sparse_allreduce_async(s, "sp", hvd.Average)
    out = hvd.synchronize(h)
    assert hvd.poll(h) and torch.equal(out.to_dense(), s.to_dense())
    assert hvd.synchronize(h) is out                  # a finished handle keeps its result


def test_distributed_optimizer_keeps_class_and_state() -> None:
    model = torch.nn.Linear(3, 2)
    base = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(2, 3)).sum().backward()
    base.step()
    opt = hvd.DistributedOptimizer(base, named_parameters=model.named_parameters())
    assert isinstance(opt, torch.optim.Adam) and type(opt).__name__ == "Adam"
    assert opt.state is base.state and opt.param_groups[0]["lr"] == 0.01
    opt.zero_grad()
    model(torch.randn(2, 3)).sum().backward()
    opt.synchronize()
    with opt.skip_synchronize():
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 3)).sum().backward()
        opt.step()


def test_objects_and_state_single_rank() -> None:
    assert hvd.broadcast_object({"a": [1, 2]}, 0) == {"a": [1, 2]}
    assert hvd.allgather_object("x") == ["x"]
    model = torch.nn.Linear(2, 2)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_parameters(list(model.named_parameters()), root_rank=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    with pytest.raises(ValueError, match="invalid params"):
        hvd.broadcast_parameters(3, 0)


def test_init_shutdown_init() -> None:
    hvd.init()                                         # idempotent while initialized
    for _ in range(3):
        hvd.shutdown()
        assert not hvd.is_initialized()
        hvd.init()
        assert torch.equal(hvd.allreduce(torch.ones(2)), torch.ones(2))


def test_sync_batch_norm_single_rank_is_batch_norm() -> None:
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    ref, sbn = torch.nn.BatchNorm1d(3).double(), hvd.SyncBatchNorm(3).double()
    assert torch.allclose(sbn(x), ref(x)) and torch.allclose(sbn.running_var, ref.running_var)
    with pytest.raises(ValueError, match="2D"):
        sbn(torch.zeros(3))


def test_examples_differ_only_in_the_import() -> None:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mine = open(os.path.join(here, "examples", "train_torch.py")).read().splitlines()
    theirs = open(os.path.join(here, "examples", "train_horovod.py")).read().splitlines()
    diff = [(a, b) for a, b in zip(mine, theirs) if a != b]
    assert len(mine) == len(theirs)
    assert diff == [("import collx.torch as hvd", "import horovod.torch as hvd")]
