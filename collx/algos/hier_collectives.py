"""Hierarchical (two-level) broadcast, allgather(v) and reduce-scatter(v) for hosts with fast
local links and a slower network. ``groups`` lists the ranks of each host (a partition of
range(n), local order inside a group; see hier.py). Goal: every byte crosses between two
hosts at most once per host that needs it, i.e. inter-host bytes per host are the minimum.

Data is handled in *pieces*: each rank's block (rank order, ``prefix(counts)``) cut into
chunks of at most ``chunk_count`` elements (0: one piece per block). A piece is one message
wherever it goes, so messages are contiguous whatever the group shapes, and deps are per
piece: a step waits for the last step of its rank that wrote the piece and, when it writes,
for the reads since (IN aliased to the rank's own block of OUT is the same piece, so the
in-place call is covered). Pieces of different blocks flow independently: phases pipeline.

hier_broadcast (any group sizes; H hosts, g_h ranks on host h):
  Each host has a leader: the root on its own host, else the host's first rank. Binomial tree
  among the leaders rooted at the root's host, then a binomial tree inside each host rooted
  at its leader; a leader forwards to the other hosts first. Per chunk, as binomial.py.
  Bytes: the data enters every other host exactly once (H - 1 inter-host messages of N per
  chunk); inside host h: g_h - 1 copies. Rounds: ceil(log2 H) + max ceil(log2 g_h).

hier_allgather, equal group sizes g (H hosts):
  1. across hosts, for each local index i: ring allgather of the blocks of the ranks with
     local index i (one per host); every NIC carries its own column.
  2. inside each host: ring allgather of the columns (local rank i holds column i: the blocks
     of local rank i of every host).
  Inter-host bytes per host: in = the other hosts' data, once (the minimum); out = the same
  amount over the ring. Rounds: (H - 1) + (g - 1), each of g-th of the data in round 1.
hier_allgather, uneven group sizes (through leaders, the host's first rank):
  1. every rank sends its block to its leader; 2. ring allgather among the leaders of the
  host blocks; 3. binomial broadcast inside each host from the leader of every piece except
  the receiving subtree root's own block. Inter-host bytes: one NIC per host, each host's
  data enters every other host once. Rounds: 1 + (H - 1) + ceil(log2 g_max).

hier_reducescatter: the mirror of hier_allgather.
  equal groups: 1. inside each host, ring reduce-scatter of the columns (local rank i ends
  with the host's partial sum of column i); 2. for each local index i, ring reduce-scatter of
  column i across hosts into OUT. 
  uneven groups: 1. binomial reduce inside each host towards the leader of every piece except
  the sending rank's own block (which the subtree below it has reduced into it); 2. ring
  reduce-scatter among the leaders of the host blocks; 3. the leader sends each member the
  rest of its block's sum, which the member reduces with its subtree's partial into OUT.
  Every element is reduced along one chain and ends on one rank. SCRATCH: the whole vector
  (IN layout) on the ranks that hold partials. Inter-host bytes as for allgather.
When they win: multi-host jobs whose network is much slower than the hosts' local links;
on one host (or with one rank per host) they reduce to their flat counterparts.
"""
from __future__ import annotations

from typing import Sequence

from .binomial import children, parent
from .common import (check_chunk, check_count, check_counts, check_root, chunks, gc_paused,
                     prefix)
from .hier import check_groups
from .ir import Buf, Kind, Schedule, Step, make_step

__all__ = ["hier_broadcast", "hier_allgather", "hier_reducescatter"]

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT, _SCR = Buf.IN, Buf.OUT, Buf.SCRATCH


class _PieceRank:
    """One rank's steps with per-piece deps (module docstring); pieces keyed by offset."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.lw: dict[int, int] = {}           # piece -> last writing step
        self.rd: dict[int, list[int]] = {}     # piece -> reading steps since that write

    def add(self, kind: Kind, buf: Buf, off: int, cnt: int, peer: int = -1,
            src_buf: Buf = _IN, src_off: int = 0, reads: Sequence[int] = (),
            writes: Sequence[int] = ()) -> int:
        deps: set[int] = set()
        for k in reads:
            if k in self.lw:
                deps.add(self.lw[k])
        for k in writes:
            if k in self.lw:
                deps.add(self.lw[k])
            deps.update(self.rd.get(k, ()))
        i = len(self.steps)
        for k in reads:
            self.rd.setdefault(k, []).append(i)
        for k in writes:
            self.lw[k] = i
            self.rd[k] = []
        self.steps.append(make_step(kind, buf, off, cnt, peer, src_buf, src_off,
                                    tuple(sorted(deps))))
        return i


def _host_of(gs: list[list[int]], n: int) -> tuple[list[int], list[int]]:
    host, local = [0] * n, [0] * n
    for h, grp in enumerate(gs):
        for j, r in enumerate(grp):
            host[r], local[r] = h, j
    return host, local


def _tree(v: int, m: int) -> tuple[int, list[int]]:
    """Relative binomial parent (-1 for the root) and children (largest subtree first)."""
    return (parent(v) if v else -1), list(reversed(children(v, m)))


@gc_paused
def hier_broadcast(groups: Sequence[Sequence[int]], count: int, root: int = 0,
                   chunk_count: int = 0) -> Schedule:
    """IN: ``count`` on the root (0 elsewhere), OUT: ``count`` everywhere (module
    docstring). Any group sizes."""
    gs = check_groups(groups)
    n = sum(len(g) for g in gs)
    count = check_count(count)
    root = check_root(root, n)
    cc = check_chunk(chunk_count)
    host, local = _host_of(gs, n)
    H, hr = len(gs), host[root]
    lead = [root if h == hr else grp[0] for h, grp in enumerate(gs)]
    ch = chunks(count, cc)
    steps: list[list[Step]] = []
    for r in range(n):
        h = host[r]
        grp = gs[h]
        par, kids = -1, []
        if r == lead[h]:
            vp, vk = _tree((h - hr) % H, H)
            if vp >= 0:
                par = lead[(vp + hr) % H]
            kids += [lead[(c + hr) % H] for c in vk]
        li, g = local[lead[h]], len(grp)
        lp, lk = _tree((local[r] - li) % g, g)
        if r != lead[h]:
            par = grp[(lp + li) % g]
        kids += [grp[(c + li) % g] for c in lk]
        st: list[Step] = []
        if r == root:
            if count:
                st.append(make_step(_COPY, _OUT, 0, count, -1, _IN, 0, ()))
            for (o, ln) in ch:
                for k in kids:
                    st.append(make_step(_SEND, _IN, o, ln, k, _IN, 0, ()))
        else:
            for (o, ln) in ch:
                dep = (len(st),)
                st.append(make_step(_RECV, _OUT, o, ln, par, _IN, 0, ()))
                for k in kids:
                    st.append(make_step(_SEND, _OUT, o, ln, k, _IN, 0, dep))
        steps.append(st)
    return Schedule("broadcast", "hier", n, steps, [count if r == root else 0 for r in range(n)],
                    [count] * n)


def _setup(groups, counts, chunk_count):
    gs = check_groups(groups)
    n = sum(len(g) for g in gs)
    counts = check_counts(counts, n)
    cc = check_chunk(chunk_count)
    displ = prefix(counts)
    bp = [[(displ[b] + o, ln) for (o, ln) in chunks(counts[b], cc)] for b in range(n)]
    equal = len({len(g) for g in gs}) == 1
    return gs, n, counts, displ, bp, equal


@gc_paused
def hier_allgather(groups: Sequence[Sequence[int]], counts: Sequence[int],
                   chunk_count: int = 0) -> Schedule:
    """IN = ``counts[r]``, OUT = ``sum(counts)`` in rank order, no scratch (module
    docstring). Correct out of place and with IN aliased to the own slot of OUT."""
    gs, n, counts, displ, bp, equal = _setup(groups, counts, chunk_count)
    H = len(gs)
    R = [_PieceRank() for _ in range(n)]
    for r in range(n):
        if counts[r]:                                  # untracked: nothing else writes it
            R[r].add(_COPY, _OUT, displ[r], counts[r], -1, _IN, 0)

    def send(r: int, peer: int, b: int, o: int, ln: int) -> None:
        if b == r:                                     # own block: straight from IN
            R[r].add(_SEND, _IN, o - displ[r], ln, peer)
        else:
            R[r].add(_SEND, _OUT, o, ln, peer, reads=(o,))

    def recv(r: int, peer: int, o: int, ln: int) -> None:
        R[r].add(_RECV, _OUT, o, ln, peer, writes=(o,))

    def ring(members: list[int], blocks_of) -> None:
        m = len(members)
        for j, r in enumerate(members):
            right, left = members[(j + 1) % m], members[(j - 1) % m]
            for s in range(m - 1):
                sp = [(b, o, ln) for b in blocks_of((j - s) % m) for (o, ln) in bp[b]]
                rp = [(o, ln) for b in blocks_of((j - s - 1) % m) for (o, ln) in bp[b]]
                for k in range(max(len(sp), len(rp))):
                    if k < len(sp):
                        send(r, right, *sp[k])
                    if k < len(rp):
                        recv(r, left, *rp[k])

    if equal:
        g = len(gs[0])
        for i in range(g):
            ring([grp[i] for grp in gs], lambda j, i=i: [gs[j][i]])
        for grp in gs:
            ring(grp, lambda j: [gs[h][j] for h in range(H)])
    else:
        for grp in gs:                                 # 1. blocks to the leader
            for c in grp[1:]:
                for (o, ln) in bp[c]:
                    send(c, grp[0], c, o, ln)
                    recv(grp[0], c, o, ln)
        ring([grp[0] for grp in gs], lambda j: gs[j])   # 2. leaders
        for h, grp in enumerate(gs):                   # 3. binomial broadcast in the host
            order = [(b, o, ln) for k in range(H) for b in gs[(h - k) % H]
                     for (o, ln) in bp[b]]             # the order pieces reach the leader
            g = len(grp)
            for j, r in enumerate(grp):
                p, kids = _tree(j, g)
                for (b, o, ln) in order:
                    if p >= 0 and b != r:
                        recv(r, grp[p], o, ln)
                    for c in kids:
                        if b != grp[c]:
                            send(r, grp[c], b, o, ln)
    total = displ[n]
    return Schedule("allgather", "hier", n, [x.steps for x in R], list(counts), [total] * n)


@gc_paused
def hier_reducescatter(groups: Sequence[Sequence[int]], counts: Sequence[int],
                       chunk_count: int = 0) -> Schedule:
    """IN = ``sum(counts)`` on every rank (rank order), OUT = ``counts[r]`` (module
    docstring). Correct out of place and with OUT aliased to the own block of IN."""
    gs, n, counts, displ, bp, equal = _setup(groups, counts, chunk_count)
    H = len(gs)
    total = displ[n]
    R = [_PieceRank() for _ in range(n)]
    loc: list[dict[int, Buf]] = [{} for _ in range(n)]     # piece -> IN or SCRATCH
    final: list[set[int]] = [set() for _ in range(n)]   # own pieces already in OUT
    scratch = [0] * n

    def where(r: int, o: int) -> Buf:
        return loc[r].get(o, _IN)

    def send(r: int, peer: int, o: int, ln: int) -> None:
        R[r].add(_SEND, where(r, o), o, ln, peer, reads=(o,))

    def rr(r: int, peer: int, o: int, ln: int, last: bool) -> None:
        src = where(r, o)
        if last:
            R[r].add(_RR, _OUT, o - displ[r], ln, peer, src, o, reads=(o,), writes=(o,))
            final[r].add(o)
        else:
            R[r].add(_RR, _SCR, o, ln, peer, src, o, reads=(o,), writes=(o,))
            loc[r][o] = _SCR
            scratch[r] = total

    def ring(members: list[int], blocks_of, last_phase: bool) -> None:
        m = len(members)
        for j, r in enumerate(members):
            right, left = members[(j + 1) % m], members[(j - 1) % m]
            for s in range(m - 1):
                sp = [(o, ln) for b in blocks_of((j - s - 1) % m) for (o, ln) in bp[b]]
                rp = [(b, o, ln) for b in blocks_of((j - s - 2) % m) for (o, ln) in bp[b]]
                for k in range(max(len(sp), len(rp))):
                    if k < len(sp):
                        send(r, right, *sp[k])
                    if k < len(rp):
                        b, o, ln = rp[k]
                        rr(r, left, o, ln, last_phase and b == r)

    if equal:
        g = len(gs[0])
        for grp in gs:
            ring(grp, lambda j: [gs[h][j] for h in range(H)], H == 1)
        for i in range(g):
            ring([grp[i] for grp in gs], lambda j, i=i: [gs[j][i]], True)
    else:
        for h, grp in enumerate(gs):                   # 1. binomial reduce in the host
            order = [(b, o, ln) for k in range(H) for b in gs[(h - 1 - k) % H]
                     for (o, ln) in bp[b]]             # the order the leaders' ring sends
            g = len(grp)
            for j, r in enumerate(grp):
                p, kids = _tree(j, g)
                kids = kids[::-1]                      # smallest subtree first
                for (b, o, ln) in order:
                    for c in kids:
                        if b != grp[c]:
                            rr(r, grp[c], o, ln, False)
                    if p >= 0 and b != r:
                        send(r, grp[p], o, ln)
        ring([grp[0] for grp in gs], lambda j: gs[j], True)   # 2. leaders
        for grp in gs:                                 # 3. the rest of each member's block
            for c in grp[1:]:
                for (o, ln) in bp[c]:
                    send(grp[0], c, o, ln)
                    rr(c, grp[0], o, ln, True)
    for r in range(n):
        for (o, ln) in bp[r]:                          # nothing arrived for this own piece
            if o not in final[r]:
                R[r].add(_COPY, _OUT, o - displ[r], ln, -1, where(r, o), o, reads=(o,),
                         writes=(o,))
    return Schedule("reducescatter", "hier", n, [x.steps for x in R], [total] * n,
                    list(counts), scratch, reduces=total > 0)
