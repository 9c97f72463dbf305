"""Binomial trees: broadcast, reduce, gather, scatter and barrier in ceil(log2 n) rounds.

Ranks are renumbered relative to the root, v = (r - root) mod n, so any root works. In
relative numbers the tree is the classic one: the parent of v > 0 is v with its lowest set
bit cleared; the children of v are v + 2^k for every 2^k below v's lowest set bit (every
2^k < n for the root) with v + 2^k < n. The subtree of v is the contiguous relative range
[v, v + min(lowbit(v), n - v)), which is what lets gather and scatter move a whole subtree in
one message (only the root's view, in absolute rank order, can wrap around; a wrapping subtree
is split into two messages at the wrap point, on both sides alike).

Cost, N bytes, n ranks, L = ceil(log2 n) rounds:
  broadcast:  N per tree edge; the root sends L N, an interior rank up to (L - 1) N;
              latency L rounds, pipelined by chunks of C: about (L + N / C - 1) chunk times
  reduce:     the mirror of broadcast (receive from each child, reduce, send to the parent)
  gather:     each rank sends its whole subtree once: the root receives N - own block; total
              traffic (L / 2) N on average, L rounds
  scatter:    the mirror of gather
  barrier:    2 L rounds of zero-byte messages
When it wins: small messages and latency-bound collectives (log n rounds instead of n - 1);
for large broadcast/reduce a pipelined chain or scatter-allgather uses bandwidth better.
"""
from __future__ import annotations

from typing import Sequence

from .common import (check_chunk, check_count, check_counts, check_n, check_root, chunks,
                     gc_paused, prefix)
from .ir import Buf, Kind, Schedule, Step

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT, _SCR = Buf.IN, Buf.OUT, Buf.SCRATCH


def _lowbit(v: int) -> int:
    return v & -v


def parent(v: int) -> int:
    """Relative parent of relative rank v > 0."""
    return v - _lowbit(v)


def children(v: int, n: int) -> list[int]:
    """Relative children of relative rank v, smallest subtree first."""
    limit = _lowbit(v) if v else n
    out = []
    m = 1
    while m < limit and v + m < n:
        out.append(v + m)
        m <<= 1
    return out


def subtree_size(v: int, n: int) -> int:
    return min(_lowbit(v), n - v) if v else n


@gc_paused
def binomial_broadcast(n: int, count: int, root: int = 0, chunk_count: int = 0) -> Schedule:
    """IN: ``count`` on the root only; OUT: ``count`` on every rank. The root sends from IN
    (and copies IN to OUT, a no-op in place); other ranks receive into OUT and forward from
    OUT. Per chunk, a rank forwards chunk k (deepest subtree first) as soon as it has it,
    while chunk k + 1 is still arriving."""
    n = check_n(n)
    count = check_count(count)
    root = check_root(root, n)
    cc = check_chunk(chunk_count)
    ch = chunks(count, cc)
    steps: list[list[Step]] = []
    for r in range(n):
        v = (r - root) % n
        kids = [(c + root) % n for c in reversed(children(v, n))]   # largest subtree first
        st: list[Step] = []
        if v == 0:
            if count:
                st.append(Step(_COPY, _OUT, 0, count, -1, _IN, 0, ()))
            for (o, ln) in ch:
                for k in kids:
                    st.append(Step(_SEND, _IN, o, ln, k, _IN, 0, ()))
        else:
            par = (parent(v) + root) % n
            for (o, ln) in ch:
                i = len(st)
                st.append(Step(_RECV, _OUT, o, ln, par, _IN, 0, ()))
                dep = (i,)
                for k in kids:
                    st.append(Step(_SEND, _OUT, o, ln, k, _IN, 0, dep))
        steps.append(st)
    in_counts = [count if r == root else 0 for r in range(n)]
    return Schedule("broadcast", "binomial", n, steps, in_counts, [count] * n)


@gc_paused
def binomial_reduce(n: int, count: int, root: int = 0, chunk_count: int = 0) -> Schedule:
    """IN: ``count`` on every rank; OUT: ``count`` on the root, 0 elsewhere; SCRATCH:
    ``count`` on interior non-root ranks (their running partial), 0 on leaves and the root.

    Per chunk, a rank receives from its children smallest subtree first (those finish first):
    the first RECV_REDUCE combines the incoming data with IN into the accumulator (OUT on the
    root, SCRATCH elsewhere), the next ones with the accumulator itself; then it sends the
    accumulator to its parent. Leaves send IN directly."""
    n = check_n(n)
    count = check_count(count)
    root = check_root(root, n)
    cc = check_chunk(chunk_count)
    ch = chunks(count, cc)
    steps: list[list[Step]] = []
    scratch = [0] * n
    for r in range(n):
        v = (r - root) % n
        kids = [(c + root) % n for c in children(v, n)]
        st: list[Step] = []
        if v == 0 and not kids:
            if count:
                st.append(Step(_COPY, _OUT, 0, count, -1, _IN, 0, ()))
        elif not kids:
            par = (parent(v) + root) % n
            for (o, ln) in ch:
                st.append(Step(_SEND, _IN, o, ln, par, _IN, 0, ()))
        else:
            acc = _OUT if v == 0 else _SCR
            if v:
                scratch[r] = count
            par = (parent(v) + root) % n if v else -1
            for (o, ln) in ch:
                prev = -1
                for k in kids:
                    i = len(st)
                    if prev < 0:
                        st.append(Step(_RR, acc, o, ln, k, _IN, o, ()))
                    else:
                        st.append(Step(_RR, acc, o, ln, k, acc, o, (prev,)))
                    prev = i
                if v:
                    st.append(Step(_SEND, acc, o, ln, par, _IN, 0, (prev,)))
        steps.append(st)
    out_counts = [count if r == root else 0 for r in range(n)]
    return Schedule("reduce", "binomial", n, steps, [count] * n, out_counts, scratch,
                    reduces=n > 1 and count > 0)


def _layout(counts: list[int], root: int):
    """Relative-order prefix sums: P[u] = elements of relative ranks < u."""
    n = len(counts)
    return prefix([counts[(u + root) % n] for u in range(n)])


def _pieces(a: int, b: int, n: int, root: int) -> list[tuple[int, int]]:
    """Split relative range [a, b) where absolute rank order wraps (relative n - root), so
    each piece is contiguous in absolute order too."""
    w = n - root
    if root and a < w < b:
        return [(a, w), (w, b)]
    return [(a, b)]


@gc_paused
def binomial_gather(counts: Sequence[int], root: int = 0) -> Schedule:
    """IN: ``counts[r]`` on rank r; OUT on the root: ``sum(counts)``, blocks in absolute rank
    order (0 elsewhere); SCRATCH: the subtree's total on interior non-root ranks whose
    children contribute anything (their subtree in relative rank order), 0 elsewhere.

    An interior rank copies its own block into SCRATCH, receives each child's subtree into
    place and sends the whole range to its parent in one message. Messages to the root go
    straight to the absolute offsets of OUT; a subtree range that wraps past rank n - 1 is
    sent as two messages. Empty ranges are never sent."""
    counts = check_counts(counts)
    n = len(counts)
    root = check_root(root, n)
    displ = prefix(counts)
    P = _layout(counts, root)
    steps: list[list[Step]] = []
    scratch = [0] * n
    for r in range(n):
        v = (r - root) % n
        kids = children(v, n)
        st: list[Step] = []
        if v == 0:
            if counts[r]:
                st.append(Step(_COPY, _OUT, displ[r], counts[r], -1, _IN, 0, ()))
            for c in kids:
                k = (c + root) % n
                for (a, b) in _pieces(c, c + subtree_size(c, n), n, root):
                    if P[b] > P[a]:
                        st.append(Step(_RECV, _OUT, displ[(a + root) % n], P[b] - P[a], k,
                                       _IN, 0, ()))
            steps.append(st)
            continue
        par = (parent(v) + root) % n
        end = v + subtree_size(v, n)
        if P[end] - P[v + 1] == 0:          # children bring nothing: act as a leaf
            src, deps = _IN, ()
        else:
            src = _SCR
            scratch[r] = P[end] - P[v]
            if counts[r]:
                st.append(Step(_COPY, _SCR, 0, counts[r], -1, _IN, 0, ()))
            for c in kids:
                ln = P[c + subtree_size(c, n)] - P[c]
                if ln:
                    st.append(Step(_RECV, _SCR, P[c] - P[v], ln, (c + root) % n, _IN, 0, ()))
            deps = tuple(range(len(st)))
        pieces = _pieces(v, end, n, root) if parent(v) == 0 else [(v, end)]
        for (a, b) in pieces:
            if P[b] > P[a]:
                st.append(Step(_SEND, src, P[a] - P[v], P[b] - P[a], par, _IN, 0, deps))
        steps.append(st)
    out_counts = [displ[n] if r == root else 0 for r in range(n)]
    return Schedule("gather", "binomial", n, steps, list(counts), out_counts, scratch)


@gc_paused
def binomial_scatter(counts: Sequence[int], root: int = 0) -> Schedule:
    """IN on the root: ``sum(counts)``, blocks in absolute rank order (0 elsewhere); OUT:
    ``counts[r]`` on rank r; SCRATCH: the subtree's total on interior non-root ranks whose
    children get anything, 0 elsewhere.

    The mirror of ``binomial_gather``: the root sends each child its subtree's range (deepest
    first; two messages where it wraps), an interior rank receives its subtree into SCRATCH,
    copies its own block to OUT and forwards each child's range; leaves receive into OUT."""
    counts = check_counts(counts)
    n = len(counts)
    root = check_root(root, n)
    displ = prefix(counts)
    P = _layout(counts, root)
    steps: list[list[Step]] = []
    scratch = [0] * n
    for r in range(n):
        v = (r - root) % n
        kids = list(reversed(children(v, n)))       # largest subtree first
        st: list[Step] = []
        if v == 0:
            if counts[r]:
                st.append(Step(_COPY, _OUT, 0, counts[r], -1, _IN, displ[r], ()))
            for c in kids:
                k = (c + root) % n
                for (a, b) in _pieces(c, c + subtree_size(c, n), n, root):
                    if P[b] > P[a]:
                        st.append(Step(_SEND, _IN, displ[(a + root) % n], P[b] - P[a], k,
                                       _IN, 0, ()))
            steps.append(st)
            continue
        par = (parent(v) + root) % n
        end = v + subtree_size(v, n)
        pieces = _pieces(v, end, n, root) if parent(v) == 0 else [(v, end)]
        if P[end] - P[v + 1] == 0:          # children get nothing: act as a leaf
            for (a, b) in pieces:
                if P[b] > P[a]:
                    st.append(Step(_RECV, _OUT, P[a] - P[v], P[b] - P[a], par, _IN, 0, ()))
            steps.append(st)
            continue
        scratch[r] = P[end] - P[v]
        for (a, b) in pieces:
            if P[b] > P[a]:
                st.append(Step(_RECV, _SCR, P[a] - P[v], P[b] - P[a], par, _IN, 0, ()))
        deps = tuple(range(len(st)))
        if counts[r]:
            st.append(Step(_COPY, _OUT, 0, counts[r], -1, _SCR, 0, deps))
        for c in kids:
            ln = P[c + subtree_size(c, n)] - P[c]
            if ln:
                st.append(Step(_SEND, _SCR, P[c] - P[v], ln, (c + root) % n, _IN, 0, deps))
        steps.append(st)
    in_counts = [displ[n] if r == root else 0 for r in range(n)]
    return Schedule("scatter", "binomial", n, steps, in_counts, list(counts), scratch)


@gc_paused
def binomial_barrier(n: int) -> Schedule:
    """Zero-count messages up a binomial tree rooted at rank 0 and back down: a rank sends
    to its parent once all its children arrived, and releases its children once its parent
    released it. No buffers (IN/OUT/SCRATCH counts 0); 2 ceil(log2 n) rounds."""
    n = check_n(n)
    steps: list[list[Step]] = []
    for r in range(n):
        kids = children(r, n)
        st: list[Step] = [Step(_RECV, _OUT, 0, 0, k, _IN, 0, ()) for k in kids]
        up = tuple(range(len(st)))
        if r:
            st.append(Step(_SEND, _OUT, 0, 0, parent(r), _IN, 0, up))
            i = len(st)
            st.append(Step(_RECV, _OUT, 0, 0, parent(r), _IN, 0, ()))
            down = (i,)
        else:
            down = up
        for k in reversed(kids):
            st.append(Step(_SEND, _OUT, 0, 0, k, _IN, 0, down))
        steps.append(st)
    return Schedule("barrier", "binomial", n, steps, [0] * n, [0] * n)
