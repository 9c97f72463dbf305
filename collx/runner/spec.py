"""What to start where: parse ``-H host:slots,...`` and lay ranks out on hosts.

The launcher is split so multi-host (ssh) launching slots in later: this module turns the
command line into a list of :class:`RankSpec` (pure data, one per rank) and
:class:`ServerSpec` (one per summation server), ``local.py`` starts the ones on this
machine, ``netns.py`` the ones on emulated hosts (network namespaces), and a future
``ssh.py`` will start the others.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass

from ..errors import InvalidUsage


@dataclass(frozen=True)
class HostSlots:
    """One ``-H`` entry: a host name and how many ranks it may run."""
    host: str
    slots: int


@dataclass(frozen=True)
class RankSpec:
    """Identity of one rank: the COLLX_* variables it gets and the host it runs on."""
    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int
    host: str

    def env(self, store_addr: str, secret: str, servers: int = 0) -> dict[str, str]:
        """The environment variables collxrun sets for this rank (``servers``: how many
        summation servers run beside the ranks, COLLX_SERVERS)."""
        return {
            "COLLX_RANK": str(self.rank), "COLLX_SIZE": str(self.size),
            "COLLX_LOCAL_RANK": str(self.local_rank),
            "COLLX_LOCAL_SIZE": str(self.local_size),
            "COLLX_CROSS_RANK": str(self.cross_rank),
            "COLLX_CROSS_SIZE": str(self.cross_size),
            "COLLX_STORE_ADDR": store_addr, "COLLX_SECRET": secret,
            "COLLX_SERVERS": str(servers),
            "PYTHONUNBUFFERED": "1",
        }


@dataclass(frozen=True)
class ServerSpec:
    """Identity of one summation server (``collxrun --servers K``): index ``index`` of
    ``servers``, serving a world of ``size`` ranks. Servers get no COLLX_RANK."""
    index: int
    servers: int
    size: int
    host: str

    def env(self, store_addr: str, secret: str) -> dict[str, str]:
        """The environment variables collxrun sets for this server."""
        return {
            "COLLX_SIZE": str(self.size), "COLLX_SERVERS": str(self.servers),
            "COLLX_SERVER_INDEX": str(self.index),
            "COLLX_STORE_ADDR": store_addr, "COLLX_SECRET": secret,
            "PYTHONUNBUFFERED": "1",
        }


# Identity variables one kind of process must not inherit from the launcher's own
# environment (e.g. collxrun started from inside a rank): a server is no rank, and a rank
# is no server.
RANK_ONLY_VARS = ("COLLX_RANK", "COLLX_LOCAL_RANK", "COLLX_LOCAL_SIZE", "COLLX_CROSS_RANK",
                  "COLLX_CROSS_SIZE")
SERVER_ONLY_VARS = ("COLLX_SERVER_INDEX",)


def rank_env(base: dict[str, str], spec: RankSpec, store_addr: str, secret: str,
             servers: int = 0, **extra: str) -> dict[str, str]:
    """Full environment of a rank: ``base`` less server identity, plus the rank's."""
    env = {k: v for k, v in base.items() if k not in SERVER_ONLY_VARS}
    env.update(spec.env(store_addr, secret, servers), **extra)
    return env


def server_env(base: dict[str, str], spec: ServerSpec, store_addr: str, secret: str,
               **extra: str) -> dict[str, str]:
    """Full environment of a server: ``base`` less rank identity, plus the server's."""
    env = {k: v for k, v in base.items() if k not in RANK_ONLY_VARS}
    env.update(spec.env(store_addr, secret), **extra)
    return env


def plan_servers(servers: int, size: int, hosts: list[str] | None = None) -> list[ServerSpec]:
    """``servers`` server specs for a world of ``size`` ranks; server k runs on
    ``hosts[k]`` (default: this machine)."""
    if servers < 0:
        raise InvalidUsage(f"--servers must be >= 0, got {servers}")
    if hosts is not None and len(hosts) != servers:
        raise InvalidUsage(f"{servers} server(s) but {len(hosts)} server host(s)")
    return [ServerSpec(index=k, servers=servers, size=size,
                       host=hosts[k] if hosts is not None else "localhost")
            for k in range(servers)]


def plan_grid(hosts: list[str], per_host: int) -> list[RankSpec]:
    """``per_host`` ranks on each of ``hosts``, host-major: ``hosts[0]`` holds ranks
    0..per_host-1 (local ranks 0..per_host-1, cross rank 0), and so on."""
    if not hosts or per_host < 1:
        raise InvalidUsage(f"need at least one host and one rank per host, got "
                           f"{len(hosts)} host(s) x {per_host}")
    size = len(hosts) * per_host
    return [RankSpec(rank=h * per_host + lr, size=size, local_rank=lr, local_size=per_host,
                     cross_rank=h, cross_size=len(hosts), host=host)
            for h, host in enumerate(hosts) for lr in range(per_host)]


def local_names() -> set[str]:
    """Names that mean "this machine" (no DNS lookups: they can hang)."""
    names = {"localhost", "localhost.localdomain", "127.0.0.1", "::1"}
    hostname = socket.gethostname()
    names |= {hostname, hostname.split(".")[0]}
    return {n.lower() for n in names}


def is_local(host: str) -> bool:
    return host.lower() in local_names()


def parse_hosts(text: str) -> list[HostSlots]:
    """``"localhost:2,node1:4"`` -> HostSlots list; a host without ``:slots`` has one slot
    (horovodrun's rule)."""
    out: list[HostSlots] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        host, sep, slots = item.rpartition(":")
        if not sep:
            host, slots = item, "1"
        if not host or not slots.isdigit() or int(slots) < 1:
            raise InvalidUsage(f"-H entry {item!r} is not host:slots (e.g. localhost:4)")
        out.append(HostSlots(host, int(slots)))
    if not out:
        raise InvalidUsage(f"-H {text!r} names no hosts (e.g. -H localhost:4)")
    return out


def plan(np: int, hosts: list[HostSlots] | None = None) -> list[RankSpec]:
    """Lay ``np`` ranks onto ``hosts`` in order (fill each host's slots before the next);
    entries naming this machine twice are merged. Refuses remote hosts for now."""
    if np < 1:
        raise InvalidUsage(f"-np must be >= 1, got {np}")
    if hosts is None:
        hosts = [HostSlots("localhost", np)]
    remote = [h.host for h in hosts if not is_local(h.host)]
    if remote:
        raise InvalidUsage(f"host(s) {', '.join(remote)} are not this machine; launching on "
                           f"other hosts (over ssh) is a later feature of collxrun. For now "
                           f"run on one machine: -H localhost:{np}")
    # All hosts are this machine: merge them into one host entry.
    merged = [HostSlots("localhost", sum(h.slots for h in hosts))]
    total = sum(h.slots for h in merged)
    if total < np:
        raise InvalidUsage(f"-np {np} asks for more ranks than the {total} slot(s) -H gives; "
                           f"raise the slot counts (e.g. -H localhost:{np})")
    specs: list[RankSpec] = []
    used = []
    for h in merged:
        n = min(h.slots, np - len(specs))
        if n > 0:
            used.append((h.host, n))
    for cross_rank, (host, n) in enumerate(used):
        for local_rank in range(n):
            specs.append(RankSpec(rank=len(specs), size=np, local_rank=local_rank,
                                  local_size=n, cross_rank=cross_rank,
                                  cross_size=len(used), host=host))
    return specs
