"""Pair exchange allreduce: the one-message-round allreduce of two ranks.

Steps (rank r, peer p = 1 - r, N elements):
  0. SEND IN[0:N] to p
  1. RECV_REDUCE SCRATCH[0:N] = IN[0:N] (op) incoming       (no wait: separate buffers)
  2. COPY OUT = SCRATCH, after 0 and 1                       (in-place safe: IN may be OUT)

Bytes on the wire: N per rank per direction (the ring sends N/2 twice, in two dependent
rounds). One message latency instead of two, plus an N-element local copy: it wins for
small, latency-bound messages; the ring wins once N/2 of bandwidth outweighs one latency.
Both ranks compute x0 (op) x1 in the order "own, peer": the ops are commutative in IEEE
arithmetic, so both results are bitwise identical, as an allreduce must be. With more than
two ranks the same trick would reduce in different orders per rank, so it is two-only.
"""
from __future__ import annotations

from .ir import Buf, Kind, Schedule, Step


def pair_allreduce(n: int, count: int) -> Schedule:
    if n != 2:
        raise ValueError(f"pair allreduce is for exactly 2 ranks, not {n}")
    steps: list[list[Step]] = []
    for r in range(2):
        p = 1 - r
        if count == 0:
            steps.append([])
            continue
        steps.append([
            Step(Kind.SEND, Buf.IN, 0, count, p, Buf.IN, 0, ()),
            Step(Kind.RECV_REDUCE, Buf.SCRATCH, 0, count, p, Buf.IN, 0, ()),
            Step(Kind.COPY, Buf.OUT, 0, count, -1, Buf.SCRATCH, 0, (0, 1)),
        ])
    return Schedule("allreduce", "pair", 2, steps, [count] * 2, [count] * 2, [count] * 2,
                    reduces=count > 0)
