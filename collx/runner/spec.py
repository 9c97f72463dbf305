"""What to start where: parse ``-H host:slots,...`` and lay ranks out on hosts.

The launcher is split so multi-host (ssh) launching slots in later: this module turns the
command line into a list of :class:`RankSpec` (pure data, one per rank), ``local.py`` starts
the ones on this machine, and a future ``ssh.py`` will start the others.
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

    def env(self, store_addr: str, secret: str) -> dict[str, str]:
        """The environment variables collxrun sets for this rank."""
        return {
            "COLLX_RANK": str(self.rank), "COLLX_SIZE": str(self.size),
            "COLLX_LOCAL_RANK": str(self.local_rank),
            "COLLX_LOCAL_SIZE": str(self.local_size),
            "COLLX_CROSS_RANK": str(self.cross_rank),
            "COLLX_CROSS_SIZE": str(self.cross_size),
            "COLLX_STORE_ADDR": store_addr, "COLLX_SECRET": secret,
            "PYTHONUNBUFFERED": "1",
        }


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
