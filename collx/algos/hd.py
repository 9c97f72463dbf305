"""Recursive halving-doubling allreduce (Rabenseifner), for any number of ranks.

Let p be the largest power of two <= n and rem = n - p. Fold: among ranks r < 2 rem, each odd
rank sends its whole IN to r - 1, which reduces it into OUT (OUT = IN (op) incoming) and
takes part as participant v = r / 2; ranks r >= 2 rem take part as v = r - rem. The data is
cut into p blocks (``even_split(count, p)``); block ranges below are contiguous runs of blocks.

  reduce-scatter by recursive halving, d = p/2, p/4, ..., 1: v and v ^ d split their current
      range in halves; the one with bit d clear keeps the lower half. Each sends its partial of
      the half it gives away and RECV_REDUCEs the partner's partial of the half it keeps into
      OUT (the first round of an unfolded rank reads IN directly). Afterwards v owns block v,
      fully reduced, computed by v alone.
  allgather by recursive doubling, d = 1, 2, ..., p/2: v sends the range it owns and receives
      the partner's into the half it gave away at the same d (after that send completed).
  unfold: each folding even rank sends the whole OUT to its odd partner, which receives it
      into OUT (after its fold send completed: IN may be OUT).
Every block is reduced by exactly one rank and only copied elsewhere, so all ranks end bitwise
identical. Empty ranges (count < p) send nothing, on both sides alike. n == 1: one COPY.

Deps are derived per step from the buffer ranges it touches (IN treated as OUT, so the
in-place call is covered): a step waits for every earlier step of the rank it conflicts with.
A round's SEND and RECV_REDUCE touch disjoint halves, so no rank waits for its own send
before receiving in the same round (that would deadlock under rendezvous).

Bytes on the wire, N elements, per participant: N (p - 1) / p in each phase, 2 N (p - 1) / p
in all (bandwidth-optimal like the ring); folding ranks send or receive N more. Rounds:
2 log2 p, plus 2 when n is not a power of two.
When it wins: medium messages and large n: the ring's bandwidth with log n latency instead of
n - 1; non-powers of two pay the fold's extra N on 2 (n - p) ranks, where the ring does not.
"""
from __future__ import annotations

from .common import check_count, check_n, even_split, gc_paused, prefix
from .ir import Buf, Kind, Schedule, Step

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT = Buf.IN, Buf.OUT


class _Rank:
    """Steps of one rank, with deps computed from the ranges they read and write."""

    def __init__(self) -> None:
        self.st: list[Step] = []
        self.acc: list[list[tuple[int, int, bool]]] = []   # per step: (lo, hi, writes), IN = OUT

    def add(self, kind: Kind, buf: Buf, off: int, cnt: int, peer: int = -1,
            src_buf: Buf = _IN, src_off: int = 0) -> None:
        if cnt == 0:
            return
        i = len(self.st)
        mine = []
        if kind == _SEND:
            mine.append((off, off + cnt, False))
        else:
            mine.append((off, off + cnt, True))
            if kind != _RECV:
                mine.append((src_off, src_off + cnt, False))
        deps = []
        for j, accs in enumerate(self.acc):
            if any(a < d and c < b and (w1 or w2) for (a, b, w1) in accs
                   for (c, d, w2) in mine):
                deps.append(j)
        self.acc.append(mine)
        self.st.append(Step(kind, buf, off, cnt, peer, src_buf, src_off, tuple(deps)))


@gc_paused
def hd_allreduce(n: int, count: int) -> Schedule:
    """IN = OUT = ``count`` on every rank; no scratch. Correct with IN and OUT aliased."""
    n = check_n(n)
    count = check_count(count)
    if n == 1 or count == 0:
        steps = [[Step(_COPY, _OUT, 0, count, -1, _IN, 0, ())] if count else []
                 for _ in range(n)]
        return Schedule("allreduce", "hd", n, steps, [count] * n, [count] * n)
    p = 1
    while p * 2 <= n:
        p *= 2
    rem = n - p
    offs = prefix(even_split(count, p))

    def absolute(v: int) -> int:
        return 2 * v if v < rem else v + rem

    steps: list[list[Step]] = []
    for r in range(n):
        R = _Rank()
        if r < 2 * rem and r % 2:                 # folded away: hand over, wait for result
            R.add(_SEND, _IN, 0, count, r - 1)
            R.add(_RECV, _OUT, 0, count, r - 1)
            steps.append(R.st)
            continue
        folds = r < 2 * rem
        v = r // 2 if folds else r - rem
        src = _IN
        if folds:
            R.add(_RR, _OUT, 0, count, r + 1, _IN, 0)
            src = _OUT
        lo, hi = 0, p                              # block range this rank is responsible for
        gave = []                                  # (d, keep range, give range) per round
        d = p // 2
        while d:
            mid = (lo + hi) // 2
            keep, give = ((mid, hi), (lo, mid)) if v & d else ((lo, mid), (mid, hi))
            peer = absolute(v ^ d)
            ko, kc = offs[keep[0]], offs[keep[1]] - offs[keep[0]]
            go, gn = offs[give[0]], offs[give[1]] - offs[give[0]]
            R.add(_SEND, src, go, gn, peer)
            R.add(_RR, _OUT, ko, kc, peer, src, ko)
            src = _OUT
            gave.append((d, keep, give))
            lo, hi = keep
            d //= 2
        for (d, keep, give) in reversed(gave):     # d = 1, 2, ..., p/2
            peer = absolute(v ^ d)
            R.add(_SEND, _OUT, offs[keep[0]], offs[keep[1]] - offs[keep[0]], peer)
            R.add(_RECV, _OUT, offs[give[0]], offs[give[1]] - offs[give[0]], peer)
        if folds:
            R.add(_SEND, _OUT, 0, count, r + 1)
        steps.append(R.st)
    return Schedule("allreduce", "hd", n, steps, [count] * n, [count] * n, reduces=True)
