"""Tier 4: collx.torch on real ranks (tests/mp/torch_worker.py) at 1, 2 and 4 ranks.

* ``all``: every collective on tensors of every dtype against numpy, Horovod's positional
  and deprecated arguments, gradients of allreduce / allgather / broadcast / alltoall /
  reducescatter against numpy, object and state broadcasts, process sets (collectives,
  DistributedOptimizer over a set, init(process_sets=)), join; and
  DistributedOptimizer: after every step the parameters are bitwise identical on every
  rank, and N steps equal N single-process steps on the concatenated batch within
  TOL = 1e-12 (float64 model) — with backward_passes_per_step 1 and 2, groups=, a
  gradient_predivide_factor, synchronize()+skip_synchronize() with clipping, sparse
  gradients (allgathered and as dense); int8 with error feedback stays bitwise identical
  across ranks and within 2e-2 of the exact run; SyncBatchNorm on each rank's slice equals
  BatchNorm on the concatenated batch (outputs, gradients, running statistics); then
  shutdown/init three times.
* ``mismatch``: a tensor with different shapes on different ranks raises a RuntimeError
  naming it on every rank; a tensor only rank 0 submits is reported by name (and the
  missing rank) after COLLX_STALL_WARNING and fails there by name after COLLX_TIMEOUT
  (never a hang).
* ``compression``: examples/train_torch.py trained with every compression mode reaches
  the same accuracy band as without compression.
* the example as a script (a Horovod script but for its import) on 1, 2 and 4 ranks.
"""
from __future__ import annotations

import json

import pytest

from mp.launch import REPO, assert_all_ok, clean_env, collxrun

from torch_support import require_torch

require_torch()

pytestmark = pytest.mark.timeout(150)

COVERED_ALL = {"collectives-dtypes", "horovod-arguments", "alltoall-reducescatter", "objects",
               "grouped", "prescale", "autograd", "optimizer-equivalence", "synchronize-skip",
               "broadcast-state", "groups-predivide", "sparse", "int8-error-feedback", "join",
               "sync-batch-norm", "init-cycles"}


def _finals(job, nranks: int) -> dict[int, dict]:
    finals = {r: json.loads(v) for r, v in assert_all_ok(job, nranks).items()}
    for r, info in finals.items():
        assert info["failures"] == 0, f"rank {r}: {info}\n{job.report()}"
        assert not info["missing"], f"rank {r}: collx lacks {info['missing']}"
    return finals


@pytest.mark.parametrize("nranks", [1, 2, 4])
def test_torch_all(nranks: int) -> None:
    job = collxrun(nranks, "torch_worker.py", "all", env=clean_env(COLLX_TIMEOUT="30"),
                   timeout=120)
    want = COVERED_ALL | ({"process-sets"} if nranks > 1 else set())
    for r, info in _finals(job, nranks).items():
        assert set(info["covered"]) == want, f"rank {r}: {info['covered']}"
        assert info["checks"] >= 150, info


def test_torch_mismatch_and_missing_tensor() -> None:
    job = collxrun(2, "torch_worker.py", "mismatch",
                   env=clean_env(COLLX_TIMEOUT="4", COLLX_STALL_WARNING="1"), timeout=60)
    finals = _finals(job, 2)
    assert all(set(f["covered"]) == {"mismatch", "missing-tensor"} for f in finals.values())
    lonely = json.loads(job.lines(0, "LONELY")[0])
    assert "lonely.tensor" in lonely["error"] and lonely["seconds"] < 8.0 * 2, lonely
    stalls = [ln for ln in job.err.get(0, []) if "stalled" in ln and "lonely.tensor" in ln]
    assert stalls and "missing rank(s) [1]" in stalls[0], job.report()


def test_torch_compression_accuracy_band() -> None:
    """Same data, model, seed and steps for each mode (3 epochs of 4096 images on 2 ranks):
    every mode within 2 points of the uncompressed accuracy (~98.6 %), and all >= 95 %."""
    modes = ["none", "fp16", "bf16", "int8"]
    job = collxrun(2, "torch_worker.py", "compression", *modes,
                   env=clean_env(COLLX_TIMEOUT="30"), timeout=120)
    _finals(job, 2)
    results = {json.loads(ln)["compression"]: json.loads(ln) for ln in job.lines(0, "RESULT")}
    assert sorted(results) == sorted(modes), job.report()
    base = results["none"]["test_accuracy"]
    for mode, res in results.items():
        assert res["test_accuracy"] >= 0.95, (mode, res)
        assert abs(res["test_accuracy"] - base) <= 0.02, (mode, res, base)


@pytest.mark.parametrize("nranks", [1, 2, 4])
def test_example_script_unchanged_but_the_import(nranks: int) -> None:
    """examples/train_torch.py (examples/train_horovod.py with only the import changed, see
    test_torch_api) runs as a script under collxrun on 1, 2 and 4 ranks and learns."""
    script = str(REPO / "examples" / "train_torch.py")
    job = collxrun(nranks, script, "--epochs", "2", "--train-size", "4096", "--test-size", "512",
                   "--lr", "0.03", "--json", env=clean_env(COLLX_TIMEOUT="30"), timeout=120)
    assert job.returncode == 0, job.report()
    lines = [ln for ln in job.out.get(0, []) if ln.startswith("{")]
    assert lines, job.report()
    res = json.loads(lines[-1])
    assert res["ranks"] == nranks and res["steps"] == 2 * (4096 // (32 * nranks)), res
    assert res["test_accuracy"] >= 0.9, res
    epochs = [ln for ln in job.out.get(0, []) if ln.startswith("epoch ")]
    assert len(epochs) == 2 and f"ranks {nranks}" in epochs[-1], job.report()
