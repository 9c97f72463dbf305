"""Deps derived from the buffer ranges steps touch, in both calling modes at once.

``RangeRank`` collects one rank's steps. Every step is described by the ranges it reads and
writes; a new step depends on every earlier step of the rank it conflicts with (overlap, at
least one writing) in either of two worlds:

  separate  IN, OUT and SCRATCH are three memories (out-of-place call);
  aliased   IN is part of OUT: IN element x is OUT element x + ``shift`` (the in-place call;
            shift = the rank's own block offset for allgather, minus it for reducescatter),
            and a COPY whose source maps exactly onto its destination is a no-op there.

So the schedule is hazard-free out of place and in place. O(steps^2) per rank: meant for
the log-round algorithms (a few dozen steps per rank), not for chunked pipelines.
Zero-count steps are dropped (empty ranges send nothing, on both sides alike).
"""
from __future__ import annotations

from .ir import Buf, Kind, Step, make_step

_SEND, _RECV, _RR, _COPY = Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY


class RangeRank:
    """Steps of one rank with range-derived deps (module docstring)."""

    def __init__(self, shift: int = 0) -> None:
        self.shift = shift
        self.steps: list[Step] = []
        self._acc: list[list[tuple[int, int, int, bool]]] = []   # (space, lo, hi, writes)

    def _spaces(self, buf: Buf, off: int, cnt: int, write: bool):
        lo, hi = off, off + cnt
        b = int(buf)
        out = [(b, lo, hi, write)]                            # separate world: spaces 0..2
        if buf == Buf.IN:
            out.append((3 + int(Buf.OUT), lo + self.shift, hi + self.shift, write))
        else:
            out.append((3 + b, lo, hi, write))                  # aliased world: spaces 3..5
        return out

    def add(self, kind: Kind, buf: Buf, off: int, cnt: int, peer: int = -1,
            src_buf: Buf = Buf.IN, src_off: int = 0) -> int:
        """Append a step (unless cnt == 0); returns its index or -1."""
        if cnt == 0:
            return -1
        if kind == _SEND:
            mine = self._spaces(buf, off, cnt, False)
        else:
            mine = self._spaces(buf, off, cnt, True)
            if kind != _RECV:
                src = self._spaces(src_buf, src_off, cnt, False)
                if kind == _COPY and src[1][:3] == mine[1][:3]:
                    mine = [mine[0], src[0]]                    # no-op when aliased
                else:
                    mine = mine + src
        deps = []
        for j, accs in enumerate(self._acc):
            for (s1, a, b, w1) in accs:
                if any(s1 == s2 and a < d and c < b and (w1 or w2) for (s2, c, d, w2) in mine):
                    deps.append(j)
                    break
        self._acc.append(mine)
        self.steps.append(make_step(kind, buf, off, cnt, peer, src_buf,
                                    src_off if kind in (_RR, _COPY) else 0, tuple(deps)))
        return len(self.steps) - 1
