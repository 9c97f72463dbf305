"""collxrun with real processes: env vars, output prefix, fail-fast teardown (no process
left behind, grandchildren included), signals, --timeout, and a rank using the launcher's
store. Runs ``python -m collx.runner`` from the source tree (PYTHONPATH)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from collx.errors import InvalidUsage
from collx.runner.cli import split_argv
from collx.runner.spec import parse_hosts, plan

pytestmark = pytest.mark.timeout(40)

REPO = str(Path(__file__).resolve().parent.parent)

# One script drives every scenario: each rank records its pid and a grandchild's pid
# (a `sleep 60` in the rank's process group), then behaves as `mode` says.
RANK_SCRIPT = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    rank, size = int(os.environ["COLLX_RANK"]), int(os.environ["COLLX_SIZE"])
    outdir, mode = sys.argv[1], sys.argv[2]
    if mode == "ignore_term" and rank == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "60"])
    tmp = os.path.join(outdir, f"pids{rank}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.replace(tmp, os.path.join(outdir, f"pids{rank}"))
    while not all(os.path.exists(os.path.join(outdir, f"pids{r}")) for r in range(size)):
        time.sleep(0.01)
    print("ready", flush=True)
    if mode == "linger":
        sys.exit(0)  # leaves its grandchild running
    if rank == 1 and mode in ("exit3", "ignore_term"):
        sys.exit(3)
    if rank == 1 and mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
""")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    for k in list(env):
        if k.startswith("COLLX_"):
            del env[k]
    return env


def collxrun(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collx.runner", *args], env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie awaiting its reaper)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


def _recorded_pids(outdir: Path, size: int) -> list[int]:
    pids = []
    for r in range(size):
        pids += [int(p) for p in (outdir / f"pids{r}").read_text().split()]
    return pids


def _assert_all_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 2.0  # a reparented grandchild may take a moment to reap
    while not all(_gone(p) for p in pids):
        assert time.monotonic() < deadline, f"left behind: {[p for p in pids if not _gone(p)]}"
        time.sleep(0.02)


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "rank.py"
    path.write_text(RANK_SCRIPT)
    return str(path)


# ---------------------------------------------------------------- happy path

ENV_PRINTER = ("import json, os, sys; "
               "print(json.dumps({k: v for k, v in os.environ.items() "
               "if k.startswith('COLLX_') or k == 'PYTHONUNBUFFERED'})); "
               "print('to-stderr', file=sys.stderr)")


def _parse(stream: str, tag: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for line in stream.splitlines():
        head, sep, text = line.partition(f"]<{tag}>:")
        assert sep and head.startswith("["), f"unprefixed line {line!r}"
        out.setdefault(int(head[1:]), []).append(text)
    return out


@pytest.mark.parametrize("hosts", [[], ["-H", "localhost:3"],
                                   ["--hosts", "localhost:2,127.0.0.1:1"]])
def test_env_prefix_and_success(hosts: list[str]) -> None:
    res = collxrun("-np", "3", *hosts, sys.executable, "-c", ENV_PRINTER)
    assert res.returncode == 0, res.stderr
    out = _parse(res.stdout, "stdout")
    err = _parse(res.stderr, "stderr")
    assert sorted(out) == [0, 1, 2] and all(err[r] == ["to-stderr"] for r in range(3))
    secrets = set()
    for rank in range(3):
        env = json.loads(out[rank][0])
        assert env["COLLX_RANK"] == str(rank) and env["COLLX_SIZE"] == "3"
        assert env["COLLX_LOCAL_RANK"] == str(rank) and env["COLLX_LOCAL_SIZE"] == "3"
        assert env["COLLX_CROSS_RANK"] == "0" and env["COLLX_CROSS_SIZE"] == "1"
        assert env["COLLX_STORE_ADDR"].startswith("127.0.0.1:")
        assert len(env["COLLX_SECRET"]) == 64 and env["PYTHONUNBUFFERED"] == "1"
        secrets.add(env["COLLX_SECRET"])
    assert len(secrets) == 1


def test_horovodrun_local_form_and_no_prefix() -> None:
    res = collxrun("-np", "2", "-H", "localhost:2", "--no-prefix", sys.executable, "-c",
                   "import os, sys; sys.stdout.write(f\"rank {os.environ['COLLX_RANK']}\\n\")")
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == ["rank 0", "rank 1"]


def test_command_options_are_not_taken_for_collxrun_options() -> None:
    res = collxrun("-np", "1", sys.executable, "-u", "-c",
                   "import sys; print(sys.argv[1:])", "--timeout", "-np")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "[0]<stdout>:['--timeout', '-np']\n"


def test_rank_uses_launcher_store() -> None:
    code = textwrap.dedent("""
        import os
        from collx.errors import TransportError
        from collx.rendezvous import TCPStore
        rank, size = int(os.environ["COLLX_RANK"]), int(os.environ["COLLX_SIZE"])
        s = TCPStore.from_env(timeout=10)
        s.set(f"addr/{rank}", f"rank{rank}@{s.local_address()}".encode())
        s.add("arrived", 1)
        s.wait([f"addr/{r}" for r in range(size)], timeout=10)
        print(",".join(s.get(f"addr/{r}").decode() for r in range(size)))
        try:
            TCPStore(os.environ["COLLX_STORE_ADDR"], b"not-the-secret", timeout=5)
        except TransportError:
            print("wrong secret refused")
    """)
    res = collxrun("-np", "3", sys.executable, "-c", code)
    assert res.returncode == 0, res.stderr
    out = _parse(res.stdout, "stdout")
    for r in range(3):
        assert out[r] == ["rank0@127.0.0.1,rank1@127.0.0.1,rank2@127.0.0.1",
                          "wrong secret refused"]


# ---------------------------------------------------------------- failures

def test_failing_rank_takes_job_down(tmp_path: Path, script: str) -> None:
    t0 = time.monotonic()
    res = collxrun("-np", "3", sys.executable, script, str(tmp_path), "exit3")
    elapsed = time.monotonic() - t0
    assert res.returncode == 3, res.stderr
    assert elapsed < 5
    assert "rank 1" in res.stderr and "exited with code 3" in res.stderr
    assert res.stdout.count("<stdout>:ready") == 3
    _assert_all_gone(_recorded_pids(tmp_path, 3))


def test_rank_killed_by_signal(tmp_path: Path, script: str) -> None:
    res = collxrun("-np", "2", sys.executable, script, str(tmp_path), "sigkill")
    assert res.returncode == 137, res.stderr
    assert "rank 1" in res.stderr and "SIGKILL" in res.stderr
    _assert_all_gone(_recorded_pids(tmp_path, 2))


def test_rank_ignoring_sigterm_is_killed_after_grace(tmp_path: Path, script: str) -> None:
    t0 = time.monotonic()
    res = collxrun("-np", "2", "--grace", "1", sys.executable, script, str(tmp_path),
                   "ignore_term")
    elapsed = time.monotonic() - t0
    assert res.returncode == 3, res.stderr
    assert 1.0 <= elapsed < 6
    _assert_all_gone(_recorded_pids(tmp_path, 2))


def test_job_timeout(tmp_path: Path, script: str) -> None:
    t0 = time.monotonic()
    res = collxrun("-np", "2", "--timeout", "1.5", sys.executable, script, str(tmp_path),
                   "sleep")
    assert res.returncode == 124, res.stderr
    assert time.monotonic() - t0 < 6 and "--timeout" in res.stderr
    _assert_all_gone(_recorded_pids(tmp_path, 2))


def test_lingering_grandchildren_cleaned_after_success(tmp_path: Path, script: str) -> None:
    res = collxrun("-np", "2", "--grace", "1", sys.executable, script, str(tmp_path),
                   "linger")
    assert res.returncode == 0, res.stderr
    _assert_all_gone(_recorded_pids(tmp_path, 2))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_collxrun_is_forwarded(tmp_path: Path, script: str, sig: int) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "collx.runner", "-np", "2",
                             sys.executable, script, str(tmp_path), "sleep"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 15
    while not all((tmp_path / f"pids{r}").exists() for r in range(2)):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    pids = _recorded_pids(tmp_path, 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 128 + sig, err
    assert signal.Signals(sig).name in err
    _assert_all_gone(pids)


# ---------------------------------------------------------------- usage errors

def test_usage_errors() -> None:
    res = collxrun("-np", "2", "-H", "node7:2", "true")
    assert res.returncode == 2 and "later feature" in res.stderr and "node7" in res.stderr
    res = collxrun("-np", "4", "-H", "localhost:2", "true")
    assert res.returncode == 2 and "slot" in res.stderr
    res = collxrun("-np", "2")
    assert res.returncode == 2 and "no command" in res.stderr
    res = collxrun("-np", "1", "/nonexistent/collx-test-binary")
    assert res.returncode == 127 and "cannot start rank 0" in res.stderr
    res = collxrun("--help")
    assert res.returncode == 0 and "-np" in res.stdout


def test_split_and_plan() -> None:
    assert split_argv(["-np", "2", "--timeout=5", "python", "-np", "x"]) == (
        ["-np", "2", "--timeout=5"], ["python", "-np", "x"])
    assert split_argv(["-np", "2", "--", "-weird"]) == (["-np", "2"], ["-weird"])
    assert parse_hosts("localhost:2, 127.0.0.1") == [
        parse_hosts("localhost:2")[0], parse_hosts("127.0.0.1:1")[0]]
    specs = plan(3, parse_hosts("localhost:4"))
    assert [(s.rank, s.local_rank, s.local_size, s.cross_rank) for s in specs] == [
        (0, 0, 3, 0), (1, 1, 3, 0), (2, 2, 3, 0)]
    with pytest.raises(InvalidUsage):
        plan(0)
    with pytest.raises(InvalidUsage):
        parse_hosts("localhost:zero")
