"""The topology model: what every rank learned about every host, as plain dataclasses that
dump to JSON and load back identically (``Topology.from_json(t.to_json()) == t``).

Nothing here reads the machine (that is ``collx.topo.detect``); a Topology can be built by
``collx.topo.exchange.gather_topology`` on a live job or loaded from a file
(COLLX_TOPO_FILE) to test selection on machines we do not have (tests/fixtures/topo).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import InvalidUsage

SCHEMA = "collx.topology"
_SCALAR_LIST = re.compile(r"\[[^\[\]{}]*\]")
_NEWLINE_INDENT = re.compile(r"\n\s*")
SCHEMA_VERSION = 1


@dataclass
class NicAddress:
    address: str            # dotted IPv4
    prefix: int             # netmask length


@dataclass
class Nic:
    name: str
    addresses: list[NicAddress] = field(default_factory=list)
    speed_mbps: int | None = None
    mtu: int | None = None
    up: bool = True
    loopback: bool = False
    virtual: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Nic":
        d = dict(d)
        d["addresses"] = [NicAddress(**a) for a in d.get("addresses", [])]
        return cls(**d)


@dataclass
class NumaNode:
    id: int
    cpus: list[int] = field(default_factory=list)


@dataclass
class RdmaPort:
    port: int
    state: str | None = None            # 'ACTIVE', 'DOWN', ...
    rate: str | None = None             # as sysfs spells it: '100 Gb/sec (4X EDR)'
    rate_gbps: float | None = None
    link_layer: str | None = None       # 'InfiniBand' | 'Ethernet'


@dataclass
class RdmaDevice:
    name: str
    node_guid: str | None = None
    netdevs: list[str] = field(default_factory=list)
    numa_node: int | None = None
    ports: list[RdmaPort] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RdmaDevice":
        d = dict(d)
        d["ports"] = [RdmaPort(**p) for p in d.get("ports", [])]
        return cls(**d)


@dataclass
class Gpu:
    index: int
    name: str = ""
    uuid: str = ""
    pci_bus_id: str = ""
    memory_bytes: int | None = None
    numa_node: int | None = None
    p2p: list[bool] = field(default_factory=list)      # per GPU of the host
    nvlink: list[int] = field(default_factory=list)    # NVLinks to each GPU (0: none)


@dataclass
class HostInfo:
    host_id: str                    # equal for exactly the ranks that can share memory
    hostname: str
    kernel_id: str = "-"            # boot id: hosts with the same one share the CPUs
    cpus: list[int] = field(default_factory=list)      # online CPUs of the machine
    numa: list[NumaNode] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    rdma: list[RdmaDevice] = field(default_factory=list)
    gpus: list[Gpu] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "HostInfo":
        d = dict(d)
        d["numa"] = [NumaNode(**n) for n in d.get("numa", [])]
        d["nics"] = [Nic.from_dict(n) for n in d.get("nics", [])]
        d["rdma"] = [RdmaDevice.from_dict(r) for r in d.get("rdma", [])]
        d["gpus"] = [Gpu(**g) for g in d.get("gpus", [])]
        return cls(**d)

    def nvlink_all_to_all(self) -> bool:
        """Every pair of GPUs joined by NVLink (False with fewer than two GPUs)."""
        n = len(self.gpus)
        return n > 1 and all(g.nvlink[j] > 0 for g in self.gpus for j in range(n)
                             if j != g.index and j < len(g.nvlink))


@dataclass
class RankInfo:
    host: int                       # index into Topology.hosts
    pid: int
    cpus: list[int] = field(default_factory=list)      # its sched_getaffinity


@dataclass
class Topology:
    ranks: list[RankInfo]
    hosts: list[HostInfo]

    def __post_init__(self) -> None:
        for r, info in enumerate(self.ranks):
            if not 0 <= info.host < len(self.hosts):
                raise InvalidUsage(f"topology: rank {r} names host {info.host}, but there "
                                   f"are {len(self.hosts)} hosts")

    # ---- building

    @classmethod
    def from_rank_records(cls, records: list[dict[str, Any]]) -> "Topology":
        """From one ``detect.detect()``-shaped dict per rank, in rank order. Hosts are
        numbered in first-seen order (by host_id); each host's description comes from its
        lowest rank."""
        hosts: list[HostInfo] = []
        index: dict[str, int] = {}
        ranks = []
        for rec in records:
            hid = rec["host"]["host_id"]
            if hid not in index:
                index[hid] = len(hosts)
                hosts.append(HostInfo.from_dict(rec["host"]))
            ranks.append(RankInfo(host=index[hid], pid=int(rec["pid"]),
                                  cpus=list(rec.get("cpus", []))))
        return cls(ranks=ranks, hosts=hosts)

    # ---- queries

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def hosts_count(self) -> int:
        return len(self.hosts)

    def host_of(self, rank: int) -> HostInfo:
        return self.hosts[self._rank(rank).host]

    def host_groups(self) -> list[list[int]]:
        """Ranks grouped by host, groups in first-seen host order, ranks ascending."""
        order: dict[int, list[int]] = {}
        for r, info in enumerate(self.ranks):
            order.setdefault(info.host, []).append(r)
        return list(order.values())

    def local_ranks(self, rank: int) -> list[int]:
        """The ranks on ``rank``'s host (itself included), ascending."""
        host = self._rank(rank).host
        return [r for r, info in enumerate(self.ranks) if info.host == host]

    def link_class(self, a: int, b: int) -> str:
        """'shm' when ranks a and b share a host, else 'tcp'."""
        return "shm" if self._rank(a).host == self._rank(b).host else "tcp"

    def usable_cpus(self, host: int) -> list[int]:
        """CPUs the ranks on host ``host`` may run on together (union of affinities)."""
        cpus: set[int] = set()
        for info in self.ranks:
            if info.host == host:
                cpus.update(info.cpus)
        return sorted(cpus)

    def numa_of(self, rank: int) -> list[int]:
        """NUMA node ids whose CPUs ``rank`` may run on."""
        mine = set(self._rank(rank).cpus)
        return [n.id for n in self.host_of(rank).numa if mine & set(n.cpus)]

    def _rank(self, rank: int) -> RankInfo:
        if not isinstance(rank, int) or not 0 <= rank < len(self.ranks):
            raise InvalidUsage(f"rank {rank!r} out of range: the topology has "
                               f"{len(self.ranks)} ranks")
        return self.ranks[rank]

    # ---- serialization

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION,
                "hosts": [asdict(h) for h in self.hosts],
                "ranks": [asdict(r) for r in self.ranks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "topology") -> "Topology":
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise InvalidUsage(f"{source} is not a collx topology (no schema "
                               f"{SCHEMA!r})")
        if d.get("version") != SCHEMA_VERSION:
            raise InvalidUsage(f"{source} has topology schema version {d.get('version')!r}; "
                               f"this collx reads version {SCHEMA_VERSION}")
        try:
            return cls(ranks=[RankInfo(**r) for r in d["ranks"]],
                       hosts=[HostInfo.from_dict(h) for h in d["hosts"]])
        except (KeyError, TypeError) as exc:
            raise InvalidUsage(f"{source} is malformed: {exc}") from exc

    def to_json(self, indent: int | None = 1) -> str:
        """Sorted keys; lists of scalars (CPU lists, matrices' rows) on one line each.
        Collapsing only removes newlines+indent, which JSON never holds inside a string,
        so the text always parses back to the same value."""
        text = json.dumps(self.to_dict(), indent=indent, sort_keys=True)
        if indent is None:
            return text
        return _SCALAR_LIST.sub(lambda m: _NEWLINE_INDENT.sub(" ", m.group(0))
                                .replace("[ ", "[").replace(" ]", "]"), text)

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "topology") -> "Topology":
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise InvalidUsage(f"{source} is not valid JSON: {exc}") from exc
        return cls.from_dict(d, source)

    def dump(self, path: str | os.PathLike) -> None:
        """Write to ``path`` atomically (a reader never sees half a file)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(self.to_json())
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Topology":
        path = os.fspath(path)
        try:
            with open(path) as f:
                text = f.read()
        except OSError as exc:
            raise InvalidUsage(f"cannot read topology file {path}: {exc}") from exc
        return cls.from_json(text, source=path)
