"""Hierarchical (two-level) allreduce for hosts with fast local links and a slower network.

``groups`` lists the ranks of each host (a partition of range(n); order inside a group is the
local order). ``hier_allreduce`` with equal group sizes g:

  1. ring reduce-scatter inside each host: local rank i ends with shard i of the host's sum
     (OUT[displ[i]:displ[i+1]], shards = even_split(count, g));
  2. for each local index i, ring allreduce of shard i across hosts among the ranks with
     local index i (each NIC carries one shard, so inter-host bytes per host fall from
     2 (n-1)/n S of a flat ring to 2 (H-1)/H S, i.e. 1.5 S -> S for 2 hosts x 2);
  3. ring allgather inside each host.

With uneven group sizes it falls back to ``hier_leader_allreduce``: binomial reduce to each
host's first rank, ring allreduce among the leaders, binomial broadcast inside each host (one
NIC per host). Both give bitwise identical results on every rank (every element is reduced
once, in one place, then copied).

Sub-schedules are built for k ranks by the existing builders and mapped onto global ranks
and buffer offsets by ``embed``; phases are chained per rank: every step of a phase without
deps depends on the sinks (steps nothing depends on) of the rank's previous phases, so a
phase starts on a rank only once that rank's earlier phases are complete. Messages of a later
phase between two ranks are posted after those of earlier phases on both sides, so FIFO
matching is preserved. Phases run one after another on a rank, so they share SCRATCH.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

from .binomial import binomial_broadcast, binomial_reduce
from .common import check_chunk, check_count, even_split, prefix
from .ir import Buf, Kind, Schedule, Step, make_step
from .ring import ring_allgather, ring_allreduce, ring_reducescatter

__all__ = ["DEFAULT_HOST_SIZE", "default_groups", "check_groups", "Composer",
           "hier_allreduce", "hier_leader_allreduce"]

# ranks per host assumed by the registry entries ("hier", "hier_leader"), which only get n
DEFAULT_HOST_SIZE = 2

BufMap = Mapping[Buf, tuple[Buf, int]]


def default_groups(n: int, host_size: int = DEFAULT_HOST_SIZE) -> list[list[int]]:
    """Consecutive ranks, ``host_size`` per host (the last host may hold fewer)."""
    return [list(range(a, min(a + host_size, n))) for a in range(0, n, host_size)]


def check_groups(groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """Validate that ``groups`` is a partition of range(n) into non-empty groups."""
    gs = [[int(r) for r in g] for g in groups]
    if not gs or any(len(g) == 0 for g in gs):
        raise ValueError(f"groups must be non-empty lists of ranks, got {groups!r}")
    flat = sorted(r for g in gs for r in g)
    if flat != list(range(len(flat))):
        raise ValueError(f"groups must partition range(n), got {groups!r}")
    return gs


class Composer:
    """Builds one global schedule out of sub-schedules on subsets of ranks.

    ``add(sub, ranks, bufmap)`` maps local rank j of ``sub`` to global rank ``ranks[j]``;
    ``bufmap(j)[b] = (global_buf, offset)`` relocates the sub-schedule's buffer b. Deps are
    renumbered into the global step list of each rank, and dep-free steps wait for the rank's
    previous phases (see the module docstring)."""

    def __init__(self, n: int):
        self.n = n
        self.steps: list[list[Step]] = [[] for _ in range(n)]
        self.scratch = [0] * n
        self.tail: list[tuple[int, ...]] = [() for _ in range(n)]

    def add(self, sub: Schedule, ranks: Sequence[int],
            bufmap: Callable[[int], BufMap]) -> None:
        if sub.world_size != len(ranks):
            raise ValueError(f"sub-schedule has {sub.world_size} ranks, given {len(ranks)}")
        for j, r in enumerate(ranks):
            lst = sub.steps[j]
            if not lst:
                continue
            m = bufmap(j)
            out = self.steps[r]
            base = len(out)
            entry = self.tail[r]
            used = [False] * len(lst)
            for st in lst:
                if st.deps:
                    deps = tuple(base + d for d in st.deps)
                    for d in st.deps:
                        used[d] = True
                else:
                    deps = entry
                gb, go = m[st.buf]
                peer = ranks[st.peer] if st.kind != Kind.COPY else -1
                if st.kind in (Kind.COPY, Kind.RECV_REDUCE):
                    sb, so = m[st.src_buf]
                    src_buf, src_off = sb, st.src_off + so
                else:
                    src_buf, src_off = Buf.IN, 0
                out.append(make_step(st.kind, gb, st.off + go, st.count, peer, src_buf,
                                     src_off, deps))
            self.tail[r] = tuple(base + i for i in range(len(lst)) if not used[i])
            sub_scr = sub.scratch_counts[j]
            if sub_scr:
                go = m.get(Buf.SCRATCH, (Buf.SCRATCH, 0))[1]
                self.scratch[r] = max(self.scratch[r], go + sub_scr)

    def schedule(self, op: str, algo: str, in_counts: list[int], out_counts: list[int],
                 reduces: bool) -> Schedule:
        return Schedule(op, algo, self.n, self.steps, in_counts, out_counts,
                        list(self.scratch), reduces=reduces)


def _identity(_j: int) -> BufMap:
    return {Buf.IN: (Buf.IN, 0), Buf.OUT: (Buf.OUT, 0), Buf.SCRATCH: (Buf.SCRATCH, 0)}


def _on_out(_j: int) -> BufMap:
    return {Buf.IN: (Buf.OUT, 0), Buf.OUT: (Buf.OUT, 0), Buf.SCRATCH: (Buf.SCRATCH, 0)}


def hier_allreduce(groups: Sequence[Sequence[int]], count: int,
                   chunk_count: int = 0) -> Schedule:
    """Reduce-scatter per host, allreduce per shard across hosts, allgather per host (module
    docstring). IN = OUT = ``count`` on every rank. Uneven group sizes: the leader variant
    (``hier_leader_allreduce``), named "hier" too."""
    gs = check_groups(groups)
    count = check_count(count)
    cc = check_chunk(chunk_count)
    if len({len(g) for g in gs}) != 1:
        s = hier_leader_allreduce(gs, count, cc)
        s.algo = "hier"
        return s
    n = sum(len(g) for g in gs)
    g, H = len(gs[0]), len(gs)
    c = Composer(n)
    if count:
        sizes = even_split(count, g)
        displ = prefix(sizes)
        rs = ring_reducescatter(sizes, cc)
        for grp in gs:
            c.add(rs, grp, lambda j: {Buf.IN: (Buf.IN, 0), Buf.OUT: (Buf.OUT, displ[j]),
                                      Buf.SCRATCH: (Buf.SCRATCH, 0)})
        if H > 1:
            for i in range(g):
                if sizes[i] == 0:
                    continue
                ar = ring_allreduce(H, sizes[i], cc)
                m = {Buf.IN: (Buf.OUT, displ[i]), Buf.OUT: (Buf.OUT, displ[i]),
                     Buf.SCRATCH: (Buf.SCRATCH, 0)}
                c.add(ar, [grp[i] for grp in gs], lambda j, m=m: m)
        if g > 1:
            ag = ring_allgather(sizes, cc)
            for grp in gs:
                c.add(ag, grp, lambda j: {Buf.IN: (Buf.OUT, displ[j]), Buf.OUT: (Buf.OUT, 0),
                                          Buf.SCRATCH: (Buf.SCRATCH, 0)})
    return c.schedule("allreduce", "hier", [count] * n, [count] * n, reduces=count > 0)


def hier_leader_allreduce(groups: Sequence[Sequence[int]], count: int,
                          chunk_count: int = 0) -> Schedule:
    """Binomial reduce to each host's first rank, ring allreduce among the leaders, binomial
    broadcast inside each host. IN = OUT = ``count`` on every rank; any group sizes."""
    gs = check_groups(groups)
    count = check_count(count)
    cc = check_chunk(chunk_count)
    n = sum(len(g) for g in gs)
    c = Composer(n)
    if count:
        for grp in gs:
            c.add(binomial_reduce(len(grp), count, 0, cc), grp, _identity)
        if len(gs) > 1:
            c.add(ring_allreduce(len(gs), count, cc), [grp[0] for grp in gs], _on_out)
        for grp in gs:
            if len(grp) > 1:
                c.add(binomial_broadcast(len(grp), count, 0, cc), grp, _on_out)
    return c.schedule("allreduce", "hier_leader", [count] * n, [count] * n,
                      reduces=count > 0)
