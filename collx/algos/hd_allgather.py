"""Recursive-doubling allgather(v) for any number of ranks and any per-rank counts.

Let p be the largest power of two <= n and rem = n - p. The ranks r < 2 rem pair up
(r even with r + 1); each pair takes part as one participant v = r / 2, ranks r >= 2 rem as
v = r - rem. Participant v owns the blocks of ranks [start(v), start(v + 1)), where
start(v) = 2 v for v <= rem and v + rem above: a contiguous range of OUT (rank order), so
every message below is one contiguous range.

Steps, rank r (block b = OUT[displ[b]:displ[b + 1]], IN = counts[r]):
  0. COPY IN into the rank's own slot of OUT (a no-op in place).
  fold: each odd r < 2 rem SENDs its IN to r - 1, which RECVs it into its slot of OUT.
  rounds d = 1, 2, ..., p/2: v and v ^ d exchange the ranges they hold: v holds the
     participants [v - v % d, v - v % d + d); it SENDs that range (round 1 of an unfolded
     rank straight from IN) and RECVs the partner's range into OUT. After the last round
     every participant holds all of OUT.
  unfold: each folding even rank SENDs OUT except its partner's block (two messages,
     below and above it) to r + 1, which RECVs them.
Empty ranges (zero counts) are never sent, on both sides alike. Deps come from the ranges
(rangedeps.py), both with IN separate and with IN aliased to the rank's own slot of OUT.
n == 1: the COPY alone.

Bytes on the wire, N = sum(counts), equal counts: a participant sends and receives
N (p - 1) / p (what it lacks), like the ring; a folding pair moves N / n more in and
N (n - 2) / n more out. Rounds: log2 p, plus 2 when n is not a power of two
(ring: n - 1). Messages per rank: log2 p (+2).
When it wins: small and medium allgathers at larger n, where the ring's n - 1 latencies
dominate; the ring keeps the edge for very large blocks on a non-power-of-two n (the fold
moves the whole vector once more over one link).
"""
from __future__ import annotations

from typing import Sequence

from .common import check_counts, gc_paused, prefix
from .ir import Buf, Kind, Schedule, Step
from .rangedeps import RangeRank

_SEND, _RECV, _COPY = Kind.SEND, Kind.RECV, Kind.COPY
_IN, _OUT = Buf.IN, Buf.OUT


def fold_layout(n: int) -> tuple[int, int, list[int]]:
    """(p, rem, start): p the largest power of two <= n, rem = n - p, start[v] the first rank
    of participant v (v = 0..p; start[p] = n)."""
    p = 1
    while p * 2 <= n:
        p *= 2
    rem = n - p
    start = [2 * v if v <= rem else v + rem for v in range(p + 1)]
    return p, rem, start


@gc_paused
def hd_allgather(counts: Sequence[int]) -> Schedule:
    """IN = ``counts[r]``, OUT = ``sum(counts)`` in rank order, no scratch (module
    docstring). Correct out of place and with IN aliased to the own slot of OUT."""
    counts = check_counts(counts)
    n = len(counts)
    displ = prefix(counts)
    total = displ[n]
    p, rem, start = fold_layout(n)

    def rng(a: int, b: int) -> tuple[int, int]:      # participants [a, b) -> (off, count)
        return displ[start[a]], displ[start[b]] - displ[start[a]]

    steps: list[list[Step]] = []
    for r in range(n):
        R = RangeRank(shift=displ[r])
        R.add(_COPY, _OUT, displ[r], counts[r], -1, _IN, 0)
        if r < 2 * rem and r % 2:                      # folded away
            R.add(_SEND, _IN, 0, counts[r], r - 1)
            R.add(_RECV, _OUT, 0, displ[r], r - 1)
            R.add(_RECV, _OUT, displ[r + 1], total - displ[r + 1], r - 1)
            steps.append(R.steps)
            continue
        folds = r < 2 * rem
        v = r // 2 if folds else r - rem
        if folds:
            R.add(_RECV, _OUT, displ[r + 1], counts[r + 1], r + 1)
        d = 1
        while d < p:
            base = v - v % d
            peer = start[v ^ d]                       # the participant's (even) rank
            so, sn = rng(base, base + d)
            if d == 1 and not folds:
                R.add(_SEND, _IN, 0, counts[r], peer)
            else:
                R.add(_SEND, _OUT, so, sn, peer)
            ro, rn = rng(base ^ d, (base ^ d) + d)
            R.add(_RECV, _OUT, ro, rn, peer)
            d *= 2
        if folds:
            R.add(_SEND, _OUT, 0, displ[r + 1], r + 1)
            R.add(_SEND, _OUT, displ[r + 2], total - displ[r + 2], r + 1)
        steps.append(R.steps)
    return Schedule("allgather", "hd", n, steps, list(counts), [total] * n)
