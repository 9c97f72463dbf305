"""The executor's idle policy on real ranks: with spinning off (COLLX_SPIN=0, as when ranks
outnumber cores), a waiting rank yields its core for COLLX_YIELD_US and then sleeps on the
doorbells. Every setting — sleep at once (0), the default window, a window longer than any
wait here (so nobody sleeps), and busy spinning — must give exact results when one rank is
late by up to 20 ms; a negative window is refused at init with the knob's name."""
from __future__ import annotations

import pytest

from mp.launch import assert_all_ok, clean_env, collxrun

pytestmark = pytest.mark.timeout(200)


@pytest.mark.parametrize("spin,yield_us", [("0", "0"), ("0", None), ("0", "1000000"),
                                           ("4096", None)])
def test_every_idle_policy_gives_exact_results(spin, yield_us):
    extra = {"COLLX_SPIN": spin, "COLLX_TIMEOUT": "60"}
    if yield_us is not None:
        extra["COLLX_YIELD_US"] = yield_us
    job = collxrun(4, "idle_wait_worker.py", env=clean_env(**extra), timeout=150)
    assert_all_ok(job, 4)


def test_negative_yield_window_is_refused():
    job = collxrun(2, "idle_wait_worker.py", env=clean_env(COLLX_YIELD_US="-5"), timeout=60)
    assert job.returncode != 0
    assert "COLLX_YIELD_US=-5.0 must be >= 0" in job.stdout + job.stderr, job.report()
