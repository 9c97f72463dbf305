"""Double binary tree (NCCL style): allreduce, broadcast and reduce over two binary trees
whose inner nodes are disjoint, each carrying half of the data, pipelined by chunks.

Ranks are renumbered relative to the root, v = (r - root) mod n (root 0 for allreduce).
``_btree(m)`` is NCCL's in-order binary tree over 0..m-1: the parent of u > 0 with lowest
set bit b is (u ^ b) | 2b, or u ^ b when that is >= m; the root 0 has one child. Its inner
nodes are even, odd nodes are leaves, and nobody has more than two children.
  tree A: ``_btree(n)`` over v, rooted at v = 0; inner nodes even v.
  tree B: ``_btree(n - 1)`` over u = v - 1 (mirrored, u -> n - 2 - u, when n is even), whose
          root gets v = 0 as its parent; inner nodes (other than v = 0) odd v.
So both trees are rooted at v = 0, which has exactly one child in each, and every other rank
is a leaf in at least one tree. Tree A carries the first half of the vector (ceil(N / 2)
elements), tree B the second; each half is cut in chunks of ``chunk_count`` elements (0 = one
chunk per half), and the steps of every rank run chunk by chunk, tree A then tree B.

Steps, per chunk of a half, rank v in that half's tree:
  reduce:     receive each child's partial; the first RECV_REDUCE combines it with IN into
              the accumulator (OUT on v = 0, SCRATCH on inner ranks), the next one with the
              accumulator; then send it to the parent (leaves send IN directly).
  broadcast:  v = 0 sends the chunk (from IN for broadcast, from OUT after its last
              RECV_REDUCE for allreduce) to its child; others receive it into OUT (after
              every step that reads that chunk of IN: IN may be OUT) and forward it.
  allreduce:  reduce, then broadcast, per chunk (chunk k goes down while k + 1 goes up).
Rank v = 0 computes every element exactly once and the others copy it, so all ranks end
bitwise identical. n == 1: one COPY IN -> OUT.

Bytes per rank, N elements: each tree edge carries its half once per phase. v = 0 sends
N / 2 to each tree per phase (N in all, vs ceil(log2 n) N for a binomial root); an inner
rank of one tree sends at most 3 N / 2 there (parent + two children) and N / 2 as a leaf of
the other, so at most 2 N per rank for allreduce and N for broadcast / reduce.
Rounds: tree depth about log2 n (+ 1) per phase, and an inner rank reduces its two children
one after the other: allreduce measures 3 log2 n rounds for powers of two (9 / 12 / 15 at
n = 8 / 16 / 32; reduce or broadcast alone about half that); with P chunks per half about
that + P - 1 chunk times of half the size (the two trees run side by side, chunk k going
down while k + 1 goes up).
When it wins: mid-size messages at larger n: latency close to a tree (log n rounds, not
the ring's n - 1) and bandwidth close to a ring (no rank sends more than about 2 N, and both
trees' links are busy at once), where binomial trees bottleneck on the root's log n sends.
"""
from __future__ import annotations

from .common import check_chunk, check_count, check_n, check_root, chunks, gc_paused
from .ir import Buf, Kind, Schedule, Step, make_step

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT, _SCR = Buf.IN, Buf.OUT, Buf.SCRATCH


def _btree(m: int) -> list[int]:
    """Parents of NCCL's in-order binary tree over 0..m-1 (root 0: -1)."""
    par = [-1] * m
    for u in range(1, m):
        b = u & -u
        up = (u ^ b) | (b << 1)
        par[u] = up if up < m else u ^ b
    return par


def dbtree_parents(n: int) -> tuple[list[int], list[int]]:
    """Relative parents (-1 for the root v = 0) of tree A and tree B over n ranks."""
    pa = _btree(n)
    pb = [-1] * n
    m = n - 1
    if m:
        bt = _btree(m)
        mirror = n % 2 == 0
        to_u = (lambda v: m - v) if mirror else (lambda v: v - 1)     # v -> tree index
        to_v = (lambda u: m - u) if mirror else (lambda u: u + 1)     # tree index -> v
        for v in range(1, n):
            p = bt[to_u(v)]
            pb[v] = 0 if p < 0 else to_v(p)
    return pa, pb


def _kids(par: list[int]) -> list[list[int]]:
    kids: list[list[int]] = [[] for _ in par]
    for v, p in enumerate(par):
        if p >= 0:
            kids[p].append(v)
    return kids


def _halves(count: int, cc: int) -> list[list[tuple[int, int]]]:
    """Chunks (absolute offset, length) of tree A's half and tree B's half."""
    h = (count + 1) // 2
    return [[(o, ln) for (o, ln) in chunks(h, cc)],
            [(h + o, ln) for (o, ln) in chunks(count - h, cc)]]


def _build(kind: str, n: int, count: int, root: int, cc: int) -> Schedule:
    """One generator for the three ops (kind: allreduce / broadcast / reduce)."""
    pars = dbtree_parents(n)
    kidss = [_kids(p) for p in pars]
    halves = _halves(count, cc)
    nch = max(len(halves[0]), len(halves[1]))
    mk = make_step
    up = kind != "broadcast"
    down = kind != "reduce"
    steps: list[list[Step]] = []
    scratch = [0] * n
    for r in range(n):
        v = (r - root) % n
        par = [(p[v] + root) % n if p[v] >= 0 else -1 for p in pars]
        kids = [[(k + root) % n for k in ks[v]] for ks in kidss]
        st: list[Step] = []
        if v == 0 and kind == "broadcast" and count:
            st.append(mk(_COPY, _OUT, 0, count, -1, _IN, 0, ()))
        # SCRATCH slot of each tree's half on inner non-root ranks (reduce phase only)
        sbase = [0, 0]
        if up and v:
            for t in (0, 1):
                if kids[t] and halves[t]:
                    sbase[t] = scratch[r] - halves[t][0][0]
                    scratch[r] += sum(ln for _, ln in halves[t])
        in_reader: dict[tuple[int, int], int] = {}
        ready: dict[tuple[int, int], int] = {}
        if up:
            for ci in range(nch):
                for t in (0, 1):
                    if ci >= len(halves[t]):
                        continue
                    o, ln = halves[t][ci]
                    if not kids[t]:                     # leaf (never v = 0: n > 1)
                        in_reader[t, ci] = len(st)
                        st.append(mk(_SEND, _IN, o, ln, par[t], _IN, 0, ()))
                        continue
                    acc, ao = (_OUT, o) if v == 0 else (_SCR, sbase[t] + o)
                    prev = -1
                    for k in kids[t]:
                        i = len(st)
                        if prev < 0:
                            in_reader[t, ci] = i
                            st.append(mk(_RR, acc, ao, ln, k, _IN, o, ()))
                        else:
                            st.append(mk(_RR, acc, ao, ln, k, acc, ao, (prev,)))
                        prev = i
                    ready[t, ci] = prev
                    if v:
                        st.append(mk(_SEND, acc, ao, ln, par[t], _IN, 0, (prev,)))
        if down:
            for ci in range(nch):
                for t in (0, 1):
                    if ci >= len(halves[t]):
                        continue
                    o, ln = halves[t][ci]
                    if v == 0:
                        src = _OUT if up else _IN
                        dep = (ready[t, ci],) if up else ()
                    else:
                        i = len(st)
                        rd = (in_reader[t, ci],) if up else ()
                        st.append(mk(_RECV, _OUT, o, ln, par[t], _IN, 0, rd))
                        src, dep = _OUT, (i,)
                    for k in kids[t]:
                        st.append(mk(_SEND, src, o, ln, k, _IN, 0, dep))
        steps.append(st)
    if kind == "allreduce":
        ins, outs = [count] * n, [count] * n
    elif kind == "broadcast":
        ins, outs = [count if r == root else 0 for r in range(n)], [count] * n
    else:
        ins, outs = [count] * n, [count if r == root else 0 for r in range(n)]
    return Schedule(kind, "dbtree", n, steps, ins, outs, scratch, reduces=up and count > 0)


def _trivial(kind: str, n: int, count: int, root: int) -> Schedule:
    """n == 1 (one COPY IN -> OUT) or count == 0 (no steps)."""
    steps = [[Step(_COPY, _OUT, 0, count, -1, _IN, 0, ())] if count else [] for _ in range(n)]
    ins = [count if kind != "broadcast" or r == root else 0 for r in range(n)]
    outs = [count if kind != "reduce" or r == root else 0 for r in range(n)]
    return Schedule(kind, "dbtree", n, steps, ins, outs)


@gc_paused
def dbtree_allreduce(n: int, count: int, chunk_count: int = 0) -> Schedule:
    """IN = OUT = ``count`` on every rank; SCRATCH on inner ranks other than rank 0: the
    length of the half(s) whose tree they are inner in (disjoint trees: one half), 0
    elsewhere. Correct with IN and OUT aliased. Every rank sends at most 2 ``count``."""
    n = check_n(n)
    count = check_count(count)
    cc = check_chunk(chunk_count)
    if n == 1 or count == 0:
        return _trivial("allreduce", n, count, 0)
    return _build("allreduce", n, count, 0, cc)


@gc_paused
def dbtree_broadcast(n: int, count: int, root: int = 0, chunk_count: int = 0) -> Schedule:
    """IN: ``count`` on the root only; OUT: ``count`` on every rank. The root copies IN to
    OUT and sends each half from IN to its one child in that half's tree; the others
    receive into OUT and forward from OUT. Every rank sends at most ``count``."""
    n = check_n(n)
    count = check_count(count)
    root = check_root(root, n)
    cc = check_chunk(chunk_count)
    if n == 1 or count == 0:
        return _trivial("broadcast", n, count, root)
    return _build("broadcast", n, count, root, cc)


@gc_paused
def dbtree_reduce(n: int, count: int, root: int = 0, chunk_count: int = 0) -> Schedule:
    """IN: ``count`` on every rank; OUT: ``count`` on the root, 0 elsewhere; SCRATCH on inner
    non-root ranks: the length of the half(s) whose tree they are inner in. Every rank sends
    at most ``count``."""
    n = check_n(n)
    count = check_count(count)
    root = check_root(root, n)
    cc = check_chunk(chunk_count)
    if n == 1 or count == 0:
        return _trivial("reduce", n, count, root)
    return _build("reduce", n, count, root, cc)
