"""Tier 4: failure injection on real ranks — a dead peer is an exception on every rank,
never a hang, and the launcher leaves nothing behind.

(a) SIGKILL one of 4 ranks in the middle of a loop of 16 MiB allreduces, over shm and over
    tcp; ranks are started directly (our own TCPStoreServer and COLLX_* variables), since
    collxrun would terminate the survivors: each survivor — neighbours of the victim in the
    ring and the one that is not — must raise TransportError within 10 s of the kill.
(b) Through collxrun: a rank SIGKILLs itself mid-collective; collxrun exits non-zero
    promptly and no process of the job remains.
(c) A rank that never joins: the others raise CollxTimeout within 2x the call's timeout=2.
(d) After a TransportError the communicator fails fast: the next call raises
    TransportError again at once.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mp.launch import Ranks, clean_env, collxrun

pytestmark = pytest.mark.timeout(90)

NRANKS = 4
VICTIM = 1             # ring 0 -> 1 -> 2 -> 3 -> 0: ranks 0 and 2 neighbour it, 3 does not
COUNT = 4 * 2**20 + 3  # float32 elements, about 16 MiB
KILL_BOUND_S = 10.0
TRANSPORTS = ["shm", "tcp"]

_killed: dict[str, dict] = {}


def _env(transport: str, **extra: str) -> dict[str, str]:
    env = clean_env(COLLX_TIMEOUT="60", **extra)     # a survivor that waits for the timeout fails
    if transport == "tcp":
        env["COLLX_TRANSPORT"] = "tcp"
    return env


def kill_one_rank(transport: str) -> dict:
    """Run scenario (a) once per transport; (a) and (d) both read its outcome."""
    if transport in _killed:
        return _killed[transport]
    with Ranks(NRANKS, "failure_worker.py", "loop", str(COUNT), env=_env(transport)) as job:
        for r in range(NRANKS):
            assert job.wait_line(r, "READY", 30) is not None, f"rank {r} not ready\n{job.output()}"
        time.sleep(0.3)                              # well inside the loop of allreduces
        killed_at = job.kill(VICTIM)
        raised, again = {}, {}
        for r in range(NRANKS):
            if r == VICTIM:
                continue
            line = job.wait_line(r, "RAISED", KILL_BOUND_S + 5)
            raised[r] = json.loads(line) if line else None
            line = job.wait_line(r, "AGAIN", 5)
            again[r] = json.loads(line) if line else None
        for r in range(NRANKS):
            job.release(r)
        codes = job.wait_all(10)
        result = {"killed_at": killed_at, "raised": raised, "again": again, "codes": codes,
                  "output": job.output()}
    _killed[transport] = result
    return result


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sigkill_mid_allreduce_every_survivor_raises(transport: str) -> None:
    res = kill_one_rank(transport)
    for r, info in res["raised"].items():
        assert info is not None, f"rank {r} never raised after the kill\n{res['output']}"
        elapsed = info["at"] - res["killed_at"]
        print(f"{transport}: rank {r} raised {info['type']} {elapsed:.3f} s after the kill: "
              f"{info['msg'][:160]}")
        assert info["type"] == "TransportError", f"rank {r}: {info}"
        assert elapsed < KILL_BOUND_S, f"rank {r} took {elapsed:.1f} s"
    assert res["codes"][VICTIM] == -9
    assert all(c == 0 for r, c in enumerate(res["codes"]) if r != VICTIM), res["codes"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_broken_communicator_fails_fast(transport: str) -> None:
    res = kill_one_rank(transport)
    for r, info in res["again"].items():
        assert info is not None, f"rank {r} hung on the call after the error\n{res['output']}"
        print(f"{transport}: rank {r} next call: {info['type']} after {info['elapsed']:.4f} s")
        assert info["type"] == "TransportError", f"rank {r}: {info}"
        assert info["elapsed"] < 0.5, f"rank {r} took {info['elapsed']:.2f} s to fail"
        assert "re-initialize" in info["msg"] or "broken" in info["msg"], info["msg"]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_collxrun_rank_sigkills_itself(transport: str, tmp_path: Path) -> None:
    job = collxrun(3, "failure_worker.py", "selfkill", str(COUNT), str(tmp_path), "1",
                   env=_env(transport), timeout=60, grace=2)
    done_at = time.time()
    assert job.returncode != 0, job.report()
    killing = job.lines(1, "KILLING")
    assert killing, "the victim never got to kill itself\n" + job.report()
    took = done_at - float(killing[0])
    print(f"{transport}: collxrun exited {job.returncode} {took:.2f} s after the kill; "
          f"{job.launcher}")
    # collxrun names the first failure it saw: the victim (137), or a survivor that raised
    # TransportError (exit 1) in the same poll
    assert job.returncode in (137, 1), job.report()
    assert any("rank " in ln for ln in job.launcher), job.report()
    assert took < 8.0, f"collxrun took {took:.1f} s to finish after the kill\n{job.report()}"
    pids = [int((tmp_path / f"pid{r}").read_text()) for r in range(3)]
    deadline = time.monotonic() + 2.0
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(_gone(p) for p in pids), f"left behind: {[p for p in pids if not _gone(p)]}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_rank_that_never_joins_times_out_the_others(transport: str) -> None:
    timeout = 2.0
    job = collxrun(3, "failure_worker.py", "absent", "2", str(timeout), env=_env(transport),
                   timeout=40)
    assert job.returncode == 0, job.report()
    results = {r: json.loads(job.lines(r, "RESULT")[0]) for r in (0, 1)
               if job.lines(r, "RESULT")}
    assert sorted(results) == [0, 1], job.report()
    assert job.lines(2, "LEFT"), job.report()
    for r, info in results.items():
        print(f"{transport}: rank {r} {info['type']} after {info['elapsed']:.2f} s: "
              f"{info['msg'][:200]}")
        assert info["elapsed"] < 2 * timeout, f"rank {r}: {info}"
        # the first rank to time out breaks its communicator and closes its connections,
        # so a rank still waiting may see that close first and raise TransportError
        assert info["type"] in ("CollxTimeout", "TransportError"), f"rank {r}: {info}"
    timeouts = [info for info in results.values() if info["type"] == "CollxTimeout"]
    assert timeouts, f"no rank raised CollxTimeout: {results}"
    for info in timeouts:
        assert info["elapsed"] >= timeout * 0.9, info
        # names the rank it waited on (in a ring that may be a rank stuck behind rank 2)
        # and the knob to raise
        assert "timed out" in info["msg"] and "timeout=" in info["msg"], info["msg"]
