"""`collx info` inside real jobs: the job's hosts, the transports it really uses, probed
links and the algorithm chosen per op and size (rank 0 prints)."""
import subprocess
import sys

import pytest

from tests.mp.launch import REPO, clean_env

pytestmark = pytest.mark.timeout(120)


def _collxrun_info(np_: int, per_rank_host: str | None = None) -> str:
    cmd = [sys.executable, "-m", "collx.runner", "-np", str(np_), "--no-prefix",
           "--timeout", "90"]
    if per_rank_host:
        cmd += ["sh", "-c", f"COLLX_HOSTNAME={per_rank_host} exec {sys.executable} -m "
                            "collx.cli info"]
    else:
        cmd += [sys.executable, "-m", "collx.cli", "info"]
    res = subprocess.run(cmd, env=clean_env(), cwd=str(REPO), capture_output=True, text=True,
                         timeout=110)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout


def _choices(text: str, op: str) -> dict[str, str]:
    """size -> chosen algorithm, from the op's table in the report."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"{op} (np="))
    out = {}
    for ln in lines[start + 2:]:
        parts = ln.split()
        if len(parts) < 3 or not parts[0][0].isdigit():
            break
        out[f"{parts[0]} {parts[1]}"] = parts[2]
    return out


def test_info_one_host():
    text = _collxrun_info(2)
    assert "topology: 2 ranks on 1 host" in text and "transports: shm\n" in text, text
    assert "probed at init" in text or "cache at init" in text, text
    assert set(_choices(text, "allreduce")) == {"8 B", "1 KiB", "64 KiB", "1 MiB", "16 MiB",
                                               "256 MiB"}
    assert text.count("collx 0.1") == 1, "only rank 0 prints"


def test_info_emulated_hosts():
    text = _collxrun_info(4, per_rank_host="h$((COLLX_RANK/2))")
    assert "topology: 4 ranks on 2 hosts" in text, text
    assert "transports: shm, tcp" in text, text
