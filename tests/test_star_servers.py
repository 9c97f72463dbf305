"""Dedicated summation servers for real: collxrun --servers K starts K collx.server
processes beside the workers; allreduce runs the star schedule through them over shm and
tcp, exact on every worker; several init/shutdown generations reuse the same servers;
a mismatch or a dead server fails every worker within a bound instead of hanging."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.mp.launch import MP_DIR, REPO, assert_all_ok, clean_env, collxrun

pytestmark = pytest.mark.timeout(150)


@pytest.mark.parametrize("np_,servers,transport", [(2, 2, "shm"), (3, 1, "shm"), (4, 3, "shm"),
                                                   (2, 3, "tcp"), (3, 2, "tcp")])
def test_allreduce_through_servers(np_, servers, transport):
    env = clean_env(**({"COLLX_TRANSPORT": "tcp"} if transport == "tcp" else {}))
    job = collxrun(np_, "star_servers_worker.py", env=env, timeout=120,
                   launcher_args=("--servers", str(servers)))
    finals = assert_all_ok(job, np_)
    for line in finals.values():
        _, k, algos = line.split()
        assert int(k) == servers and algos == "star", line


def test_generations_reuse_the_servers():
    job = collxrun(2, "star_servers_worker.py", "3", timeout=120,
                   launcher_args=("--servers", "2"))
    assert_all_ok(job, 2)


def test_mismatch_fails_every_worker():
    """Worker 1 passes one element more: the server owning the bad shard refuses it with
    MismatchError (and exits 1); no worker completes, and the job ends at once."""
    job = collxrun(3, "star_servers_worker.py", "1", "mismatch", timeout=60,
                   launcher_args=("--servers", "2"))
    assert job.returncode != 0, job.report()
    assert job.elapsed < 30, job.report()
    for r in range(3):
        assert not job.lines(r, "NOERROR"), job.report()
        for line in job.lines(r, "FAILED"):
            assert float(line.split()[2]) < 10.0, line
    assert "expected" in job.stderr and "different collectives" in job.stderr, job.report()


def test_dead_server_fails_every_worker():
    """SIGKILL one server while the workers loop on allreduces: every worker raises within a
    bound and collxrun exits non-zero (137 for the killed server) with nothing left."""
    code = ("import os, sys, time, numpy as np\n"
            "sys.path.insert(0, %r)\n"
            "import worker\n"
            "collx = worker.start(60)\n"
            "x = np.ones(1 << 18, np.float32)\n"
            "t0 = time.monotonic()\n"
            "try:\n"
            "    while time.monotonic() - t0 < 60:\n"
            "        collx.allreduce(x, op=collx.Sum, timeout=30)\n"
            "        if collx.rank() == 0 and not os.path.exists(%r):\n"
            "            open(%r, 'w').write('go')\n"
            "    worker.say('NOERROR')\n"
            "except collx.CollxError as exc:\n"
            "    worker.say('FAILED', type(exc).__name__, str(exc)[:200])\n")
    flag = f"/tmp/collx-star-kill-{os.getpid()}"
    if os.path.exists(flag):
        os.unlink(flag)
    script = f"/tmp/collx-star-kill-{os.getpid()}.py"
    with open(script, "w") as f:
        f.write(code % (str(MP_DIR), flag, flag))
    env = clean_env(COLLX_TEST_WATCHDOG="80")
    cmd = [sys.executable, "-m", "collx.runner", "-np", "2", "--servers", "2", "--timeout",
           "90", "--grace", "2", sys.executable, script]
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.exists(flag), "the workers never ran an allreduce"
        pids = subprocess.run(["pgrep", "-f", "collx.server"], capture_output=True,
                              text=True).stdout.split()
        mine = [p for p in pids if _parent_is(int(p), proc.pid)]
        assert mine, f"no collx.server child of collxrun among {pids}"
        os.kill(int(mine[0]), signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        for path in (flag, script):
            if os.path.exists(path):
                os.unlink(path)
    assert proc.returncode != 0, out + err
    assert "NOERROR" not in out, out


def _parent_is(pid: int, ancestor: int) -> bool:
    for _ in range(5):
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
        if pid == ancestor:
            return True
    return False
