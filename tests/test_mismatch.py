"""Tier 4: ranks that disagree about a call get MismatchError (a peer that aborted first may
show up as TransportError on the others), promptly, and nobody hangs.

Each scenario is one collxrun launch; every rank reports what its call raised. Asserted:
every participating rank raised MismatchError or TransportError (none returned — except the
sender of an eager message, which completes before the receiver looks —, none timed out:
each call has timeout=20 s and must fail within 5 s), and at least one rank raised
MismatchError with a message that says what disagrees.
"""
from __future__ import annotations

import json

import pytest

from mp.launch import clean_env, collxrun

pytestmark = pytest.mark.timeout(60)

BOUND_S = 5.0

# scenario -> (ranks, the ranks taking part: the others make no call)
# An eager send (100 floats) completes once its bytes are queued, before the receiver can
# compare tags: that sender may return; its receiver must still raise.
MAY_RETURN = {"tags": {0}}
SCENARIOS = {
    "allreduce-vs-broadcast": (2, None),
    "allreduce-vs-allgather": (2, None),
    "allreduce-counts": (2, None),
    "allreduce-counts-large": (3, None),
    "allreduce-dtypes": (2, None),
    "allreduce-ops": (2, None),
    "allgather-dtypes": (3, None),
    "allgather-dtype-sizes": (2, None),
    "allgather-trailing-shape": (2, None),
    "tags": (2, [0, 1]),
    "tags-large": (3, [0, 1]),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_disagreeing_ranks_get_mismatch_error(scenario: str) -> None:
    nranks, takers = SCENARIOS[scenario]
    takers = list(range(nranks)) if takers is None else takers
    job = collxrun(nranks, "mismatch_worker.py", scenario, env=clean_env(), timeout=45)
    assert job.returncode == 0, job.report()
    results = {}
    for r in range(nranks):
        lines = job.lines(r, "RESULT")
        assert lines, f"rank {r} reported nothing\n{job.report()}"
        results[r] = json.loads(lines[0])
    for r in takers:
        info = results[r]
        print(f"{scenario}: rank {r} {info['type']} after {info['elapsed']:.3f} s: {info['msg'][:200]}")
        allowed = {"MismatchError", "TransportError"} | ({None} if r in MAY_RETURN.get(scenario, ()) else set())
        assert info["type"] in allowed, f"rank {r}: {info}"
        assert info["elapsed"] < BOUND_S, f"rank {r} took {info['elapsed']:.1f} s: {info}"
    mismatches = [results[r] for r in takers if results[r]["type"] == "MismatchError"]
    assert mismatches, f"no rank raised MismatchError: {results}"
    for info in mismatches:
        msg = info["msg"]
        assert "rank" in msg and any(w in msg for w in ("different", "differ", "disagree")), msg


def test_different_sizes_with_automatic_selection_fail_every_rank_in_bound(tmp_path) -> None:
    """Rank 0 passes 64 KiB, ranks 1-3 pass 16 MiB: the sizes select different algorithms
    (different peers), so rank 0 may never see a message to compare. Every rank must still
    raise within the call's timeout (5 s), and a timeout names the likely cause."""
    import subprocess
    import sys

    from tests.mp.launch import REPO, clean_env
    script = tmp_path / "sizes.py"
    script.write_text(
        "import time, numpy as np, collx\n"
        "collx.init(30)\n"
        "r = collx.rank(); n = 16384 if r == 0 else 4194304\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    collx.allreduce(np.ones(n, np.float32), op=collx.Sum, timeout=5)\n"
        "    print('NOERROR', r, flush=True)\n"
        "except collx.CollxError as exc:\n"
        "    print('RAISED', r, type(exc).__name__, round(time.monotonic() - t, 1), "
        "'same shape' in str(exc), flush=True)\n")
    res = subprocess.run([sys.executable, "-m", "collx.runner", "-np", "4",
                          "--timeout", "60", sys.executable, str(script)],
                         env=clean_env(), cwd=str(REPO), capture_output=True, text=True,
                         timeout=90)
    # "[r]<stdout>:RAISED r kind secs hint" (the prefix keeps the ranks' lines apart)
    lines = [ln.split(":", 1)[1].split() for ln in res.stdout.splitlines()
             if "]<stdout>:RAISED" in ln]
    assert sorted(int(ln[1]) for ln in lines) == [0, 1, 2, 3], res.stdout + res.stderr[-2000:]
    for _, r, kind, secs, hint in lines:
        assert float(secs) < 12.0, (r, kind, secs)
        if kind == "CollxTimeout":
            assert hint == "True", "a timeout must say that the shapes may differ"
