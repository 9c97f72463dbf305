"""Star (parameter server) allreduce: co-located (``star_allreduce``) or with dedicated
summation servers (``star_servers_allreduce``, second half of this docstring).

Co-located, for any number of ranks:

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

Dedicated servers (BytePS-style), W workers (ranks 0..W-1) and K servers (ranks W..W+K-1 of
the schedule; the servers run ``collx.server`` and own no user data):
The data is cut into K shards (``even_split(count, K)``), shard k belongs to server W+k, and
each shard into chunks of ``chunk_count`` elements (0: one chunk).
  worker w:  for every chunk of every shard: SEND IN[chunk] to its server (all at once);
             RECV OUT[chunk] from that server, after its own push of that chunk completed
             (IN may be OUT).
  server k:  per chunk, into SCRATCH[chunk] (the server's only buffer): RECV from worker 0,
             then RECV_REDUCE from workers 1, 2, ... W-1 in that order (each after the
             previous), then SEND the sum to every worker.
Per pair and direction the chunks travel in order, so FIFO matching lines up; chunk c+1
is received while chunk c is being returned, so the servers pipeline. One server reduces
each element in a fixed worker order and every worker copies it: all workers end bitwise
identical.
Bytes: every worker sends S and receives S (S = count x itemsize) whatever W is, against
2 S (W - 1) / W for the ring; server k receives and sends W S / K. Rounds per chunk: 2
message hops; the server's W reductions of a chunk are chained.
When it wins: bandwidth-bound sizes when the servers sit on hosts (NICs) of their own — with
K = W each NIC carries S instead of the ring's 2 S (W - 1) / W (1.5 S at W = 4), so ~2 (W-1)/W
x the ring's busbw on links that are the bottleneck. Small messages pay two hops plus the
server's serial reduction: use a tree.
"""
from __future__ import annotations

from .common import check_count, check_n, chunks, even_split, gc_paused, prefix
from .ir import Buf, Kind, Schedule, Step

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT, _SCRATCH = Buf.IN, Buf.OUT, Buf.SCRATCH


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


@gc_paused
def star_servers_allreduce(n_workers: int, n_servers: int, count: int,
                           chunk_count: int = 0) -> Schedule:
    """Workers 0..W-1: IN = OUT = ``count`` (may alias). Servers W..W+K-1: no IN/OUT,
    SCRATCH = their shard. World size of the schedule: W + K (module docstring)."""
    w_n = check_n(n_workers)
    k_n = check_n(n_servers)
    count = check_count(count)
    n = w_n + k_n
    sz = even_split(count, k_n)
    offs = prefix(sz)
    # per server: its chunks as (offset in the shard, length)
    pieces = [chunks(sz[k], chunk_count) if sz[k] else [] for k in range(k_n)]
    steps: list[list[Step]] = []
    for w in range(w_n):
        st: list[Step] = []
        push: dict[tuple[int, int], int] = {}
        depth = max((len(p) for p in pieces), default=0)
        for c in range(depth):                      # round robin: every server busy early
            for k in range(k_n):
                if c < len(pieces[k]):
                    co, cl = pieces[k][c]
                    push[(k, c)] = len(st)
                    st.append(Step(_SEND, _IN, offs[k] + co, cl, w_n + k, _IN, 0, ()))
        for c in range(depth):
            for k in range(k_n):
                if c < len(pieces[k]):
                    co, cl = pieces[k][c]
                    st.append(Step(_RECV, _OUT, offs[k] + co, cl, w_n + k, _IN, 0,
                                   (push[(k, c)],)))
        steps.append(st)
    for k in range(k_n):
        st = []
        for co, cl in pieces[k]:
            last = len(st)
            st.append(Step(_RECV, _SCRATCH, co, cl, 0, _IN, 0, ()))
            for w in range(1, w_n):
                st.append(Step(_RR, _SCRATCH, co, cl, w, _SCRATCH, co, (last,)))
                last = len(st) - 1
            for w in range(w_n):
                st.append(Step(_SEND, _SCRATCH, co, cl, w, _IN, 0, (last,)))
        steps.append(st)
    return Schedule("allreduce", "star", n, steps, [count] * w_n + [0] * k_n,
                    [count] * w_n + [0] * k_n, [0] * w_n + sz, reduces=True)
