"""Launch a collx job on emulated hosts: network namespaces made by netns-cluster.sh.

    python -m collx.runner.netns --hosts 2 --per-host 2 [--rate 1gbit] [--server-hosts 4]
                                 [--keep] [--fresh] [--timeout S] [--grace S] -- COMMAND...

Brings up ``netns-cluster.sh up H RATE`` (H = worker hosts + server hosts; an already
running cluster of the same shape is reused unless --fresh), starts the rendezvous store
(``python -m collx.rendezvous.serve``) inside host 1, then ``--per-host`` ranks of COMMAND
in each of hosts 1..W, host-major (host 1 holds ranks 0..per_host-1), and one summation
server (``python -m collx.server``, or COLLX_SERVER_COMMAND) in each of hosts W+1..H.

Every rank gets what collxrun gives it (COLLX_RANK, COLLX_SIZE, COLLX_LOCAL_RANK/SIZE,
COLLX_CROSS_RANK/SIZE, COLLX_STORE_ADDR, COLLX_SECRET, COLLX_SERVERS) plus COLLX_HOST_ADDR,
its host's address; server k gets COLLX_SIZE, COLLX_SERVERS, COLLX_SERVER_INDEX=k,
COLLX_STORE_ADDR, COLLX_SECRET and COLLX_HOST_ADDR, no COLLX_RANK. Output is prefixed like
collxrun's (``[rank]<stdout>:``, ``[s<k>]<stderr>:``, ``[store]<stderr>:``), and the job is
supervised exactly like collxrun's (fail-fast, servers ended by SIGTERM once every rank
exited 0, exit code the ranks'). The cluster is taken down at the end unless --keep.

All processes of one host share its network, UTS (hostname) and mount namespaces: the
launcher starts one small anchor process per host with ``netns-cluster.sh exec I`` and
enters the anchor's namespaces with nsenter for each process of that host, so the ranks of
a host see each other as one host (shared memory) and the others as remote (TCP).

Needs root, iproute2 (ip, tc) and util-linux (nsenter, unshare). The script is
<repo>/../shared/tools/netns-cluster.sh unless COLLX_NETNS_SCRIPT names another.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import config
from ..errors import CollxError
from . import local
from .spec import plan_grid, plan_servers, rank_env, server_env

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SCRIPT = REPO.parent / "shared" / "tools" / "netns-cluster.sh"
PREFIX = "collx-h"
_START_S = 30.0   # how long the store and an anchor may take to come up


class NetnsError(CollxError):
    """The emulated cluster cannot be used (missing prerequisite, script failure)."""


def script_path(env: dict[str, str] | None = None) -> Path:
    """netns-cluster.sh: COLLX_NETNS_SCRIPT, else <repo>/../shared/tools/netns-cluster.sh."""
    text = (os.environ if env is None else env).get("COLLX_NETNS_SCRIPT", "")
    return Path(text) if text else DEFAULT_SCRIPT


def missing_prerequisite(script: Path) -> str | None:
    """Why this machine cannot run emulated hosts, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    if not script.is_file():
        return f"{script} not found (set COLLX_NETNS_SCRIPT to netns-cluster.sh)"
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2"), ("nsenter", "util-linux"),
                          ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"{tool} not found (install {package})"
    return None


def rate_bps(rate: str) -> int:
    """``"10gbit"`` -> 10_000_000_000 bit/s; 0 for unshaped ("0", "-", "none", "")."""
    text = rate.strip().lower()
    if text in ("", "0", "-", "none"):
        return 0
    m = re.fullmatch(r"(\d+)(gbit|mbit|kbit|bit|)", text)
    if not m:
        raise NetnsError(f"bad rate {rate!r} (use e.g. 10gbit, 500mbit, or 0 for unshaped)")
    return int(m.group(1)) * {"gbit": 10**9, "mbit": 10**6, "kbit": 10**3}.get(m.group(2), 1)


class Cluster:
    """The hosts collx-h1..collx-hN of netns-cluster.sh."""

    def __init__(self, script: Path | None = None) -> None:
        self.script = Path(script) if script is not None else script_path()

    def check(self) -> None:
        why = missing_prerequisite(self.script)
        if why:
            raise NetnsError(f"cannot emulate hosts: {why}")

    def sh(self, *args: str, timeout: float = 120) -> str:
        res = subprocess.run(["bash", str(self.script), *args], capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if res.returncode != 0:
            raise NetnsError(f"netns-cluster.sh {' '.join(args)} failed "
                             f"({res.returncode}): {res.stderr.strip()}")
        return res.stdout

    def addr(self, i: int) -> str:
        return self.sh("addr", str(i)).strip()

    def exec_argv(self, i: int, argv: list[str]) -> list[str]:
        """argv that runs ``argv`` inside host ``i`` (its own fresh UTS namespace)."""
        return ["bash", str(self.script), "exec", str(i), *argv]

    @staticmethod
    def _namespaces() -> set[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             timeout=30).stdout
        return {line.split()[0] for line in out.splitlines() if line.strip()}

    def shape(self) -> tuple[int, list[int | None]] | None:
        """(hosts, link rate in bit/s of each host: 0 unshaped, None something else such as
        netem) of the running cluster; None when none runs or it is incomplete."""
        names = {n for n in self._namespaces() if re.fullmatch(rf"{PREFIX}(\d+|sw)", n)}
        hosts = sorted(int(n[len(PREFIX):]) for n in names if n[len(PREFIX):].isdigit())
        if f"{PREFIX}sw" not in names or not hosts or hosts != list(range(1, len(hosts) + 1)):
            return None
        rates: list[int | None] = []
        for i in hosts:
            res = subprocess.run(["tc", "-n", f"{PREFIX}{i}", "-j", "qdisc", "show", "dev",
                                  "eth0"], capture_output=True, text=True, timeout=30)
            try:
                qdiscs = [q for q in json.loads(res.stdout or "[]") if q.get("root")]
            except ValueError:
                return None
            if res.returncode != 0:
                return None
            kind = qdiscs[0].get("kind") if qdiscs else "noqueue"
            if kind == "tbf":
                rates.append(int(qdiscs[0].get("options", {}).get("rate", -1)) * 8)
            elif kind in ("netem",):
                rates.append(None)
            else:
                rates.append(0)
        return len(hosts), rates

    def up(self, hosts: int, rate: str = "0", fresh: bool = False) -> bool:
        """Make sure hosts 1..``hosts`` run with links shaped to ``rate``; True when an
        existing cluster of that shape was reused."""
        want = rate_bps(rate)
        if not fresh and self.shape() == (hosts, [want] * hosts):
            return True
        self.sh("up", str(hosts), rate if want else "0")
        return False

    def down(self) -> None:
        self.sh("down")


def _enter_argv(anchor_pid: int, argv: list[str], cwd: str) -> list[str]:
    """argv that runs ``argv`` in the namespaces of the host anchor ``anchor_pid`` (no
    fork: the started process is the command itself, in its own session)."""
    return ["nsenter", "--target", str(anchor_pid), "--net", "--uts", "--mount",
            f"--wd={cwd}", "--", *argv]


def _read_line(proc: subprocess.Popen, what: str, timeout: float) -> str:
    """First line ``proc`` writes on stdout (bytes pipe), within ``timeout``."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NetnsError(f"{what} did not start within {timeout:g} s")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                proc.wait(timeout=5)
                raise NetnsError(f"{what} exited ({local.describe_exit(proc.returncode)}) "
                                 f"before it was ready")
            buf += chunk
    line, _, rest = buf.partition(b"\n")
    if rest.strip():
        sys.stderr.buffer.write(rest)
    return line.decode().strip()


class _Infra:
    """The job's helper processes: one namespace anchor per host and the store."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.anchors: dict[int, subprocess.Popen] = {}
        self.store: subprocess.Popen | None = None
        self.pumps: list[threading.Thread] = []

    def anchor(self, i: int) -> int:
        """pid of a process that lives in host ``i``'s namespaces (started once)."""
        if i not in self.anchors:
            # `exec I` sets the hostname, then this sh becomes `cat`: it lives until its
            # stdin (our pipe) closes, so it never outlives the launcher.
            proc = subprocess.Popen(
                self.cluster.exec_argv(i, ["sh", "-c", "echo ready && exec cat >/dev/null"]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
            self.anchors[i] = proc
            line = _read_line(proc, f"the anchor of host {PREFIX}{i}", _START_S)
            if line != "ready":
                raise NetnsError(f"the anchor of host {PREFIX}{i} said {line!r}")
        return self.anchors[i].pid

    def start_store(self, addr: str, env: dict[str, str], cwd: str, prefix: bool) -> str:
        """Start the rendezvous store in host 1 listening on ``addr``; its host:port."""
        argv = [sys.executable, "-m", "collx.rendezvous.serve", "--host", addr]
        self.store = subprocess.Popen(
            _enter_argv(self.anchor(1), argv, cwd), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE if prefix else None,
            start_new_session=True)
        if prefix:
            out = local._Output(sys.stderr.buffer)
            t = threading.Thread(target=out.pump, args=(self.store.stderr, b"[store]<stderr>:"),
                                 daemon=True, name="collx-netns-store-stderr")
            t.start()
            self.pumps.append(t)
        store_addr = _read_line(self.store, "the rendezvous store", _START_S)
        if not store_addr.startswith(addr + ":"):
            raise NetnsError(f"the rendezvous store printed {store_addr!r}, not {addr}:PORT")
        return store_addr

    def stop(self) -> None:
        procs = list(self.anchors.values()) + ([self.store] if self.store else [])
        for p in procs:
            if p.stdin:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 5.0
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                p.wait(timeout=5.0)
        for p in procs:
            if p.stdout:
                p.stdout.close()
        for t in self.pumps:
            t.join(2.0)


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def launch(command: list[str], *, hosts: int, per_host: int = 1, server_hosts: int = 0,
           rate: str = "0", keep: bool = False, fresh: bool = False,
           grace: float | None = None, timeout: float | None = None, prefix: bool = True,
           env: dict[str, str] | None = None, script: Path | str | None = None,
           server_argv: list[str] | None = None) -> int:
    """Run ``command`` as ``hosts`` x ``per_host`` ranks on emulated hosts, plus one
    summation server on each of ``server_hosts`` more hosts; the job's exit code (as
    collxrun's). Raises :class:`NetnsError` when the cluster cannot be used."""
    if not command:
        raise NetnsError("no command given")
    if hosts < 1 or per_host < 1 or server_hosts < 0:
        raise NetnsError(f"need --hosts >= 1, --per-host >= 1, --server-hosts >= 0; got "
                         f"{hosts}, {per_host}, {server_hosts}")
    base = dict(os.environ if env is None else env)
    grace = config.get("COLLX_GRACE") if grace is None else grace
    if grace < 0 or (timeout is not None and timeout <= 0):
        raise NetnsError("--grace must be >= 0 and --timeout > 0")
    rate_bps(rate)  # refuse a bad rate before touching anything
    cluster = Cluster(Path(script) if script is not None else script_path(base))
    cluster.check()
    total = hosts + server_hosts
    infra = _Infra(cluster)
    cwd = os.getcwd()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # Until the job runs (run_group forwards signals from then on), a signal ends the
        # setup through the cleanup below rather than leaving hosts and helpers behind.
        previous = {s: signal.signal(s, _interrupt)
                    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        cluster.up(total, rate, fresh)
        addrs = {i: cluster.addr(i) for i in range(1, total + 1)}
        secret = secrets.token_hex(32)
        store_addr = infra.start_store(addrs[1], dict(base, COLLX_SECRET=secret), cwd, prefix)
        specs = plan_grid([f"{PREFIX}{h}" for h in range(1, hosts + 1)], per_host)
        servers = plan_servers(server_hosts, len(specs),
                               [f"{PREFIX}{hosts + 1 + k}" for k in range(server_hosts)])
        server_argv = server_argv or local.server_command(base)
        launches = []
        for s in servers:
            i = hosts + 1 + s.index
            launches.append(local.Launch(
                "server", s.index, s.host, _enter_argv(infra.anchor(i), server_argv, cwd),
                server_env(base, s, store_addr, secret, COLLX_HOST_ADDR=addrs[i]),
                shown=server_argv[0]))
        for spec in specs:
            i = spec.cross_rank + 1
            launches.append(local.Launch(
                "rank", spec.rank, spec.host, _enter_argv(infra.anchor(i), command, cwd),
                rank_env(base, spec, store_addr, secret, len(servers),
                         COLLX_HOST_ADDR=addrs[i]),
                shown=command[0]))
        group = local.ProcessGroup(launches, prefix)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        previous = {}
        return local.run_group(group, grace=grace, timeout=timeout)
    except _Interrupted as exc:
        local._say(f"received {signal.Signals(exc.signum).name} while starting; "
                   f"cleaning up")
        return 128 + exc.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        infra.stop()
        if not keep:
            try:
                cluster.down()
            except (NetnsError, subprocess.TimeoutExpired) as exc:
                sys.stderr.write(f"collx.runner.netns: warning: taking the hosts down: "
                                 f"{exc}\n")


_VALUE_OPTS = {"--hosts", "--per-host", "--server-hosts", "--rate", "--timeout", "--grace"}
_FLAG_OPTS = {"--keep", "--fresh", "--no-prefix", "-h", "--help"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m collx.runner.netns",
        usage="python -m collx.runner.netns --hosts W [--per-host P] [--server-hosts S] "
              "[--rate RATE] [--keep] [options] [--] command [args...]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts", type=int, required=True, metavar="W",
                   help="emulated hosts that run ranks (collx-h1..collx-hW)")
    p.add_argument("--per-host", type=int, default=1, metavar="P",
                   help="ranks per host (default 1); rank = (host-1)*P + local rank")
    p.add_argument("--server-hosts", type=int, default=0, metavar="S",
                   help="more hosts, collx-h(W+1)..collx-h(W+S), each running one summation "
                        "server (python -m collx.server, or COLLX_SERVER_COMMAND); sets "
                        "COLLX_SERVERS=S (default 0)")
    p.add_argument("--rate", default="0",
                   help="tc rate of every host link and direction, e.g. 10gbit, 1gbit, "
                        "500mbit; 0 = unshaped (default)")
    p.add_argument("--keep", action="store_true",
                   help="leave the emulated hosts up at the end (default: take them down)")
    p.add_argument("--fresh", action="store_true",
                   help="recreate the hosts even when a cluster of the same shape is up")
    p.add_argument("--timeout", type=float, default=None,
                   help="wall-clock limit of the job in seconds; exit 124 past it")
    p.add_argument("--grace", type=float, default=None,
                   help="seconds between SIGTERM and SIGKILL when tearing the job down "
                        "(default: the COLLX_GRACE knob, 5 s)")
    p.add_argument("--no-prefix", action="store_true",
                   help="pass output through unchanged (no [rank] prefix)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m collx.runner.netns``; returns the exit code."""
    from .cli import parse_launch
    parsed = parse_launch(argv, _parser(), "collx.runner.netns", _VALUE_OPTS, _FLAG_OPTS)
    if isinstance(parsed, int):
        return parsed
    args, command = parsed
    try:
        return launch(command, hosts=args.hosts, per_host=args.per_host,
                      server_hosts=args.server_hosts, rate=args.rate, keep=args.keep,
                      fresh=args.fresh, grace=args.grace, timeout=args.timeout,
                      prefix=not args.no_prefix)
    except CollxError as exc:
        sys.stderr.write(f"collx.runner.netns: error: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
