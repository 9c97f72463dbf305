"""Run a worker script under collxrun with a hard time limit and split its output by rank.

Every launch is bounded three times over, so a hung rank can never hang the suite: the
worker's own watchdog (``COLLX_TEST_WATCHDOG``, see worker.py) dumps its stacks and exits,
collxrun's ``--timeout`` tears the job down (exit 124), and subprocess's timeout kills
collxrun as the last resort (ranks each run in their own session, so collxrun is asked to
terminate first and given its grace period to take them down).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MP_DIR = Path(__file__).resolve().parent
REPO = MP_DIR.parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without any COLLX_* knob of the caller, plus PYTHONPATH and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLX_")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class Job:
    """What a collxrun launch left behind."""
    returncode: int
    elapsed: float
    stdout: str
    stderr: str
    out: dict[int, list[str]] = field(default_factory=dict)   # rank -> its stdout lines
    err: dict[int, list[str]] = field(default_factory=dict)   # rank -> its stderr lines
    launcher: list[str] = field(default_factory=list)         # collxrun's own stderr lines

    def lines(self, rank: int, prefix: str) -> list[str]:
        return [ln[len(prefix):].strip() for ln in self.out.get(rank, []) if ln.startswith(prefix)]

    def report(self, limit: int = 60) -> str:
        """The tail of everything, for assertion messages."""
        tail = lambda text: "\n".join(text.splitlines()[-limit:])  # noqa: E731
        return (f"collxrun exit {self.returncode} after {self.elapsed:.1f} s\n"
                f"--- stdout (tail) ---\n{tail(self.stdout)}\n--- stderr (tail) ---\n"
                f"{tail(self.stderr)}")


def _split(text: str, tag: str, by_rank: dict[int, list[str]], other: list[str]) -> None:
    for line in text.splitlines():
        head, sep, rest = line.partition(f"]<{tag}>:")
        if sep and head.startswith("[") and head[1:].isdigit():
            by_rank.setdefault(int(head[1:]), []).append(rest)
        else:
            other.append(line)


def collxrun(np: int, script: str, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120.0, grace: float = 2.0, watchdog: float | None = None,
             launcher_args: tuple[str, ...] = ()) -> Job:
    """Run ``python tests/mp/<script> args...`` on ``np`` ranks; never outlives ``timeout``
    (+ grace + a few seconds). ``watchdog`` (default: timeout - 5 s) bounds each rank.
    ``launcher_args`` go to collxrun (e.g. ``("--servers", "2")``)."""
    env = dict(clean_env() if env is None else env)
    env.setdefault("COLLX_TEST_WATCHDOG", str(max(5.0, (watchdog or timeout - 5.0))))
    path = script if os.path.isabs(script) else str(MP_DIR / script)
    cmd = [sys.executable, "-m", "collx.runner", "-np", str(np), "--timeout", str(timeout),
           "--grace", str(grace), *launcher_args, sys.executable, path, *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout + grace + 10)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)          # collxrun forwards it and reaps the ranks
        try:
            stdout, stderr = proc.communicate(timeout=grace + 8)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        stderr += "\n[launch.py] collxrun outlived its --timeout and was terminated\n"
    job = Job(proc.returncode, time.monotonic() - t0, stdout, stderr)
    _split(stdout, "stdout", job.out, job.launcher)
    _split(stderr, "stderr", job.err, job.launcher)
    return job


def assert_all_ok(job: Job, np: int, marker: str = "OK") -> dict[int, str]:
    """Exit code 0 and exactly one final ``marker`` line per rank (the last line it printed).
    Returns rank -> the rest of that line."""
    assert job.returncode == 0, job.report()
    finals = {}
    for rank in range(np):
        lines = job.out.get(rank, [])
        assert lines and lines[-1].startswith(marker + " "), \
            f"rank {rank} did not finish with an '{marker}' line\n" + job.report()
        finals[rank] = lines[-1][len(marker) + 1:]
    assert sorted(job.out) == list(range(np)), f"unexpected ranks {sorted(job.out)}\n{job.report()}"
    return finals


class Ranks:
    """Ranks started directly (no collxrun, so nobody tears the job down when one dies):
    a TCPStoreServer of our own and the COLLX_* variables collxrun would set. Each rank's
    stdout is read by a thread; ``wait_line`` waits for a line with a given prefix. Use as a
    context manager: on exit every rank still running is SIGKILLed (by pid) and reaped."""

    def __init__(self, nranks: int, script: str, *args: str, env: dict[str, str] | None = None,
                 watchdog: float = 60.0) -> None:
        import secrets
        import threading

        from collx.rendezvous import TCPStoreServer

        self.n = nranks
        secret = secrets.token_hex(32)
        self.server = TCPStoreServer("127.0.0.1", 0, secret=secret.encode()).start()
        base = dict(clean_env() if env is None else env)
        base.setdefault("COLLX_TEST_WATCHDOG", str(watchdog))
        path = script if os.path.isabs(script) else str(MP_DIR / script)
        self.procs: list[subprocess.Popen] = []
        self.lines: list[list[str]] = [[] for _ in range(nranks)]
        self._cv = threading.Condition()
        self._eof = [False] * nranks
        self._pumps: list[threading.Thread] = []
        for rank in range(nranks):
            env_r = dict(base, COLLX_RANK=str(rank), COLLX_SIZE=str(nranks),
                         COLLX_LOCAL_RANK=str(rank), COLLX_LOCAL_SIZE=str(nranks),
                         COLLX_CROSS_RANK="0", COLLX_CROSS_SIZE="1",
                         COLLX_STORE_ADDR=self.server.address, COLLX_SECRET=secret)
            proc = subprocess.Popen([sys.executable, path, *args], env=env_r, cwd=str(REPO),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            self.procs.append(proc)
            pump = threading.Thread(target=self._pump, args=(rank, proc), daemon=True)
            pump.start()
            self._pumps.append(pump)

    def _pump(self, rank: int, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._cv:
                self.lines[rank].append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._eof[rank] = True
            self._cv.notify_all()

    def find(self, rank: int, prefix: str) -> str | None:
        with self._cv:
            for line in self.lines[rank]:
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
        return None

    def wait_line(self, rank: int, prefix: str, timeout: float) -> str | None:
        """The rest of the first line of ``rank`` starting with ``prefix``; None when none
        came within ``timeout`` s (or the rank exited without printing it)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.lines[rank]:
                    if line.startswith(prefix):
                        return line[len(prefix):].strip()
                left = deadline - time.monotonic()
                if left <= 0 or self._eof[rank]:
                    return None
                self._cv.wait(min(left, 0.1))

    def output(self) -> str:
        with self._cv:
            return "\n".join(f"[{r}] {ln}" for r in range(self.n) for ln in self.lines[r])

    def release(self, rank: int) -> None:
        """Close the rank's stdin (workers block on it to stay alive until told)."""
        try:
            self.procs[rank].stdin.close()
        except OSError:
            pass

    def kill(self, rank: int) -> float:
        """SIGKILL one rank; returns the time.time() of the kill."""
        self.procs[rank].send_signal(signal.SIGKILL)
        return time.time()

    def wait_all(self, timeout: float) -> list[int | None]:
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return codes

    def __enter__(self) -> "Ranks":
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        for p, pump in zip(self.procs, self._pumps):
            pump.join(2)
            try:
                p.stdin.close()
            except (OSError, ValueError):
                pass
        self.server.stop()
