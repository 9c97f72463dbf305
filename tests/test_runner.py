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
from collx.runner.local import server_command
from collx.runner.spec import parse_hosts, plan, plan_servers

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
    servers = int(os.environ["COLLX_SERVERS"])  # wait for the servers' pids too (--servers)
    while not all(os.path.exists(os.path.join(outdir, f"spids{k}")) for k in range(servers)):
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


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=REPO)
    for k in list(env):
        if k.startswith("COLLX_"):
            del env[k]
    env.update(extra)
    return env


def collxrun(*args: str, timeout: float = 30, env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collx.runner", *args],
                          env=_env() if env is None else env,
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


def _recorded_pids(outdir: Path, size: int, name: str = "pids") -> list[int]:
    pids = []
    for r in range(size):
        pids += [int(p) for p in (outdir / f"{name}{r}").read_text().split()]
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
    assert "--servers" in res.stdout and "COLLX_SERVER_COMMAND" in res.stdout
    res = collxrun("-np", "1", "--servers", "-1", "true")
    assert res.returncode == 2 and "--servers" in res.stderr


def test_split_and_plan() -> None:
    assert split_argv(["-np", "2", "--timeout=5", "python", "-np", "x"]) == (
        ["-np", "2", "--timeout=5"], ["python", "-np", "x"])
    assert split_argv(["-np", "2", "--", "-weird"]) == (["-np", "2"], ["-weird"])
    assert split_argv(["-np", "2", "--servers", "3", "python", "--servers", "1"]) == (
        ["-np", "2", "--servers", "3"], ["python", "--servers", "1"])
    assert split_argv(["--servers=3", "-np", "2", "x"]) == (["--servers=3", "-np", "2"], ["x"])
    assert [(s.index, s.servers, s.size) for s in plan_servers(2, 5)] == [(0, 2, 5), (1, 2, 5)]
    assert server_command({}) == [sys.executable, "-m", "collx.server"]
    assert server_command({"COLLX_SERVER_COMMAND": "prof -o 'a b' -- py -m collx.server"}) == [
        "prof", "-o", "a b", "--", "py", "-m", "collx.server"]
    assert parse_hosts("localhost:2, 127.0.0.1") == [
        parse_hosts("localhost:2")[0], parse_hosts("127.0.0.1:1")[0]]
    specs = plan(3, parse_hosts("localhost:4"))
    assert [(s.rank, s.local_rank, s.local_size, s.cross_rank) for s in specs] == [
        (0, 0, 3, 0), (1, 1, 3, 0), (2, 2, 3, 0)]
    with pytest.raises(InvalidUsage):
        plan(0)
    with pytest.raises(InvalidUsage):
        parse_hosts("localhost:zero")


# ---------------------------------------------------------------- --servers
# A stand-in for collx.server (COLLX_SERVER_COMMAND): prints its environment, records its
# pid and a grandchild's, then behaves as `mode` says until SIGTERM.
SERVER_SCRIPT = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    outdir, mode = sys.argv[1], sys.argv[2]
    k, size = int(os.environ["COLLX_SERVER_INDEX"]), int(os.environ["COLLX_SIZE"])

    def on_term(signum, frame):
        open(os.path.join(outdir, f"term{k}"), "w").close()
        sys.exit(3 if mode == "exit3_on_term" else 0)

    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif mode != "die_on_term":
        signal.signal(signal.SIGTERM, on_term)
    print(json.dumps({n: v for n, v in os.environ.items() if n.startswith("COLLX_")}),
          flush=True)
    print(f"server {k} to-stderr", file=sys.stderr, flush=True)
    child = subprocess.Popen(["sleep", "60"])
    tmp = os.path.join(outdir, f"spids{k}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {child.pid}")
    os.replace(tmp, os.path.join(outdir, f"spids{k}"))
    if mode == "exit0_early":
        child.kill()
        sys.exit(0)
    if mode == "fail" and k == 1:
        while not all(os.path.exists(os.path.join(outdir, f"pids{r}")) for r in range(size)):
            time.sleep(0.01)
        sys.exit(5)
    while True:
        time.sleep(60)
""")

# A rank that waits until every server is up, prints its environment, exits 0 (after
# argv[2] more seconds, if given).
SERVER_JOB_RANK = textwrap.dedent("""
    import json, os, sys, time
    outdir = sys.argv[1]
    for k in range(int(os.environ["COLLX_SERVERS"])):
        while not os.path.exists(os.path.join(outdir, f"spids{k}")):
            time.sleep(0.01)
    print(json.dumps({n: v for n, v in os.environ.items() if n.startswith("COLLX_")}),
          flush=True)
    time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
""")


def _server_env(tmp_path: Path, mode: str, **extra: str) -> dict[str, str]:
    path = tmp_path / "server.py"
    path.write_text(SERVER_SCRIPT)
    return _env(COLLX_SERVER_COMMAND=f"{sys.executable} {path} {tmp_path} {mode}", **extra)


def _parse_labels(stream: str, tag: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in stream.splitlines():
        head, sep, text = line.partition(f"]<{tag}>:")
        if sep and head.startswith("["):
            out.setdefault(head[1:], []).append(text)
        else:
            assert line.startswith("collxrun: "), f"unprefixed line {line!r}"
    return out


def test_servers_env_prefix_and_sigterm_end(tmp_path: Path) -> None:
    # Identity variables in collxrun's own environment must not leak into the wrong kind
    # of process: servers get no COLLX_RANK, ranks no COLLX_SERVER_INDEX.
    env = _server_env(tmp_path, "exit0_on_term", COLLX_RANK="7", COLLX_LOCAL_RANK="7",
                      COLLX_SERVER_INDEX="9")
    t0 = time.monotonic()
    res = collxrun("-np", "3", "--servers", "2", "--grace", "20", sys.executable, "-c",
                   SERVER_JOB_RANK, str(tmp_path), env=env)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert elapsed < 10  # the servers ended on SIGTERM, not after the 20 s grace
    out = _parse_labels(res.stdout, "stdout")
    err = _parse_labels(res.stderr, "stderr")
    assert sorted(out) == ["0", "1", "2", "s0", "s1"]
    assert err == {"s0": ["server 0 to-stderr"], "s1": ["server 1 to-stderr"]}
    ranks = [json.loads(out[str(r)][0]) for r in range(3)]
    servers = [json.loads(out[f"s{k}"][0]) for k in range(2)]
    for r, e in enumerate(ranks):
        assert e["COLLX_RANK"] == str(r) and e["COLLX_SIZE"] == "3"
        assert e["COLLX_LOCAL_RANK"] == str(r) and e["COLLX_SERVERS"] == "2"
        assert "COLLX_SERVER_INDEX" not in e
    for k, e in enumerate(servers):
        assert e["COLLX_SERVER_INDEX"] == str(k) and e["COLLX_SERVERS"] == "2"
        assert e["COLLX_SIZE"] == "3"
        for name in ("COLLX_RANK", "COLLX_LOCAL_RANK", "COLLX_LOCAL_SIZE",
                     "COLLX_CROSS_RANK", "COLLX_CROSS_SIZE"):
            assert name not in e, name
    for name in ("COLLX_STORE_ADDR", "COLLX_SECRET"):
        assert len({e[name] for e in ranks + servers}) == 1, name
    assert all((tmp_path / f"term{k}").exists() for k in range(2))  # got SIGTERM
    assert not [line for line in res.stderr.splitlines() if line.startswith("collxrun: ")]
    _assert_all_gone(_recorded_pids(tmp_path, 2, "spids"))


def test_servers_without_prefix(tmp_path: Path) -> None:
    res = collxrun("-np", "1", "--servers", "1", "--no-prefix", sys.executable, "-c",
                   SERVER_JOB_RANK, str(tmp_path), env=_server_env(tmp_path, "exit0_on_term"))
    assert res.returncode == 0, res.stderr
    envs = [json.loads(line) for line in res.stdout.splitlines()]
    assert sorted(e.get("COLLX_SERVER_INDEX", "rank") for e in envs) == ["0", "rank"]
    assert res.stderr == "server 0 to-stderr\n"


@pytest.mark.parametrize("mode,warning", [
    ("die_on_term", None),              # killed by the SIGTERM: its normal end
    ("exit3_on_term", "exited with code 3 after SIGTERM"),
    ("ignore_term", "did not end within the grace period"),
    ("exit0_early", "exited with code 0 before the ranks finished"),
])
def test_server_end_after_ranks_succeeded_is_not_a_failure(tmp_path: Path, mode: str,
                                                           warning: str | None) -> None:
    # exit0_early: the ranks outlive the servers by a second, so the early end is seen.
    linger = "1" if mode == "exit0_early" else "0"
    t0 = time.monotonic()
    res = collxrun("-np", "2", "--servers", "2", "--grace", "1", sys.executable, "-c",
                   SERVER_JOB_RANK, str(tmp_path), linger, env=_server_env(tmp_path, mode))
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stderr.splitlines() if line.startswith("collxrun: ")]
    if warning is None:
        assert notes == [], res.stderr
    else:
        assert len(notes) == 2 and all(warning in n for n in notes), res.stderr
    if mode == "ignore_term":
        assert 1.0 <= elapsed < 8
    _assert_all_gone(_recorded_pids(tmp_path, 2, "spids"))


def test_server_failing_before_ranks_finish_takes_job_down(tmp_path: Path,
                                                           script: str) -> None:
    t0 = time.monotonic()
    res = collxrun("-np", "2", "--servers", "2", sys.executable, script, str(tmp_path),
                   "sleep", env=_server_env(tmp_path, "fail"))
    assert res.returncode == 5, res.stderr
    assert time.monotonic() - t0 < 8
    assert "server 1" in res.stderr and "exited with code 5 before the ranks finished" \
        in res.stderr
    _assert_all_gone(_recorded_pids(tmp_path, 2) + _recorded_pids(tmp_path, 2, "spids"))


def test_failing_rank_takes_servers_down(tmp_path: Path, script: str) -> None:
    res = collxrun("-np", "2", "--servers", "1", sys.executable, script, str(tmp_path),
                   "exit3", env=_server_env(tmp_path, "exit0_on_term"))
    assert res.returncode == 3, res.stderr
    assert "rank 1" in res.stderr and "1 server(s)" in res.stderr
    assert (tmp_path / "term0").exists()
    _assert_all_gone(_recorded_pids(tmp_path, 2) + _recorded_pids(tmp_path, 1, "spids"))


def test_signal_to_collxrun_reaches_servers(tmp_path: Path, script: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "collx.runner", "-np", "1", "--servers",
                             "1", sys.executable, script, str(tmp_path), "sleep"],
                            env=_server_env(tmp_path, "exit0_on_term"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while not ((tmp_path / "pids0").exists() and (tmp_path / "spids0").exists()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "1 rank(s) and 1 server(s)" in err
    _assert_all_gone(_recorded_pids(tmp_path, 1) + _recorded_pids(tmp_path, 1, "spids"))


def test_server_command_that_cannot_start(tmp_path: Path) -> None:
    res = collxrun("-np", "1", "--servers", "1", "true",
                   env=_env(COLLX_SERVER_COMMAND="/nonexistent/collx-server-binary"))
    assert res.returncode == 127 and "cannot start server 0" in res.stderr
