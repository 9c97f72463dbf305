"""Tier 4: the negotiated engine on real ranks (tests/mp/negotiated_worker.py).

Ranks submit in different orders and still get numpy's results, bitwise identical on every
rank, with and without fusion; mismatched tensors raise MismatchError on every rank naming
tensor and ranks; a tensor one rank never submits gives a stall warning naming the missing
rank and then CollxTimeout; join() with uneven inputs; init/shutdown/init; the timeline;
process sets; a rank leaving early; a rank on the other engine.
"""
from __future__ import annotations

import json

import pytest

import time

from mp.launch import Ranks, assert_all_ok, clean_env, collxrun

pytestmark = pytest.mark.timeout(150)


def _run(np_: int, mode: str, timeout: float = 90, **env: str):
    env.setdefault("COLLX_TIMEOUT", "30")
    return collxrun(np_, "negotiated_worker.py", mode, env=clean_env(**env), timeout=timeout)


@pytest.mark.parametrize("np_,fusion,transport", [
    (2, None, "shm"), (3, None, "shm"), (2, "0", "shm"), (3, "4096", "shm"), (2, None, "tcp"),
    (1, None, "shm"),
])
def test_any_order_fused_exact_identical(np_: int, fusion: str | None, transport: str) -> None:
    env = {}
    if fusion is not None:
        env["COLLX_FUSION_THRESHOLD"] = fusion
    if transport == "tcp":
        env["COLLX_TRANSPORT"] = "tcp"
    job = _run(np_, "order", **env)
    finals = assert_all_ok(job, np_)
    digests = {r: job.lines(r, "DIGEST")[0] for r in range(np_)}
    assert len(set(digests.values())) == 1, f"results differ across ranks: {digests}"
    s = json.loads(job.lines(0, "STATS")[0])
    assert s["cache_hits"] > 0, s                  # rounds 2 and 3 go through the cache
    assert s["bell"] == (np_ > 1), s               # doorbells between the workers
    if fusion == "0":
        assert s["fused_responses"] == 0, s
    else:
        assert s["fused_responses"] > 0 and s["fused_tensors"] > s["fused_responses"], s
    for r, info in finals.items():
        assert json.loads(info)["checks"] >= 3 * 47, info


@pytest.mark.parametrize("np_", [2, 3])
def test_mismatch_named_on_every_rank(np_: int) -> None:
    assert_all_ok(_run(np_, "mismatch"), np_)


def test_stall_warning_then_timeout() -> None:
    job = _run(2, "stall", COLLX_TIMEOUT="4", COLLX_STALL_WARNING="1")
    assert_all_ok(job, 2)
    warnings = [ln for ln in job.err.get(0, []) if "stalled" in ln and "'lonely'" in ln]
    assert warnings, job.report()
    assert "missing rank(s) [1]" in warnings[0], warnings[0]


@pytest.mark.parametrize("np_", [2, 3])
def test_join_uneven_inputs(np_: int) -> None:
    assert_all_ok(_run(np_, "join"), np_)


@pytest.mark.timeout(60)
def test_review_fixes_on_real_ranks() -> None:
    """Process-set mismatch reaches every rank, per-set auto names, numpy block=, joined
    ranks and non-neutral ops, a timed-out join, a dying worker failing its peers fast."""
    assert_all_ok(_run(3, "review", timeout=50, COLLX_TIMEOUT="10"), 3)


def test_init_shutdown_init() -> None:
    assert_all_ok(_run(2, "reinit"), 2)


def test_timeline_json(tmp_path) -> None:
    path = tmp_path / "timeline.json"
    job = _run(2, "timeline", COLLX_TIMELINE=str(path))
    assert_all_ok(job, 2)
    assert json.loads(path.read_text())          # valid JSON after shutdown


def test_process_set_in_negotiated_engine() -> None:
    assert_all_ok(_run(3, "sets"), 3)


def test_rank_leaving_fails_pending_not_hangs() -> None:
    assert_all_ok(_run(2, "leave", timeout=60), 2)


def test_shutdown_is_collective_and_sets_outlive_leaving_ranks() -> None:
    job = _run(4, "leave_sets", timeout=60)
    assert_all_ok(job, 4)
    for r in (2, 3):     # they waited in shutdown() for ranks 0 and 1 (busy >= 1 s)
        waited = float(job.lines(r, "WAITED")[0].split()[-1])
        assert waited >= 0.9, job.report()


def test_shutdown_gives_up_after_the_timeout() -> None:
    job = _run(2, "left", timeout=60, COLLX_TIMEOUT="3")
    assert_all_ok(job, 2)
    waited = float(job.lines(1, "WAITED")[0].split()[-1])
    assert 2.5 <= waited <= 6.0, job.report()


def test_ordered_vs_negotiated_rank_is_an_error() -> None:
    job = _run(2, "mixed", timeout=40, COLLX_TIMEOUT="5")
    assert job.returncode == 0, job.report()
    for r in (0, 1):
        lines = job.lines(r, "ERROR")
        assert lines, job.report()
    assert "MismatchError" in job.lines(0, "ERROR")[0] or "MismatchError" in job.lines(1, "ERROR")[0]


def test_collxrun_flags_set_the_knobs(tmp_path) -> None:
    """--fusion-threshold-mb 0 turns fusion off; --timeline-filename writes the trace."""
    path = tmp_path / "tl.json"
    job = collxrun(2, "negotiated_worker.py", "order", env=clean_env(COLLX_TIMEOUT="30"),
                   timeout=90, launcher_args=("--fusion-threshold-mb", "0", "--cycle-time-ms",
                                              "2", "--timeline-filename", str(path)))
    assert_all_ok(job, 2)
    assert json.loads(job.lines(0, "STATS")[0])["fused_responses"] == 0
    names = {e["name"] for e in json.loads(path.read_text())}
    assert {"NEGOTIATE", "QUEUE", "ALLREDUCE", "BROADCAST", "QUANTIZED_ALLREDUCE"} <= names, names


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_sigkilled_rank_fails_the_others_within_twice_the_timeout(transport: str) -> None:
    timeout = 6.0
    env = clean_env(COLLX_TIMEOUT=str(timeout), COLLX_PEER_TIMEOUT="3",
                    **({"COLLX_TRANSPORT": "tcp"} if transport == "tcp" else {}))
    with Ranks(3, "negotiated_worker.py", "killed", env=env, watchdog=60) as job:
        for r in range(3):
            assert job.wait_line(r, "READY", 30) is not None, job.output()
        time.sleep(0.3)
        killed_at = job.kill(2)
        for r in (0, 1):
            line = job.wait_line(r, "RAISED", 2 * timeout + 5)
            assert line is not None, f"rank {r} hung\n{job.output()}"
            info = json.loads(line)
            assert info["type"] in ("TransportError", "CollxTimeout"), info
            assert info["at"] - killed_at <= 2 * timeout, info
            job.release(r)
        job.wait_all(10)


@pytest.mark.parametrize("np_,transport", [(2, "shm"), (3, "shm"), (2, "tcp")])
def test_frozen_order(np_: int, transport: str) -> None:
    env = {"COLLX_FREEZE_AFTER": "2", "COLLX_STALL_WARNING": "4", "COLLX_TIMEOUT": "6"}
    if transport == "tcp":
        env["COLLX_TRANSPORT"] = "tcp"
    job = _run(np_, "frozen", **env)
    assert_all_ok(job, np_)
    stats = json.loads(job.lines(0, "STATS")[0])
    assert stats["frozen_groups"] >= 4 and stats["freezes"] >= 2, stats
