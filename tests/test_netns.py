"""Tier 5: two hosts as network namespaces (../shared/tools/netns-cluster.sh). Ranks on
different hosts must see each other as separate hosts and talk TCP; every collective is
checked on every rank. Needs root and iproute2; CI runs it (COLLX_REQUIRE_NETNS=1 turns a
missing prerequisite into a failure instead of a skip)."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(os.environ.get("COLLX_NETNS_SCRIPT", REPO.parent / "shared" / "tools" / "netns-cluster.sh"))


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not SCRIPT.exists():
        return f"{SCRIPT} not found"
    if shutil.which("ip") is None:
        return "iproute2 (ip) not installed"
    return None


@pytest.fixture(scope="module")
def cluster():
    why = _missing()
    if why:
        if os.environ.get("COLLX_REQUIRE_NETNS") == "1":
            pytest.fail(f"netns tests required but {why}")
        pytest.skip(why)
    up = subprocess.run(["bash", str(SCRIPT), "up", "2"], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    yield [subprocess.check_output(["bash", str(SCRIPT), "addr", str(i)], text=True).strip()
           for i in (1, 2)]
    subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, timeout=60)


def _in_host(i: int, argv: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SCRIPT), "exec", str(i), *argv], env=env, text=True, **kw)


def test_every_collective_between_two_namespace_hosts(cluster):
    env = dict(os.environ, COLLX_SECRET=secrets.token_hex(16), PYTHONPATH=str(REPO),
               COLLX_TIMEOUT="120")
    store = _in_host(1, [sys.executable, "-m", "collx.rendezvous.serve", "--host", cluster[0],
                         "--lifetime", "280"], env, stdout=subprocess.PIPE)
    try:
        addr = store.stdout.readline().strip()
        assert addr.startswith(cluster[0]), addr
        ranks = []
        for r in range(2):
            renv = dict(env, COLLX_STORE_ADDR=addr, COLLX_RANK=str(r), COLLX_SIZE="2")
            ranks.append(_in_host(r + 1, [sys.executable, "-m", "tests.netns.worker"], renv,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(REPO)))
        outs = []
        deadline = time.monotonic() + 240
        for p in ranks:
            out, _ = p.communicate(timeout=max(1, deadline - time.monotonic()))
            outs.append(out)
        for r, (p, out) in enumerate(zip(ranks, outs)):
            assert p.returncode == 0, f"rank {r} failed:\n{out[-3000:]}"
            assert f"OK rank {r} host collx-h{r + 1}" in out, out[-3000:]
    finally:
        store.terminate()
        store.wait(timeout=10)
