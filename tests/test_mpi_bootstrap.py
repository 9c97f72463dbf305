"""collx.init() under Open MPI's mpirun (bootstrap through mpi4py), and under mpirun without
mpi4py when the store address and secret are passed in. CI installs Open MPI and mpi4py
(COLLX_REQUIRE_MPI=1 makes their absence a failure instead of a skip)."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[1]
MPIRUN = shutil.which("mpirun.openmpi")


def _mpi4py_openmpi() -> bool:
    probe = subprocess.run([sys.executable, "-c", "from mpi4py import MPI; "
                            "assert 'Open MPI' in MPI.Get_library_version()"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


def _require(ok: bool, why: str) -> None:
    if not ok:
        if os.environ.get("COLLX_REQUIRE_MPI") == "1":
            pytest.fail(f"MPI tests required but {why}")
        pytest.skip(why)


def _mpirun(np_: int, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [MPIRUN, "-np", str(np_), "--oversubscribe", "--bind-to", "none",
           "--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo"]
    if os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return subprocess.run(cmd + argv, env=env, cwd=str(REPO), capture_output=True, text=True,
                          timeout=150)


def test_init_under_mpirun_with_mpi4py():
    _require(MPIRUN is not None, "Open MPI (mpirun.openmpi) not installed")
    _require(_mpi4py_openmpi(), "mpi4py built against Open MPI not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLX_")}
    env["PYTHONPATH"] = str(REPO)
    res = _mpirun(3, [sys.executable, "-m", "tests.mpi.worker"], env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for r in range(3):
        assert f"OK mpi rank {r} of 3" in res.stdout


def test_init_under_mpirun_without_mpi4py_uses_passed_store(tmp_path):
    _require(MPIRUN is not None, "Open MPI (mpirun.openmpi) not installed")
    # hide mpi4py: a sitecustomize that makes importing it fail
    (tmp_path / "mpi4py.py").write_text("raise ImportError('hidden for this test')\n")
    secret = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLX_")}
    env.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}", COLLX_SECRET=secret)
    store = subprocess.Popen([sys.executable, "-m", "collx.rendezvous.serve", "--lifetime", "170"],
                             env=env, stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        env["COLLX_STORE_ADDR"] = store.stdout.readline().strip()
        # each rank reports through its own file: mpirun may interleave ranks' stdout
        code = ("import numpy as np, collx, pathlib; collx.init(); "
                "y = collx.allreduce(np.ones(5) * (collx.rank() + 1), op=collx.Sum); "
                "assert (y == 3).all(), y; "
                f"pathlib.Path({str(tmp_path)!r}, f'rank{{collx.rank()}}').write_text("
                "f'OK {collx.rank()} {collx.size()}')")
        res = _mpirun(2, ["-x", "COLLX_STORE_ADDR", "-x", "COLLX_SECRET", "-x", "PYTHONPATH",
                          sys.executable, "-c", code], env)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        for r in range(2):
            assert (tmp_path / f"rank{r}").read_text() == f"OK {r} 2", res.stdout
    finally:
        store.terminate()
        store.wait(timeout=10)
