"""COLLX_ALGO: parsing and validation at init, forced plans under collxrun (and refusals
before anything is sent), and collx-bench --algo."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import collx
from collx.algos.registry import ALGORITHMS
from collx.runtime.communicator import Communicator, parse_forced_algo

from mp.launch import REPO, assert_all_ok, clean_env, collxrun

pytestmark = pytest.mark.timeout(120)


def test_parse_single_name_applies_to_every_op_that_has_it() -> None:
    assert parse_forced_algo(None) == {} and parse_forced_algo("") == {}
    assert parse_forced_algo("ring") == {op: "ring" for op, names in ALGORITHMS.items()
                                         if "ring" in names}
    assert parse_forced_algo("pair") == {"allreduce": "pair"}


def test_parse_op_list() -> None:
    assert parse_forced_algo("allreduce:ring, broadcast:binomial") == \
        {"allreduce": "ring", "broadcast": "binomial"}
    assert parse_forced_algo("binomial,reduce:binomial")["reduce"] == "binomial"


@pytest.mark.parametrize("text, bad", [
    ("allreduc:ring", "allreduc:ring"),          # unknown op
    ("nosuchalgo", "nosuchalgo"),                # exists for no op
    ("broadcast:ring", "broadcast:ring"),        # exists, but not for this op
    ("allreduce:", "allreduce:"),
])
def test_bad_knob_is_invalid_usage_at_init(monkeypatch: pytest.MonkeyPatch, text: str,
                                           bad: str) -> None:
    monkeypatch.setenv("COLLX_ALGO", text)
    with pytest.raises(collx.InvalidUsage) as info:
        Communicator(0, 1)
    msg = str(info.value)
    assert "COLLX_ALGO" in msg and repr(bad) in msg and "allreduce: " in msg, msg
    assert all(name in msg for names in ALGORITHMS.values() for name in names), msg


def test_good_knob_parsed_once_into_the_communicator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLX_ALGO", "allreduce:ring")
    comm = Communicator(0, 1)
    try:
        assert comm.forced_algo == {"allreduce": "ring"}
    finally:
        comm.close()


def test_init_refuses_bad_knob_in_a_process() -> None:
    res = subprocess.run([sys.executable, "-c", "import collx; collx.init()"],
                         env=clean_env(COLLX_ALGO="allreduce:bogus"), cwd=str(REPO),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "InvalidUsage" in res.stderr and "'allreduce:bogus'" \
        in res.stderr, res.stderr[-2000:]


def test_np2_forced_ring_for_a_small_allreduce() -> None:
    job = collxrun(2, "algo_forcing_worker.py", "ring", env=clean_env(COLLX_ALGO="allreduce:ring"),
                   timeout=60)
    assert_all_ok(job, 2)


def test_np3_forced_pair_is_refused_on_every_rank_then_the_job_works() -> None:
    job = collxrun(3, "algo_forcing_worker.py", "pair", env=clean_env(COLLX_ALGO="pair"),
                   timeout=60)
    assert_all_ok(job, 3)


def test_bench_algo_flag() -> None:
    # at 2 ranks an 8-byte allreduce would take pair by default: ring shows the flag worked
    cmd = [sys.executable, "-m", "collx.runner", "-np", "2", "--no-prefix", "--timeout", "60",
           sys.executable, "-m", "collx.bench", "allreduce", "--algo", "allreduce:ring",
           "--json", "-n", "3", "-w", "1", "--sizes", "8"]
    res = subprocess.run(cmd, env=clean_env(), cwd=str(REPO), capture_output=True, text=True,
                         timeout=80)
    assert res.returncode == 0, res.stderr[-3000:]
    (rec,) = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert rec["algo"] == "ring" and rec["wrong"] == 0 and rec["np"] == 2, rec
