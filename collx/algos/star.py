"""Star (co-located parameter server) allreduce, for any number of ranks.

The data is cut into n shards (``even_split(count, n)``); rank s owns shard s.

Steps (rank r, n ranks, shard s = IN/OUT[off_s : off_s + len_s]):
  push:  for s != r: SEND IN[shard s] to s.
         Owner r reduces its shard in a FIXED order, own contribution first, then the peers
         in ascending rank order: RECV_REDUCE OUT[shard r] = IN[shard r] (op) incoming for the
         first peer, then OUT[shard r] = OUT[shard r] (op) incoming, each after the previous.
  pull:  for s != r: SEND OUT[shard r] to s (after the last reduce);
         for s != r: RECV OUT[shard s] from s, after this rank's push of IN[shard s]
         completed (IN may be OUT). No deadlock under rendezvous: an owner posts its reduces
         without waiting for anything of its own, so every push completes.
Per pair and direction the messages are push then pull, so FIFO matching lines up. Empty
shards (count < n) send nothing, on both sides alike. n == 1: one COPY.
Only the owner computes a shard, every other rank copies it, so all ranks end bitwise
identical.

Bytes per rank, N elements: (n - 1) N / n pushed + (n - 1) N / n pulled = 2 N (n - 1) / n,
the same as the ring (within rounding of uneven shards). Two phases of n - 1 messages per
rank each (the ring has 2 (n - 1) dependent rounds), with an incast of n - 1 messages at every
owner. Note: the fixed reduction order chains the owner's n - 1 RECV_REDUCEs, so the
simulator's ``cost`` reports a critical path of n rounds (n - 1 reduces + 1 pull); in the
executor the pushes are all in flight at once and only the local reductions serialize.
When it wins: mid-size messages at small n, on full-duplex links with spare bandwidth, where
the ring's 2 (n - 1) latencies dominate and the incast does not.
"""
from __future__ import annotations

from .common import check_count, check_n, even_split, gc_paused, prefix
from .ir import Buf, Kind, Schedule, Step

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT = Buf.IN, Buf.OUT


@gc_paused
def star_allreduce(n: int, count: int) -> Schedule:
    """IN = OUT = ``count`` on every rank; no scratch. Correct with IN and OUT aliased."""
    n = check_n(n)
    count = check_count(count)
    if n == 1 or count == 0:
        steps = [[Step(_COPY, _OUT, 0, count, -1, _IN, 0, ())] if count else []
                 for _ in range(n)]
        return Schedule("allreduce", "star", n, steps, [count] * n, [count] * n)
    sz = even_split(count, n)
    offs = prefix(sz)
    steps: list[list[Step]] = []
    for r in range(n):
        st: list[Step] = []
        push: dict[int, int] = {}
        peers = [s for s in range(n) if s != r]
        for s in peers:                              # push: my part of shard s to its owner
            if sz[s]:
                push[s] = len(st)
                st.append(Step(_SEND, _IN, offs[s], sz[s], s, _IN, 0, ()))
        mine, off = sz[r], offs[r]
        if mine:
            last = -1
            for s in peers:                          # fixed order: own, then ascending peers
                src = _IN if last == -1 else _OUT
                deps = () if last == -1 else (last,)
                last = len(st)
                st.append(Step(_RR, _OUT, off, mine, s, src, off, deps))
            for s in peers:                          # pull: serve the reduced shard
                st.append(Step(_SEND, _OUT, off, mine, s, _IN, 0, (last,)))
        for s in peers:                              # pull: fetch shard s from its owner
            if sz[s]:
                st.append(Step(_RECV, _OUT, offs[s], sz[s], s, _IN, 0, (push[s],)))
        steps.append(st)
    return Schedule("allreduce", "star", n, steps, [count] * n, [count] * n, reduces=True)
