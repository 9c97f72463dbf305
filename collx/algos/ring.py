"""Ring algorithms: every rank sends only to its right neighbour (r + 1) % n and receives only
from its left neighbour (r - 1) % n.

The data is cut into n blocks, one per rank (block b of a rank-ordered buffer). In step s of a
ring pass rank r sends the block it finished in step s - 1 and receives the next one, so after
n - 1 steps each block has visited every rank:

    reduce-scatter, step s:  send block (r - s), receive block (r - s - 1) and reduce it with
                             the local contribution; rank r ends owning reduced block (r + 1)
    allgather, step s:       send block (r + 1 - s), receive block (r - s)

(for allreduce; ``ring_reducescatter`` shifts the indices by one so rank r ends with block r,
and ``ring_allgather`` starts from each rank's own block). Pipelining: each block is cut into chunks of at most ``chunk_count`` elements
and deps are per chunk, so rank r forwards chunk k of a block while chunk k + 1 is still
arriving; every step on a given chunk range depends on the previous step that touched it.

Cost, N bytes of data, n ranks, B = N / n (allreduce), P = number of chunks per block:
  allreduce:      2 (n - 1) B = 2 N (n - 1) / n sent and received per rank (bandwidth-optimal),
                  2 (n - 1) rounds of latency (+ P - 1 pipeline fill when chunked)
  allgather:      N minus one block sent and received per rank, n - 1 rounds
  reducescatter:  N minus one block sent and received per rank, n - 1 rounds
When it wins: large messages, where bandwidth dominates and every link carries the same load.
It loses to trees / recursive doubling for small messages (latency linear in n) and to
hierarchical schemes when links are uneven.
"""
from __future__ import annotations

from typing import Sequence

from .common import (check_chunk, check_count, check_counts, check_n, chunks, even_split,
                     gc_paused, prefix)
from .ir import Buf, Kind, Schedule, Step, make_step

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT, _SCR = Buf.IN, Buf.OUT, Buf.SCRATCH


@gc_paused
def ring_allreduce(n: int, count: int, chunk_count: int = 0) -> Schedule:
    """Reduce-scatter then allgather around the ring. IN and OUT: ``count`` on every rank;
    no scratch. Partial sums live in OUT; IN is only read (block b of IN is read once, by the
    RECV_REDUCE of block b, or by the first send for the rank's own block), which is what
    makes the in-place call (IN is OUT) correct too. n == 1: one COPY IN -> OUT."""
    n = check_n(n)
    count = check_count(count)
    cc = check_chunk(chunk_count)
    if n == 1 or count == 0:
        steps = [[Step(_COPY, _OUT, 0, count, -1, _IN, 0, ())] if count else []
                 for _ in range(n)]
        return Schedule("allreduce", "ring", n, steps, [count] * n, [count] * n)
    sizes = even_split(count, n)
    offs = prefix(sizes)
    bchunks = [[(offs[b] + o, ln) for (o, ln) in chunks(sizes[b], cc)] for b in range(n)]
    steps: list[list[Step]] = []
    for r in range(n):
        right, left = (r + 1) % n, (r - 1) % n
        last = [[-1] * len(bc) for bc in bchunks]    # last step touching each chunk
        st: list[Step] = []
        # reduce-scatter: step 0 sends the rank's own block straight from IN; the received
        # chunk is reduced with the same range of IN into OUT.
        for s in range(n - 1):
            sb, rb = (r - s) % n, (r - s - 1) % n
            _ring_step(st, bchunks[sb], last[sb], (_IN if s == 0 else _OUT, 0, right),
                       bchunks[rb], last[rb], (_RR, _OUT, 0, left, _IN, 0))
        # allgather: rank r owns reduced block (r + 1).
        for s in range(n - 1):
            sb, rb = (r + 1 - s) % n, (r - s) % n
            _ring_step(st, bchunks[sb], last[sb], (_OUT, 0, right),
                       bchunks[rb], last[rb], (_RECV, _OUT, 0, left, _IN, None))
        steps.append(st)
    return Schedule("allreduce", "ring", n, steps, [count] * n, [count] * n, reduces=True)


def _ring_step(st: list[Step], schunks: list[tuple[int, int]], slast: list[int], sspec,
               rchunks: list[tuple[int, int]], rlast: list[int], rspec) -> None:
    """Append one ring step: send chunk k, receive chunk k, for every k (the two blocks may
    have different numbers of chunks). Each step depends on the last step of this rank that
    touched the same chunk, and becomes that chunk's last step.

    sspec = (buf, shift, peer): SEND buf[o + shift] for chunk (o, len);
    rspec = (kind, buf, shift, peer, src_buf, src_shift): dst buf[o + shift], source
    src_buf[o + src_shift] (src_shift None: a plain RECV, no source)."""
    sbuf, sshift, speer = sspec
    rkind, rbuf, rshift, rpeer, rsrc, rsrc_shift = rspec
    ns, nr = len(schunks), len(rchunks)
    mk = make_step
    for k in range(ns if ns > nr else nr):
        if k < ns:
            o, ln = schunks[k]
            d = slast[k]
            slast[k] = len(st)
            st.append(mk(_SEND, sbuf, o + sshift, ln, speer, _IN, 0, (d,) if d >= 0 else ()))
        if k < nr:
            o, ln = rchunks[k]
            d = rlast[k]
            rlast[k] = len(st)
            st.append(mk(rkind, rbuf, o + rshift, ln, rpeer, rsrc,
                         0 if rsrc_shift is None else o + rsrc_shift, (d,) if d >= 0 else ()))


@gc_paused
def ring_allgather(counts: Sequence[int], chunk_count: int = 0) -> Schedule:
    """Allgather(v): rank r contributes ``counts[r]`` elements (IN), every rank ends with all
    blocks in rank order (OUT: ``sum(counts)``); no scratch. Step 0 copies IN into the own slot
    of OUT and sends the own block straight from IN; step s sends block (r - s) and receives
    block (r - s - 1). Zero-count blocks send nothing."""
    counts = check_counts(counts)
    cc = check_chunk(chunk_count)
    n = len(counts)
    total = sum(counts)
    displ = prefix(counts)
    bchunks = [[(displ[b] + o, ln) for (o, ln) in chunks(counts[b], cc)] for b in range(n)]
    steps: list[list[Step]] = []
    for r in range(n):
        right, left = (r + 1) % n, (r - 1) % n
        st: list[Step] = []
        if counts[r]:
            st.append(Step(_COPY, _OUT, displ[r], counts[r], -1, _IN, 0, ()))
        last = [[-1] * len(bc) for bc in bchunks]
        for s in range(n - 1):
            sb, rb = (r - s) % n, (r - s - 1) % n
            _ring_step(st, bchunks[sb], last[sb],
                       (_IN, -displ[r], right) if s == 0 else (_OUT, 0, right),
                       bchunks[rb], last[rb], (_RECV, _OUT, 0, left, _IN, None))
        steps.append(st)
    return Schedule("allgather", "ring", n, steps, list(counts), [total] * n)


@gc_paused
def ring_reducescatter(counts: Sequence[int], chunk_count: int = 0) -> Schedule:
    """Reduce-scatter(v): IN on every rank is ``sum(counts)`` elements laid out in rank order;
    rank r ends with the reduction of block r (OUT: ``counts[r]``).

    Step s (0..n-2): rank r sends its partial of block (r - s - 1) (step 0: its raw IN block)
    and receives block (r - s - 2), reducing it with its own IN block. The last step receives
    block r and reduces straight into OUT. Partials of the steps in between alternate between
    two SCRATCH slots (slot s % 2, each the size of the largest block this rank receives
    there): the receive into a slot waits for the send that last read that chunk of the slot,
    so scratch is at most 2 * max block, not the full buffer. n == 1: one COPY IN -> OUT."""
    counts = check_counts(counts)
    cc = check_chunk(chunk_count)
    n = len(counts)
    total = sum(counts)
    displ = prefix(counts)
    if n == 1:
        steps = [[Step(_COPY, _OUT, 0, total, -1, _IN, 0, ())] if total else []]
        return Schedule("reducescatter", "ring", 1, steps, [total], [total])
    bchunks = [chunks(counts[b], cc) for b in range(n)]   # offsets relative to the block
    maxk = max(len(bc) for bc in bchunks)
    steps: list[list[Step]] = []
    scratch: list[int] = []
    for r in range(n):
        right, left = (r + 1) % n, (r - 1) % n
        # blocks received into scratch: (r - s - 2) for s = 0 .. n - 3
        slot = max((counts[(r - s - 2) % n] for s in range(n - 2)), default=0)
        nslots = min(2, n - 2)
        scratch.append(slot * nslots)
        last = [[-1] * maxk for _ in range(nslots)]   # last step touching slot chunk k
        st: list[Step] = []
        for s in range(n - 1):
            sb, rb = (r - s - 1) % n, (r - s - 2) % n
            if s == 0:
                sl, sspec = [-1] * maxk, (_IN, displ[sb], right)
            else:
                sl, sspec = last[(s - 1) % 2], (_SCR, ((s - 1) % 2) * slot, right)
            if s == n - 2:       # block r: reduce straight into OUT
                rl, rspec = [-1] * maxk, (_RR, _OUT, 0, left, _IN, displ[rb])
            else:
                rl, rspec = last[s % 2], (_RR, _SCR, (s % 2) * slot, left, _IN, displ[rb])
            _ring_step(st, bchunks[sb], sl, sspec, bchunks[rb], rl, rspec)
        steps.append(st)
    return Schedule("reducescatter", "ring", n, steps, [total] * n, list(counts), scratch,
                    reduces=total > 0)
