"""Tree allreduce: binomial-tree reduce to rank 0, then binomial broadcast from rank 0.

The tree is binomial.py's (relative numbering with root 0, so absolute = relative): the
parent of r > 0 is r with its lowest set bit cleared, the children of r are r + 2^k for every
2^k below r's lowest set bit (every 2^k < n for rank 0).

Steps, per chunk of at most ``chunk_count`` elements (0 = one chunk), rank r:
  reduce:     receive each child's partial, smallest subtree first; the first RECV_REDUCE
              combines it with IN into the accumulator (OUT on rank 0, SCRATCH on interior
              ranks), the next ones with the accumulator; then send the accumulator to the
              parent (leaves send IN directly).
  broadcast:  rank 0 sends the chunk of OUT to its children, largest subtree first, once its
              last RECV_REDUCE of the chunk is done; other ranks receive the chunk into OUT
              (after every step that reads that chunk of IN: IN may be OUT) and forward it.
Rank 0 computes every element exactly once and the others only copy it, so all ranks end
bitwise identical. n == 1: one COPY IN -> OUT.

Bytes on the wire, N elements, L = ceil(log2 n): every tree edge carries N up and N down;
rank 0 sends L N and receives L N, an interior rank with c children sends (c + 1) N, a leaf
N. Rounds: 2 L unchunked; chunked in P pieces about 2 L + P - 1 chunk times (the two phases
overlap: chunk k goes down while chunk k + 1 still goes up).
When it wins: small, latency-bound messages (2 log n rounds instead of the ring's 2 (n - 1));
for large messages the ring (or halving-doubling) moves 2 N (n - 1) / n per rank instead
of up to 2 L N through the root.
"""
from __future__ import annotations

from .binomial import children, parent
from .common import check_chunk, check_count, check_n, chunks, gc_paused
from .ir import Buf, Kind, Schedule, Step, make_step

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT, _SCR = Buf.IN, Buf.OUT, Buf.SCRATCH


@gc_paused
def tree_allreduce(n: int, count: int, chunk_count: int = 0) -> Schedule:
    """IN = OUT = ``count`` on every rank; SCRATCH = ``count`` on interior ranks other than
    rank 0 (their running partial), 0 elsewhere. Correct with IN and OUT aliased."""
    n = check_n(n)
    count = check_count(count)
    cc = check_chunk(chunk_count)
    if n == 1 or count == 0:
        steps = [[Step(_COPY, _OUT, 0, count, -1, _IN, 0, ())] if count else []
                 for _ in range(n)]
        return Schedule("allreduce", "tree", n, steps, [count] * n, [count] * n)
    ch = chunks(count, cc)
    mk = make_step
    steps: list[list[Step]] = []
    scratch = [0] * n
    for r in range(n):
        up_kids = children(r, n)                  # smallest subtree first
        down_kids = list(reversed(up_kids))       # largest subtree first
        st: list[Step] = []
        in_reader = []     # per chunk: the step that reads IN's chunk (IN may be OUT)
        ready = []         # per chunk: the step after which OUT's chunk may be sent (root)
        if not up_kids:                           # leaf (never rank 0 here: n > 1)
            par = parent(r)
            for (o, ln) in ch:
                in_reader.append(len(st))
                st.append(mk(_SEND, _IN, o, ln, par, _IN, 0, ()))
        else:
            acc = _OUT if r == 0 else _SCR
            if r:
                scratch[r] = count
            for (o, ln) in ch:
                prev = -1
                for k in up_kids:
                    i = len(st)
                    if prev < 0:
                        in_reader.append(i)
                        st.append(mk(_RR, acc, o, ln, k, _IN, o, ()))
                    else:
                        st.append(mk(_RR, acc, o, ln, k, acc, o, (prev,)))
                    prev = i
                ready.append(prev)
                if r:
                    st.append(mk(_SEND, acc, o, ln, parent(r), _IN, 0, (prev,)))
        # broadcast
        for ci, (o, ln) in enumerate(ch):
            if r == 0:
                dep = (ready[ci],)
            else:
                i = len(st)
                st.append(mk(_RECV, _OUT, o, ln, parent(r), _IN, 0, (in_reader[ci],)))
                dep = (i,)
            for k in down_kids:
                st.append(mk(_SEND, _OUT, o, ln, k, _IN, 0, dep))
        steps.append(st)
    return Schedule("allreduce", "tree", n, steps, [count] * n, [count] * n, scratch,
                    reduces=True)
