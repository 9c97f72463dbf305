"""Run the ranks of this machine as one fail-fast group of process groups.

Each rank starts in its own session (``start_new_session=True``), so its process group
holds the rank and anything it spawns; signalling the group reaches the whole tree. The
supervisor polls the ranks; the first that exits non-zero (or dies by a signal) takes the
job down: SIGTERM to every group, SIGKILL after ``grace`` seconds, and collxrun exits with
that rank's code (128+N for signal N). SIGINT/SIGTERM/SIGHUP to collxrun are forwarded the
same way, and ``timeout`` bounds the whole job (exit 124).

Output: each line a rank writes is re-emitted as it completes, as
``[<rank>]<stdout>:<line>`` on collxrun's stdout or ``[<rank>]<stderr>:<line>`` on its
stderr (horovodrun's format); lines longer than 64 KiB are split. Ranks get stdin from
/dev/null.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from .spec import RankSpec

POLL_S = 0.02
_MAX_LINE = 1 << 16
EXIT_TIMEOUT = 124


def _say(message: str) -> None:
    sys.stderr.write(f"collxrun: {message}\n")
    sys.stderr.flush()


def describe_exit(code: int) -> str:
    """Human form of a Popen returncode (negative = killed by that signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name} (signal {-code})"
    return f"exited with code {code}"


def exit_status(code: int) -> int:
    """Shell convention: a signal death N becomes 128+N."""
    return 128 - code if code < 0 else code


def live_groups(pgids: list[int]) -> set[int]:
    """Which of ``pgids`` still hold a process that is not a zombie. Reads /proc (Linux);
    elsewhere falls back to killpg(pgid, 0), which also counts zombies."""
    wanted = set(pgids)
    if not wanted:
        return set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = None
    if entries is None:
        alive = set()
        for pgid in wanted:
            try:
                os.killpg(pgid, 0)
                alive.add(pgid)
            except (ProcessLookupError, PermissionError):
                pass
        return alive
    alive = set()
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parens.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and int(fields[2]) in wanted:
            alive.add(int(fields[2]))
    return alive


@dataclass
class Rank:
    """A started rank: its spec, process, and output pump threads."""
    spec: RankSpec
    proc: subprocess.Popen
    pumps: list[threading.Thread] = field(default_factory=list)

    @property
    def pgid(self) -> int:
        return self.proc.pid  # session leader: pgid == pid


class _Output:
    """Serializes prefixed lines from all pump threads onto one stream."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.lock = stream, threading.Lock()

    def pump(self, pipe: BinaryIO, prefix: bytes) -> None:
        try:
            for line in iter(lambda: pipe.readline(_MAX_LINE), b""):
                if not line.endswith(b"\n"):
                    line += b"\n"
                with self.lock:
                    try:
                        self.stream.write(prefix + line)
                        self.stream.flush()
                    except (OSError, ValueError):
                        pass  # our own stdout closed: keep draining so ranks don't block
        finally:
            pipe.close()


class LocalGroup:
    """The ranks of this machine, started and supervised together."""

    def __init__(self, specs: list[RankSpec], command: list[str], env: dict[str, str],
                 store_addr: str, secret: str, prefix: bool = True,
                 stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> None:
        self.specs, self.command, self.env = specs, command, env
        self.store_addr, self.secret, self.prefix = store_addr, secret, prefix
        self._out = _Output(stdout or sys.stdout.buffer)
        self._err = _Output(stderr or sys.stderr.buffer)
        self.ranks: list[Rank] = []

    def start(self) -> None:
        """Start every rank; on a failure to exec, kill those already started and raise."""
        pipe = subprocess.PIPE if self.prefix else None
        for spec in self.specs:
            env = dict(self.env)
            env.update(spec.env(self.store_addr, self.secret))
            proc = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL,
                                    stdout=pipe, stderr=pipe, start_new_session=True)
            rank = Rank(spec, proc)
            self.ranks.append(rank)
            if self.prefix:
                for stream, out, tag in ((proc.stdout, self._out, "stdout"),
                                         (proc.stderr, self._err, "stderr")):
                    t = threading.Thread(target=out.pump, daemon=True,
                                         args=(stream, f"[{spec.rank}]<{tag}>:".encode()),
                                         name=f"collxrun-{spec.rank}-{tag}")
                    t.start()
                    rank.pumps.append(t)

    def first_failure(self) -> Rank | None:
        """Reap exited ranks; the failed one (lowest rank if several failed since the last
        poll), or None."""
        failed = [r for r in self.ranks if r.proc.poll() not in (None, 0)]
        return failed[0] if failed else None

    def all_exited(self) -> bool:
        return all(r.proc.poll() is not None for r in self.ranks)

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every rank's process group that still has live processes."""
        for pgid in live_groups([r.pgid for r in self.ranks]):
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def shutdown(self, sig: int, grace: float, escalate: threading.Event | None = None) -> None:
        """``sig`` to every group, then SIGKILL to whatever is alive after ``grace`` s (or at
        once when ``escalate`` is set, e.g. by a second Ctrl-C); reap and drain output."""
        self.signal_all(sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not (escalate and escalate.is_set()):
            self.all_exited()  # reap, so exited leaders stop counting
            if not live_groups([r.pgid for r in self.ranks]):
                break
            time.sleep(POLL_S)
        self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL every live group, reap the ranks, wait for the groups to empty."""
        self.signal_all(signal.SIGKILL)
        for r in self.ranks:
            try:
                r.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 2.0
        while live_groups([r.pgid for r in self.ranks]) and time.monotonic() < deadline:
            self.signal_all(signal.SIGKILL)
            time.sleep(POLL_S)
        self.join_output()

    def join_output(self, timeout: float = 2.0) -> None:
        """Wait for the output pumps to drain what the ranks wrote."""
        deadline = time.monotonic() + timeout
        for r in self.ranks:
            for t in r.pumps:
                t.join(max(0.0, deadline - time.monotonic()))


def supervise(group: LocalGroup, grace: float, timeout: float | None,
              stop: "_StopRequest") -> int:
    """Run the started ``group`` to completion; collxrun's exit code."""
    started = time.monotonic()
    while True:
        failed = group.first_failure()
        if failed is not None:
            code = failed.proc.returncode
            others = len(group.ranks) - 1
            _say(f"rank {failed.spec.rank} (pid {failed.proc.pid}, host {failed.spec.host}) "
                 f"{describe_exit(code)}; terminating the other {others} rank(s)")
            group.shutdown(signal.SIGTERM, grace, stop.event)
            return exit_status(code)
        if group.all_exited():
            lingering = live_groups([r.pgid for r in group.ranks])
            if lingering:
                _say(f"all ranks exited but {len(lingering)} process group(s) still hold "
                     f"processes the ranks started; terminating them")
            group.shutdown(signal.SIGTERM, grace if lingering else 0.0, stop.event)
            return 0
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            _say(f"received {name}; forwarding it to all {len(group.ranks)} rank(s)")
            group.shutdown(stop.signum, grace, stop.escalate)
            return 128 + stop.signum
        if timeout is not None and time.monotonic() - started > timeout:
            _say(f"job exceeded --timeout {timeout:g} s; terminating all "
                 f"{len(group.ranks)} rank(s)")
            group.shutdown(signal.SIGTERM, grace, stop.event)
            return EXIT_TIMEOUT
        stop.event.wait(POLL_S)


class _StopRequest:
    """Signals received by collxrun: the first asks for a forwarded shutdown, a second
    one skips the grace period."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.event = threading.Event()      # wakes the supervisor loop
        self.escalate = threading.Event()   # a second signal: SIGKILL now

    def __call__(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            self.escalate.set()
        else:
            self.signum = signum
        self.event.set()


def run(specs: list[RankSpec], command: list[str], *, store_addr: str, secret: str,
        grace: float, timeout: float | None, prefix: bool = True,
        env: dict[str, str] | None = None) -> int:
    """Start ``command`` once per spec on this machine and supervise it; the exit code."""
    stop = _StopRequest()
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, stop) for s in handled}
    group = LocalGroup(specs, command, dict(os.environ if env is None else env),
                       store_addr, secret, prefix)
    try:
        try:
            group.start()
        except OSError as exc:
            _say(f"cannot start rank {len(group.ranks)}: {command[0]!r}: {exc}")
            group.kill_all()
            return 127 if isinstance(exc, FileNotFoundError) else 126
        return supervise(group, grace, timeout, stop)
    except BaseException:
        group.kill_all()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
