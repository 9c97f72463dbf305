"""Recursive doubling allreduce: the latency-optimal exchange, for any number of ranks.

Let p be the largest power of two <= n and rem = n - p. Fold (as in hd): among ranks
r < 2 rem, each odd rank sends its whole IN to r - 1, which reduces it with its own IN and
takes part as participant v = r / 2; ranks r >= 2 rem take part as v = r - rem.
  doubling, d = 1, 2, ..., p/2: v and v ^ d exchange their whole current partial sums and
      each reduces the partner's into its own: partial(v) = mine (op) partner's. Every step
      combines two operands, and for sum and product of numbers op(a, b) == op(b, a) bit for
      bit, so the partners hold identical bits after every round. Not for min/max of
      +0.0 vs -0.0 or of NaNs with different payloads: the kernels keep one operand by
      position there, so ranks may differ in the sign of a zero or a NaN's payload (ring,
      hd and the trees compute each element once and copy it, and do not).
  unfold: each folding even rank sends its result to its odd partner.
Buffers: the partial sums alternate between SCRATCH and OUT (a round sends from one while
the reduction writes the other, so nothing is overwritten before it is read, also in place);
the first write goes to SCRATCH, and a final COPY moves the result to OUT when the number of
writes is odd. Deps come from the ranges each step touches (collx.algos.rangedeps), in both
calling modes.

Bytes on the wire, N elements, per participant: N log2 p (the whole vector every round);
folding ranks add N. Rounds: log2 p, plus 2 when n is not a power of two — half the tree's
2 log2 n and far below the ring's 2 (n - 1).
When it wins: small messages (latency-bound), at any n; from a few KiB on, the ring, hd or
dbtree move less per rank.
"""
from __future__ import annotations

from .common import check_count, check_n, gc_paused
from .ir import Buf, Kind, Schedule
from .rangedeps import RangeRank

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY
_IN, _OUT, _SCRATCH = Buf.IN, Buf.OUT, Buf.SCRATCH


@gc_paused
def rd_allreduce(n: int, count: int) -> Schedule:
    """IN = OUT = ``count`` on every rank, SCRATCH = ``count``; correct in place."""
    n = check_n(n)
    count = check_count(count)
    p = 1 << (n.bit_length() - 1)
    rem = n - p
    rounds = p.bit_length() - 1
    steps = []
    scratch = [0] * n
    for r in range(n):
        rk = RangeRank()
        if count == 0:
            steps.append(rk.steps)
            continue
        if n == 1:
            rk.add(_COPY, _OUT, 0, count, -1, _IN, 0)
            steps.append(rk.steps)
            continue
        scratch[r] = count
        if r < 2 * rem and r % 2:                     # folded away: give, then take
            rk.add(_SEND, _IN, 0, count, r - 1)
            rk.add(_RECV, _OUT, 0, count, r - 1)
            steps.append(rk.steps)
            continue
        v = r // 2 if r < 2 * rem else r - rem
        folds = r < 2 * rem
        writes = rounds + folds
        cur = _IN
        k = 0

        def target(k: int) -> Buf:
            return _SCRATCH if k % 2 == 0 else _OUT

        if folds:
            rk.add(_RR, target(k), 0, count, r + 1, cur, 0)
            cur, k = target(k), k + 1
        for bit in range(rounds):
            pv = v ^ (1 << bit)
            peer = 2 * pv if pv < rem else pv + rem
            rk.add(_SEND, cur, 0, count, peer)
            rk.add(_RR, target(k), 0, count, peer, cur, 0)
            cur, k = target(k), k + 1
        if cur != _OUT:
            rk.add(_COPY, _OUT, 0, count, -1, cur, 0)
        assert k == writes
        if folds:
            rk.add(_SEND, _OUT, 0, count, r + 1)
        steps.append(rk.steps)
    return Schedule("allreduce", "rd", n, steps, [count] * n, [count] * n, scratch,
                    reduces=True)
