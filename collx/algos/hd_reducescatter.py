"""Recursive-halving reduce-scatter(v) for any number of ranks and any per-rank counts.

Participants as in hd_allgather.py: p the largest power of two <= n, rem = n - p; the pairs
(r, r + 1) for even r < 2 rem act as participant v = r / 2, ranks r >= 2 rem as v = r - rem;
participant v owns the result blocks of ranks [start(v), start(v + 1)), a contiguous range of
IN (rank order), so every message is one contiguous range.

Steps, rank r (IN = sum(counts) in rank order, OUT = counts[r]):
  fold: each odd r < 2 rem SENDs its whole IN to r - 1, which RECV_REDUCEs it with its IN
     into SCRATCH (SCRATCH = IN (op) incoming, the full vector).
  rounds d = p/2, p/4, ..., 1: v and v ^ d split the participant range they are responsible
     for in halves; the one with bit d clear keeps the lower half. Each SENDs its partial of
     the half it gives away (the first round of an unfolded rank straight from IN) and
     RECV_REDUCEs the partner's partial of the half it keeps into SCRATCH (the last round of
     an unfolded rank: straight into OUT, its own block).
  unfold: each folding even rank COPYs its block from SCRATCH to OUT and SENDs its partner's
     block, which the partner RECVs into OUT.
Every element is reduced by one chain of ranks and held by one rank only, so there is
nothing to disagree about (bits are whatever that one chain computes). Empty ranges are
never sent. Deps come from the ranges (rangedeps.py), with IN separate and with OUT aliased
to the rank's own block of IN. n == 1: one COPY IN -> OUT.
SCRATCH: unfolded ranks the half kept in round one (none when p == 2), folding ranks the
whole vector.

Bytes on the wire, N = sum(counts), equal counts: a participant sends and receives
N (p - 1) / p, like the ring; a folding pair moves N more over its link. Rounds: log2 p,
plus 2 when n is not a power of two (ring: n - 1).
When it wins: small and medium reduce-scatters at larger n (log n latency instead of
n - 1); the ring for very large vectors on a non-power-of-two n (the fold's extra N).
"""
from __future__ import annotations

from typing import Sequence

from .common import check_counts, gc_paused, prefix
from .hd_allgather import fold_layout
from .ir import Buf, Kind, Schedule, Step
from .rangedeps import RangeRank

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT, _SCR = Buf.IN, Buf.OUT, Buf.SCRATCH


@gc_paused
def hd_reducescatter(counts: Sequence[int]) -> Schedule:
    """IN = ``sum(counts)`` on every rank, OUT = ``counts[r]`` (module docstring)."""
    counts = check_counts(counts)
    n = len(counts)
    displ = prefix(counts)
    total = displ[n]
    if n == 1:
        steps = [[Step(_COPY, _OUT, 0, total, -1, _IN, 0, ())] if total else []]
        return Schedule("reducescatter", "hd", 1, steps, [total], [total])
    p, rem, start = fold_layout(n)

    def off(v: int) -> int:                            # IN offset of participant v's blocks
        return displ[start[v]]

    steps: list[list[Step]] = []
    scratch = [0] * n
    for r in range(n):
        R = RangeRank(shift=-displ[r])
        if r < 2 * rem and r % 2:                      # folded away
            R.add(_SEND, _IN, 0, total, r - 1)
            R.add(_RECV, _OUT, 0, counts[r], r - 1)
            steps.append(R.steps)
            continue
        folds = r < 2 * rem
        v = r // 2 if folds else r - rem
        src, sbase = _IN, 0                            # where the partials are; SCRATCH base
        if folds:
            scratch[r] = total
            R.add(_RR, _SCR, 0, total, r + 1, _IN, 0)
            src = _SCR
        lo, hi = 0, p
        d = p // 2
        first = True
        while d:
            mid = (lo + hi) // 2
            keep, give = ((mid, hi), (lo, mid)) if v & d else ((lo, mid), (mid, hi))
            peer = start[v ^ d]
            go, gn = off(give[0]), off(give[1]) - off(give[0])
            ko, kn = off(keep[0]), off(keep[1]) - off(keep[0])
            soff = (lambda o: o) if src == _IN else (lambda o, b=sbase: o - b)
            R.add(_SEND, src, soff(go), gn, peer)
            if d == 1 and not folds:                   # own block: straight into OUT
                R.add(_RR, _OUT, 0, kn, peer, src, soff(ko))
            else:
                if first and not folds:                # SCRATCH holds this first kept half
                    sbase = ko
                    scratch[r] = kn
                R.add(_RR, _SCR, ko - sbase, kn, peer, src, soff(ko))
                src = _SCR
            first = False
            lo, hi = keep
            d //= 2
        if folds:
            R.add(_COPY, _OUT, 0, counts[r], -1, _SCR, displ[r] - sbase)
            R.add(_SEND, _SCR, displ[r + 1] - sbase, counts[r + 1], r + 1)
        steps.append(R.steps)
    return Schedule("reducescatter", "hd", n, steps, [total] * n, list(counts), scratch,
                    reduces=total > 0)
