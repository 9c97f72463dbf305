"""Tier 4: the *_async forms on real ranks (tests/mp/async_worker.py, mode ``mixed``):
every collective in flight at once; a long mix of sync and async calls whose data depends
on the call's position, so that program order must hold on every rank; 40 allreduces in
flight waited for in a different order on each rank; poll() turning True by itself;
synchronize(timeout=) raising CollxTimeout while a peer is late without cancelling the
operation; an async call that fails surfacing from synchronize, and the next failing fast.

Also the MPI isend/irecv idiom between two ranks (send_async then recv_async on both).
"""
from __future__ import annotations

import json

import pytest

from mp.launch import assert_all_ok, clean_env, collxrun

pytestmark = pytest.mark.timeout(120)

COVERED = {f"{k}_async": 1 for k in ["allreduce", "broadcast", "allgather", "reducescatter",
                                       "alltoall", "reduce", "gather", "scatter", "barrier",
                                       "allreduce_max"]}
COVERED.update({"send_async/recv_async": 1, "program-order": 1, "many-in-flight": 1,
                "poll": 1, "synchronize-timeout": 1, "failing-async": 1})


def _env(transport: str) -> dict[str, str]:
    extra = {"COLLX_TIMEOUT": "30"}
    if transport == "tcp":
        extra["COLLX_TRANSPORT"] = "tcp"
    return clean_env(**extra)


@pytest.mark.parametrize("nranks,transport", [(3, "shm"), (3, "tcp"), (1, "shm")])
def test_async_collectives(nranks: int, transport: str) -> None:
    job = collxrun(nranks, "async_worker.py", "mixed", env=_env(transport), timeout=100)
    finals = {r: json.loads(v) for r, v in assert_all_ok(job, nranks).items()}
    want = dict(COVERED)
    if nranks == 1:      # no peers: no p2p, no late or missing rank
        for name in ("send_async/recv_async", "synchronize-timeout", "failing-async"):
            del want[name]
    for r, info in finals.items():
        assert info["covered"] == want, f"rank {r}: {info['covered']}"
        assert info["checks"] >= 174, info     # 10 + 120 + 40 + 4 checks at least


@pytest.mark.parametrize("transport", [
    pytest.param("shm", marks=pytest.mark.xfail(strict=True, reason=(
        "async calls run one at a time on the engine's single worker, and a shm send "
        "larger than COLLX_SHM_EAGER_BYTES waits for the peer to read it: both ranks sit "
        "in send_async and recv_async never starts (CollxTimeout)"))),
    "tcp",
])
def test_send_async_recv_async_exchange(transport: str) -> None:
    """Both ranks send_async 4 MiB to the other, then recv_async, then synchronize."""
    job = collxrun(2, "async_worker.py", "exchange", str(4 << 20), env=_env(transport),
                   timeout=40)
    assert job.returncode == 0, job.report()
    for r in (0, 1):
        lines = job.lines(r, "EXCHANGE")
        assert lines, job.report()
        info = json.loads(lines[0])
        assert info["type"] is None, f"rank {r}: {info}"
