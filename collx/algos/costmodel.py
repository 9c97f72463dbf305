"""Link-class cost model: predicted time of a schedule on links of different speeds.

Each message between ranks a -> b belongs to the link class ``link_class(a, b)`` (e.g.
"intra" for two ranks on one host, "inter" across hosts) with ``LinkParams``: latency
``alpha_s``, bandwidth ``beta_Bps`` (bytes per second) and ``gamma_s_per_B``, the cost of
reducing one byte on the receiver (charged to RECV_REDUCE steps only).

Critical path. ``predict`` extends ``simulator.cost``'s critical path (same event order: deps,
FIFO posting order per direction, send/recv matching through the simulator's plan) with
per-class weights: a step starts when its deps are complete and the previous message in its
direction was posted; a matched pair completes at max(send start + alpha, receive start) +
bytes / beta (+ gamma x bytes for a RECV_REDUCE): the latency is paid from the moment the
sender posts, overlapping whatever the receiver still does (a star owner's chained reduces of
messages that all left at once pay one latency, not one each); local COPYs cost nothing.
A message above the class's ``eager_bytes`` adds ``rdv_s`` to its latency (rendezvous: the
shm transport copies small messages through its queue but pulls larger ones with
process_vm_readv after a handshake; perf/calibrate_links.py --rdv measures it; 0 by
default, and the init probe does not measure it yet). On its own this models
latency, bandwidth and reduction cost along dependency chains, not contention: two messages
that share a NIC at the same moment are not slowed down.

Contention (bottleneck terms). Given a host map ``hosts`` (participant rank -> host index;
it covers every participant of the schedule, dedicated servers included), ``predict`` also
computes lower bounds that shared resources put on the whole collective, and returns

    T = max(critical path, every bottleneck term below)

  * NIC, per host and direction: the messages that leave (enter) host h towards (from)
    another host share its NIC, so
        T_out(h) = alpha + sum(bytes of messages leaving h) / B,  T_in(h) likewise,
    where B is the class's ``shared_Bps`` (the NIC's line rate per direction) or, when that
    is 0, its ``beta_Bps`` (one message alone fills the NIC), and alpha the largest alpha
    among those messages (one latency: the NIC pipelines the rest).
  * Memory system, per host: messages inside host h whose class has ``shared_Bps`` > 0
    share that aggregate bandwidth: T_mem(h) = sum(bytes of those messages) / shared_Bps.
    (0, the default for intra-host classes, leaves the memory system unmodelled.)
  * Receiver, per rank: one rank's progress engine copies (and reduces) what it receives
    one message at a time, so T_rank(r) = sum over r's receives of o + bytes / beta (+ gamma
    x bytes for a RECV_REDUCE), o = the per-message software overhead (``overhead_s``; by
    default alpha). This is what makes an incast (a star's owner, a tree's root) cost its
    full volume, and many small messages cost their count (a star at 8 B: 2 (n - 1)
    receives per rank, recursive doubling log2 n).
  * Cores, per host, only with ``cores`` given: the ranks of a host share ``cores`` CPUs,
    T_cpu(h) = sum over the ranks r of h of T_rank(r) / cores (oversubscribed hosts).

Each term is a lower bound the schedule cannot beat, and the critical path is another; the
model takes the largest and does not add them (phases that cannot overlap a bottleneck, e.g.
hier's intra-host steps around its inter-host ring, are counted only when they are on the
critical path). Without ``hosts`` no term is added (the critical path alone, as before).

Worked example (the issue's): 2 hosts x 2 ranks, inter class 1 Gbit/s, allreduce of S bytes.
A flat ring in host order sends 1.5 S through each NIC (T_out = 1.5 S / beta); ``hier``
sends S per NIC (each of the two cross-host rings carries half the data, but both share the
NIC), so it is predicted 1.5x faster. The critical path alone lets the 64 chunks of a
pipelined (1 MiB-chunk) ring cross a NIC at the same time and predicts both ~30x too fast.

``cost(schedule, links)`` is the convenience entry point: ``links`` is a ``Links`` (per-class
params, the host map, cores per host) or a bare ``LinkParams`` (every rank on one host,
one class); it returns seconds. ``load_params`` reads perf/calibrate_links.py's JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .ir import Kind, Schedule
from .simulator import _Plan

__all__ = ["LinkParams", "Links", "predict", "cost", "bottlenecks", "bytes_per_link_class",
           "two_level", "host_link_class", "hosts_of_groups", "load_params"]

LinkClass = Callable[[int, int], str]
HostMap = Union[Sequence[int], Mapping[int, int]]


@dataclass(frozen=True)
class LinkParams:
    """One link class. ``shared_Bps``: aggregate bandwidth a host has for this class (the
    NIC's line rate per direction for a cross-host class, the memory system for an intra-host
    one); 0 = the NIC runs at ``beta_Bps`` / the memory system is not modelled."""
    alpha_s: float
    beta_Bps: float
    gamma_s_per_B: float = 0.0
    shared_Bps: float = 0.0
    # receiver CPU per message (LogGP's o); < 0: the same as alpha — on the links measured
    # here (shm, and tcp through veth) the latency is almost all software on both ends
    overhead_s: float = -1.0
    # rendezvous: a message above ``eager_bytes`` pays ``rdv_s`` more latency (the shm
    # transport copies small messages through its queue but pulls larger ones with
    # process_vm_readv after a handshake and a completion notice); 0 = one latency for all
    rdv_s: float = 0.0
    eager_bytes: int = 16384

    @property
    def overhead(self) -> float:
        return self.alpha_s if self.overhead_s < 0 else self.overhead_s

    def msg_time(self, nbytes: int) -> float:
        return self.alpha_s + self.rdv(nbytes) + (nbytes / self.beta_Bps if self.beta_Bps > 0
                                                  else 0.0)

    def rdv(self, nbytes: int) -> float:
        return self.rdv_s if nbytes > self.eager_bytes else 0.0

    def byte_time(self, nbytes: int) -> float:
        return nbytes / self.beta_Bps if self.beta_Bps > 0 else 0.0


def two_level(groups) -> LinkClass:
    """``link_class`` for a host partition: "intra" inside a group, "inter" across."""
    host = {r: h for h, g in enumerate(groups) for r in g}
    return lambda a, b: "intra" if host[a] == host[b] else "inter"


def host_link_class(hosts: HostMap, intra: str = "intra", inter: str = "inter") -> LinkClass:
    """``link_class`` from a host map: ``intra`` on one host, ``inter`` across hosts."""
    return lambda a, b: intra if hosts[a] == hosts[b] else inter


def hosts_of_groups(groups: Sequence[Sequence[int]], servers: int = 0) -> list[int]:
    """Host map of workers partitioned into ``groups`` (host h = groups[h]) plus ``servers``
    dedicated summation servers (participants n .. n + servers - 1), each on its own host."""
    n = sum(len(g) for g in groups)
    out = [-1] * n
    for h, g in enumerate(groups):
        for r in g:
            out[r] = h
    if -1 in out:
        raise ValueError(f"groups {groups!r} do not cover ranks 0..{n - 1}")
    return out + [len(groups) + k for k in range(servers)]


def _check_hosts(hosts: HostMap, n: int) -> None:
    try:
        for r in range(n):
            hosts[r]
    except (IndexError, KeyError):
        raise ValueError(f"host map covers {len(hosts)} participants, the schedule has {n} "
                         "(dedicated servers need a host too)") from None


class _Params:
    """Per-(a, b) LinkParams lookup with a clear KeyError for a missing class."""

    def __init__(self, link_class: LinkClass, params: Mapping[str, LinkParams]):
        self.link_class, self.params = link_class, params
        self.cache: dict[tuple[int, int], LinkParams] = {}

    def __call__(self, a: int, b: int) -> LinkParams:
        p = self.cache.get((a, b))
        if p is None:
            cls = self.link_class(a, b)
            if cls not in self.params:
                raise KeyError(f"no LinkParams for link class {cls!r} (ranks {a} -> {b})")
            p = self.cache[(a, b)] = self.params[cls]
        return p


def _critical_path(schedule: Schedule, itemsize: int, link: _Params) -> float:
    plan = _Plan(schedule)
    step_of, base, rank_of, prev_dir = plan.step_of, plan.base, plan.rank_of, plan.prev_dir
    start = [0.0] * plan.total
    end = [0.0] * plan.total

    def on_post(g: int) -> None:
        b = base[rank_of[g]]
        t = 0.0
        for d in step_of[g].deps:
            if end[b + d] > t:
                t = end[b + d]
        pd = prev_dir[g]
        if pd != -1 and start[pd] > t:
            t = start[pd]
        start[g] = t

    def on_complete(g: int, p: int) -> None:
        if p == -1:
            end[g] = start[g]
            return
        snd, rcv = step_of[g], step_of[p]
        nbytes = snd.count * itemsize
        lp = link(rank_of[g], rank_of[p])
        # the latency runs from the send's start (the notice is in flight while the
        # receiver is still busy); the bytes move once both sides are there
        t = max(start[g] + lp.alpha_s, start[p]) + lp.msg_time(nbytes) - lp.alpha_s
        if rcv.kind == Kind.RECV_REDUCE:
            t += lp.gamma_s_per_B * nbytes
        end[g] = end[p] = t

    plan.run(None, on_post, on_complete)
    return max(end, default=0.0)


def bottlenecks(schedule: Schedule, itemsize: int, link_class: LinkClass,
                params: Mapping[str, LinkParams], hosts: HostMap,
                cores: Optional[int] = None) -> dict[str, float]:
    """The contention terms of the module docstring, by name ("nic_out[h]", "nic_in[h]",
    "mem[h]", "rank[r]", "cpu[h]"), in seconds; only non-zero terms are listed."""
    n = schedule.world_size
    _check_hosts(hosts, n)
    link = _Params(link_class, params)
    out_t: dict[int, float] = {}
    in_t: dict[int, float] = {}
    out_a: dict[int, float] = {}
    in_a: dict[int, float] = {}
    mem: dict[int, float] = {}
    busy = [0.0] * n
    for r, steps in enumerate(schedule.steps):
        hr = hosts[r]
        for st in steps:
            k = st.kind
            if k == Kind.COPY:
                continue
            nbytes = st.count * itemsize
            if k == Kind.SEND:
                p = link(r, st.peer)
                hp = hosts[st.peer]
                if hp != hr:
                    bw = p.shared_Bps or p.beta_Bps
                    t = nbytes / bw if bw > 0 else 0.0
                    out_t[hr] = out_t.get(hr, 0.0) + t
                    in_t[hp] = in_t.get(hp, 0.0) + t
                    out_a[hr] = max(out_a.get(hr, 0.0), p.alpha_s)
                    in_a[hp] = max(in_a.get(hp, 0.0), p.alpha_s)
                elif p.shared_Bps > 0:
                    mem[hr] = mem.get(hr, 0.0) + nbytes / p.shared_Bps
            else:
                p = link(st.peer, r)
                busy[r] += p.overhead + p.rdv(nbytes) + p.byte_time(nbytes)
                if k == Kind.RECV_REDUCE:
                    busy[r] += p.gamma_s_per_B * nbytes
    terms: dict[str, float] = {}
    for h, t in sorted(out_t.items()):
        terms[f"nic_out[{h}]"] = out_a[h] + t
    for h, t in sorted(in_t.items()):
        terms[f"nic_in[{h}]"] = in_a[h] + t
    for h, t in sorted(mem.items()):
        terms[f"mem[{h}]"] = t
    for r, t in enumerate(busy):
        if t > 0:
            terms[f"rank[{r}]"] = t
    if cores:
        cpu: dict[int, float] = {}
        for r, t in enumerate(busy):
            cpu[hosts[r]] = cpu.get(hosts[r], 0.0) + t
        for h, t in sorted(cpu.items()):
            if t > 0:
                terms[f"cpu[{h}]"] = t / cores
    return terms


def predict(schedule: Schedule, itemsize: int, link_class: LinkClass,
            params: Mapping[str, LinkParams], *, hosts: Optional[HostMap] = None,
            cores: Optional[int] = None) -> float:
    """Predicted time in seconds (module docstring): the critical path, and with ``hosts``
    (participant rank -> host index, every participant) the max of it and the bottleneck
    terms (``cores``: CPUs per host, None = no CPU term). Raises KeyError naming a link class
    missing from ``params``, ValueError when ``hosts`` misses a participant."""
    if hosts is not None:
        _check_hosts(hosts, schedule.world_size)
    link = _Params(link_class, params)
    t = _critical_path(schedule, itemsize, link)
    if hosts is not None:
        terms = bottlenecks(schedule, itemsize, link_class, params, hosts, cores)
        t = max([t, *terms.values()])
    return t


@dataclass(frozen=True)
class Links:
    """A cluster for ``cost``: per-class params, where every participant runs, cores.

    ``hosts[r]``: host index of participant r (None: every participant on host 0). Messages
    inside a host use ``params[intra]``, across hosts ``params[inter]``. ``cores``: CPUs per
    host (None: not modelled)."""
    params: Mapping[str, LinkParams]
    hosts: Optional[tuple[int, ...]] = None
    cores: Optional[int] = None
    intra: str = "intra"
    inter: str = "inter"

    @classmethod
    def of(cls, intra: LinkParams, inter: Optional[LinkParams] = None,
           hosts: Optional[Sequence[int]] = None, cores: Optional[int] = None) -> "Links":
        params = {"intra": intra}
        if inter is not None:
            params["inter"] = inter
        return cls(params, None if hosts is None else tuple(hosts), cores)


def cost(schedule: Schedule, links: Union[Links, LinkParams], itemsize: int = 4) -> float:
    """Predicted time of ``schedule`` in seconds on ``links`` (a ``Links``, or one
    ``LinkParams`` for every message with all participants on one host), contention
    included (module docstring)."""
    if isinstance(links, LinkParams):
        links = Links({"intra": links})
    hosts = links.hosts if links.hosts is not None else (0,) * schedule.world_size
    return predict(schedule, itemsize, host_link_class(hosts, links.intra, links.inter),
                   links.params, hosts=hosts, cores=links.cores)


def load_params(source: Union[str, Mapping[str, Any]]) -> dict[str, LinkParams]:
    """``{class: LinkParams}`` from perf/calibrate_links.py's JSON (a path or the parsed
    object): ``{class: {"alpha_s": .., "beta_Bps": .., "gamma_s_per_B": .., "shared_Bps": ..}}``
    (gamma, shared and overhead_s optional; keys starting with "_" are metadata and
    skipped)."""
    if isinstance(source, str):
        with open(source) as f:
            source = json.load(f)
    out = {}
    for name, v in source.items():
        if name.startswith("_"):
            continue
        out[name] = LinkParams(float(v["alpha_s"]), float(v["beta_Bps"]),
                               float(v.get("gamma_s_per_B", 0.0)),
                               float(v.get("shared_Bps", 0.0)),
                               float(v.get("overhead_s", -1.0)),
                               float(v.get("rdv_s", 0.0)), int(v.get("eager_bytes", 16384)))
    return out


def bytes_per_link_class(schedule: Schedule, itemsize: int,
                         link_class: LinkClass) -> dict[str, int]:
    """Total bytes sent over each link class (summed over all SENDs of all ranks)."""
    out: dict[str, int] = {}
    for r, steps in enumerate(schedule.steps):
        for st in steps:
            if st.kind == Kind.SEND:
                cls = link_class(r, st.peer)
                out[cls] = out.get(cls, 0) + st.count * itemsize
    return out
