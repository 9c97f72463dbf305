"""Tier 4: bad input is refused with InvalidUsage before anything is sent, with a message
that names the call (``collx.<op>``) and says how to fix it.

One 2-rank collxrun launch of tests/mp/bad_input_worker.py: rank 0 makes each bad call
(non-contiguous input, read-only out, wrong out shape/dtype, overlapping out, unknown op,
dtypes without a reduction kernel, bad roots, bad alltoall splits, send/recv to itself or
out of range, 0-d arrays where a dimension is split, async forms of a few), then both ranks
run a good allreduce that must match up and be exact — had the bad call sent or posted
anything, it would not. Every rank also checks, before collx.init(), that calls are refused.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mp.launch import assert_all_ok, clean_env, collxrun

pytestmark = pytest.mark.timeout(90)

MIN_CASES = 60   # the worker's list; fewer would mean cases were dropped


def test_bad_input_is_refused_before_anything_is_sent() -> None:
    # COLLX_TIMEOUT=10: a bad call that were accepted would wait for rank 1 and time out
    job = collxrun(2, "bad_input_worker.py", env=clean_env(COLLX_TIMEOUT="10"), timeout=75)
    finals = {r: json.loads(v) for r, v in assert_all_ok(job, 2).items()}
    cases = finals[0]["cases"]
    assert cases >= MIN_CASES, finals[0]
    # rank 0 passed every case, both ranks passed the before-init checks
    assert len(job.lines(0, "CASE")) == cases + 4, job.report()
    assert len(job.lines(1, "CASE")) == 4, job.report()
    for r in (0, 1):
        # one exact good allreduce per case on both ranks
        assert finals[r]["checks"] >= cases, finals[r]


OVERLAP = """
import numpy as np, collx
collx.init()
buf = np.zeros(13, np.float32)
try:
    collx.allreduce(buf[:12], out=buf[1:13])
except collx.InvalidUsage as exc:
    print(exc)
"""


def test_overlapping_out_message_names_the_op() -> None:
    res = subprocess.run([sys.executable, "-c", OVERLAP], env=clean_env(), capture_output=True,
                         text=True, timeout=30)
    assert res.returncode == 0 and "overlaps" in res.stdout, res.stdout + res.stderr
    assert "collx.allreduce" in res.stdout, res.stdout
