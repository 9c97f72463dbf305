"""Run the ranks of this machine (and the job's summation servers) as one fail-fast group
of process groups.

Each process starts in its own session (``start_new_session=True``), so its process group
holds it and anything it spawns; signalling the group reaches the whole tree. The
supervisor polls the ranks; the first that exits non-zero (or dies by a signal) takes the
job down: SIGTERM to every group, SIGKILL after ``grace`` seconds, and collxrun exits with
that rank's code (128+N for signal N). SIGINT/SIGTERM/SIGHUP to collxrun are forwarded the
same way, and ``timeout`` bounds the whole job (exit 124).

Summation servers (``collxrun --servers K``; :func:`server_command` says what runs) are
started before the ranks and supervised with them: a server exiting non-zero before every
rank has exited takes the job down like a failing rank (its exit code). Once every rank has
exited 0 the servers get SIGTERM (their normal end), SIGKILL after ``grace``; how they end
then is reported but does not change the exit code, which is the ranks' (0).

Output: each line a process writes is re-emitted as it completes, as
``[<rank>]<stdout>:<line>`` on collxrun's stdout or ``[<rank>]<stderr>:<line>`` on its
stderr (horovodrun's format), ``[s<k>]<stdout>:`` / ``[s<k>]<stderr>:`` for server k;
lines longer than 64 KiB are split. Every process gets stdin from /dev/null.

:class:`ProcessGroup` and :func:`run_group` know nothing about where a process runs (its
argv may enter another host first); ``netns.py`` reuses them for emulated hosts.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from .spec import RankSpec, ServerSpec, rank_env, server_env

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


def server_command(env: dict[str, str] | None = None) -> list[str]:
    """The command of a summation server: ``python -m collx.server`` with this Python, or
    COLLX_SERVER_COMMAND (split like a shell line, e.g. to run the servers under a
    profiler: ``COLLX_SERVER_COMMAND="py-spy record -o s.svg -- python -m collx.server"``)."""
    text = (os.environ if env is None else env).get("COLLX_SERVER_COMMAND", "").strip()
    if text:
        return shlex.split(text)
    return [sys.executable, "-m", "collx.server"]


@dataclass(frozen=True)
class Launch:
    """One process to start (pure data): a rank (``index`` = its rank) or a summation
    server (``index`` = its server index), the argv that starts it and its environment."""
    kind: str                  # "rank" or "server"
    index: int
    host: str
    argv: list[str]
    env: dict[str, str]
    shown: str = ""            # the command's name in messages (default: argv[0])

    @property
    def label(self) -> str:
        """Output prefix tag: ``3`` for rank 3, ``s1`` for server 1."""
        return str(self.index) if self.kind == "rank" else f"s{self.index}"

    @property
    def name(self) -> str:
        return f"{self.kind} {self.index}"


@dataclass
class Member:
    """A started process of the job: its launch, process, and output pump threads."""
    launch: Launch
    proc: subprocess.Popen
    pumps: list[threading.Thread] = field(default_factory=list)

    @property
    def pgid(self) -> int:
        return self.proc.pid  # session leader: pgid == pid

    def describe(self) -> str:
        return f"{self.launch.name} (pid {self.proc.pid}, host {self.launch.host})"


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


class ProcessGroup:
    """Processes of one job (ranks, and summation servers if any), each in its own
    session, started and supervised together."""

    def __init__(self, launches: list[Launch], prefix: bool = True,
                 stdout: BinaryIO | None = None, stderr: BinaryIO | None = None) -> None:
        self.launches, self.prefix = launches, prefix
        self._out = _Output(stdout or sys.stdout.buffer)
        self._err = _Output(stderr or sys.stderr.buffer)
        self.members: list[Member] = []
        self.starting: Launch | None = None   # the launch start() is at (for messages)

    @property
    def ranks(self) -> list[Member]:
        return [m for m in self.members if m.launch.kind == "rank"]

    @property
    def servers(self) -> list[Member]:
        return [m for m in self.members if m.launch.kind == "server"]

    def counts(self) -> str:
        """``"2 rank(s)"`` or ``"2 rank(s) and 1 server(s)"`` for the whole job."""
        ranks = sum(1 for x in self.launches if x.kind == "rank")
        servers = len(self.launches) - ranks
        return f"{ranks} rank(s)" + (f" and {servers} server(s)" if servers else "")

    def start(self) -> None:
        """Start every launch in order; on a failure to exec raise (``self.starting`` says
        which); the caller kills those already started."""
        pipe = subprocess.PIPE if self.prefix else None
        for launch in self.launches:
            self.starting = launch
            proc = subprocess.Popen(launch.argv, env=launch.env, stdin=subprocess.DEVNULL,
                                    stdout=pipe, stderr=pipe, start_new_session=True)
            member = Member(launch, proc)
            self.members.append(member)
            if self.prefix:
                for stream, out, tag in ((proc.stdout, self._out, "stdout"),
                                         (proc.stderr, self._err, "stderr")):
                    t = threading.Thread(target=out.pump, daemon=True,
                                         args=(stream, f"[{launch.label}]<{tag}>:".encode()),
                                         name=f"collxrun-{launch.label}-{tag}")
                    t.start()
                    member.pumps.append(t)
        self.starting = None

    @staticmethod
    def first_failure(members: list[Member]) -> Member | None:
        """Reap exited ``members``; the first failed one in list order (lowest rank if
        several failed since the last poll), or None."""
        failed = [m for m in members if m.proc.poll() not in (None, 0)]
        return failed[0] if failed else None

    def all_exited(self, members: list[Member] | None = None) -> bool:
        return all(m.proc.poll() is not None
                   for m in (self.members if members is None else members))

    def live(self, members: list[Member] | None = None) -> set[int]:
        """Process groups of ``members`` (default: all) that still hold live processes."""
        return live_groups([m.pgid for m in (self.members if members is None else members)])

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every process group that still has live processes."""
        for pgid in self.live():
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
            if not self.live():
                break
            time.sleep(POLL_S)
        self.kill_all()

    def kill_all(self) -> None:
        """SIGKILL every live group, reap the processes, wait for the groups to empty."""
        self.signal_all(signal.SIGKILL)
        for m in self.members:
            try:
                m.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 2.0
        while self.live() and time.monotonic() < deadline:
            self.signal_all(signal.SIGKILL)
            time.sleep(POLL_S)
        self.join_output()

    def join_output(self, timeout: float = 2.0) -> None:
        """Wait for the output pumps to drain what the processes wrote."""
        deadline = time.monotonic() + timeout
        for m in self.members:
            for t in m.pumps:
                t.join(max(0.0, deadline - time.monotonic()))


class LocalGroup(ProcessGroup):
    """The ranks (and summation servers) of this machine."""

    def __init__(self, specs: list[RankSpec], command: list[str], env: dict[str, str],
                 store_addr: str, secret: str, prefix: bool = True,
                 stdout: BinaryIO | None = None, stderr: BinaryIO | None = None,
                 servers: list[ServerSpec] | None = None,
                 server_argv: list[str] | None = None) -> None:
        servers = servers or []
        server_argv = server_argv or server_command(env)
        # Servers first, so they are up by the time the ranks look for them.
        launches = [Launch("server", s.index, s.host, list(server_argv),
                           server_env(env, s, store_addr, secret))
                    for s in servers]
        launches += [Launch("rank", spec.rank, spec.host, list(command),
                            rank_env(env, spec, store_addr, secret, len(servers)))
                     for spec in specs]
        super().__init__(launches, prefix, stdout, stderr)
        self.specs, self.command = specs, command


def supervise(group: ProcessGroup, grace: float, timeout: float | None,
              stop: "_StopRequest") -> int:
    """Run the started ``group`` to completion; collxrun's exit code.

    A failing rank, or a server failing before the ranks are done, takes the whole job down
    (its exit code). When every rank has exited 0 the servers get SIGTERM (their normal
    end), SIGKILL after ``grace``; how they end then does not change the exit code (0)."""
    started = time.monotonic()
    ranks, servers = group.ranks, group.servers
    early_exit_noted: set[int] = set()
    while True:
        failed = group.first_failure(ranks)
        if failed is not None:
            code = failed.proc.returncode
            _say(f"{failed.describe()} {describe_exit(code)}; terminating "
                 f"{_the_others(group, failed)}")
            group.shutdown(signal.SIGTERM, grace, stop.event)
            return exit_status(code)
        if group.all_exited(ranks):
            return _finish(group, grace, stop)
        failed = group.first_failure(servers)
        if failed is not None:
            code = failed.proc.returncode
            _say(f"{failed.describe()} {describe_exit(code)} before the ranks finished; "
                 f"terminating {_the_others(group, failed)}")
            group.shutdown(signal.SIGTERM, grace, stop.event)
            return exit_status(code)
        for m in servers:
            if m.proc.returncode == 0 and m.launch.index not in early_exit_noted:
                early_exit_noted.add(m.launch.index)
                _say(f"note: {m.describe()} exited with code 0 before the ranks finished")
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            _say(f"received {name}; forwarding it to all {group.counts()}")
            group.shutdown(stop.signum, grace, stop.escalate)
            return 128 + stop.signum
        if timeout is not None and time.monotonic() - started > timeout:
            _say(f"job exceeded --timeout {timeout:g} s; terminating all {group.counts()}")
            group.shutdown(signal.SIGTERM, grace, stop.event)
            return EXIT_TIMEOUT
        stop.event.wait(POLL_S)


def _the_others(group: ProcessGroup, failed: Member) -> str:
    ranks = len(group.ranks) - (failed.launch.kind == "rank")
    servers = len(group.servers) - (failed.launch.kind == "server")
    text = f"the other {ranks} rank(s)" if failed.launch.kind == "rank" else f"all {ranks} rank(s)"
    if servers:
        text += f" and {'the other ' if failed.launch.kind == 'server' else ''}{servers} server(s)"
    return text


def _finish(group: ProcessGroup, grace: float, stop: "_StopRequest") -> int:
    """Every rank exited 0: end the servers (SIGTERM is their normal end) and whatever the
    ranks left running; the job succeeded whatever the servers do now."""
    running = [m for m in group.servers if m.proc.poll() is None]
    lingering = group.live(group.ranks)
    if lingering:
        _say(f"all ranks exited but {len(lingering)} process group(s) still hold "
             f"processes the ranks started; terminating them")
    group.shutdown(signal.SIGTERM, grace if (lingering or running) else 0.0, stop.event)
    for m in group.servers:
        code = m.proc.returncode
        if m in running and code == -signal.SIGKILL:
            _say(f"warning: {m.describe()} did not end within the grace period after "
                 f"SIGTERM; it was killed (SIGKILL)")
        elif code not in (0, -signal.SIGTERM, None):
            when = "after SIGTERM" if m in running else "as the ranks finished"
            _say(f"warning: {m.describe()} {describe_exit(code)} {when} (not counted as a "
                 f"failure: every rank succeeded)")
    return 0


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


def run_group(group: ProcessGroup, *, grace: float, timeout: float | None,
              on_started: Callable[[], None] | None = None) -> int:
    """Start ``group`` and supervise it (forwarding SIGINT/SIGTERM/SIGHUP when called from
    the main thread); the job's exit code. ``on_started`` runs once everything started."""
    stop = _StopRequest()
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, stop) for s in handled}
    try:
        try:
            group.start()
        except OSError as exc:
            launch = group.starting
            what = launch.name if launch else "the job"
            shown = (launch.shown or launch.argv[0]) if launch else "?"
            _say(f"cannot start {what}: {shown!r}: {exc}")
            group.kill_all()
            return 127 if isinstance(exc, FileNotFoundError) else 126
        if on_started is not None:
            on_started()
        return supervise(group, grace, timeout, stop)
    except BaseException:
        group.kill_all()
        raise
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run(specs: list[RankSpec], command: list[str], *, store_addr: str, secret: str,
        grace: float, timeout: float | None, prefix: bool = True,
        env: dict[str, str] | None = None, servers: list[ServerSpec] | None = None,
        server_argv: list[str] | None = None) -> int:
    """Start ``command`` once per spec on this machine, and the summation server command
    (``server_argv``, default :func:`server_command`) once per server spec, and supervise
    them; the exit code."""
    group = LocalGroup(specs, command, dict(os.environ if env is None else env),
                       store_addr, secret, prefix, servers=servers, server_argv=server_argv)
    return run_group(group, grace=grace, timeout=timeout)
