"""Pairwise-exchange alltoall(v): in step s (1..n-1) rank r sends its block for (r + s) % n
and receives the block from (r - s) % n; step 0 copies the rank's block for itself.

Buffers: IN on rank r is row r of ``send_counts`` laid out by destination (``sum(row r)``),
OUT is column r laid out by source (``sum(column r)``). Every step talks to one peer in each
direction, so no link carries more than one block at a time and a rank never faces n - 1
simultaneous senders (the contention that hurts a naive "post everything" alltoall).

Cost: each rank sends its row minus its own block and receives its column minus its own
block: (n - 1) / n of its data, the lower bound; n - 1 rounds, all independent (no step waits
for another except as in-place safety requires), so with a deep enough transport the rounds
overlap. When it wins: medium and large blocks. For tiny blocks a Bruck-style log n algorithm
wins on latency at the price of log n times the bytes.

In-place (IN is OUT, possible where a rank's row and column totals are equal): a receive may
overwrite IN data that some send has not read yet. On such a rank a receive goes straight into
OUT only if every send reading an overlapping IN range belongs to an earlier step (it then
waits for those sends; steps strictly decrease along any wait chain, so this cannot
deadlock); otherwise it lands in SCRATCH and is copied into OUT once those sends are done. For
uniform blocks about half the blocks take the scratch detour. Ranks whose totals differ
cannot be called in place and use the direct schedule.
"""
from __future__ import annotations

import bisect
from typing import Sequence

from .common import check_counts, gc_paused, prefix
from .ir import Buf, Kind, Schedule, Step

_SEND, _RECV, _COPY = Kind.SEND, Kind.RECV, Kind.COPY
_IN, _OUT, _SCR = Buf.IN, Buf.OUT, Buf.SCRATCH


def _check_matrix(send_counts: Sequence[Sequence[int]]) -> list[list[int]]:
    if send_counts is None:
        raise ValueError("send_counts is required: an n x n matrix, send_counts[src][dst] "
                         "elements")
    n = len(send_counts)
    if n < 1:
        raise ValueError("send_counts must be a non-empty n x n matrix")
    rows = []
    for i, row in enumerate(send_counts):
        rows.append(check_counts(row, n, what=f"send_counts[{i}]"))
    return rows


@gc_paused
def pairwise_alltoall(send_counts: Sequence[Sequence[int]], aliasable: bool = True) -> Schedule:
    """Alltoall(v) by pairwise exchange; ``send_counts[src][dst]`` elements go from src to
    dst. See the module docstring for buffers and the in-place rule. ``aliasable=False``
    (registered as "pairwise_direct") promises IN and OUT are separate buffers: every receive
    goes straight into OUT, no scratch detours."""
    sc = _check_matrix(send_counts)
    n = len(sc)
    sdispl = [prefix(row) for row in sc]                       # IN offsets, by destination
    cols = [[sc[s][r] for s in range(n)] for r in range(n)]
    rdispl = [prefix(col) for col in cols]                     # OUT offsets, by source
    in_counts = [sdispl[r][n] for r in range(n)]
    out_counts = [rdispl[r][n] for r in range(n)]
    steps: list[list[Step]] = []
    scratch = [0] * n
    for r in range(n):
        own = sc[r][r]
        if not aliasable or in_counts[r] != out_counts[r]:
            st: list[Step] = []
            if own:
                st.append(Step(_COPY, _OUT, rdispl[r][r], own, -1, _IN, sdispl[r][r], ()))
            for s in range(1, n):
                d, q = (r + s) % n, (r - s) % n
                if sc[r][d]:
                    st.append(Step(_SEND, _IN, sdispl[r][d], sc[r][d], d, _IN, 0, ()))
                if sc[q][r]:
                    st.append(Step(_RECV, _OUT, rdispl[r][q], sc[q][r], q, _IN, 0, ()))
            steps.append(st)
        else:
            st, scratch[r] = _aliasable_rank(r, n, sc, sdispl[r], rdispl[r])
            steps.append(st)
    return Schedule("alltoall", "pairwise" if aliasable else "pairwise_direct", n, steps,
                    in_counts, out_counts, scratch)


def _aliasable_rank(r: int, n: int, sc: list[list[int]], sdispl: list[int],
                    rdispl: list[int]) -> tuple[list[Step], int]:
    """Steps of a rank whose IN and OUT may be one buffer: sends first (no deps), then the own
    block's copy (after the sends reading where it writes), then the receives."""
    st: list[Step] = []
    send_idx = [-1] * n       # step index of the send to destination d
    send_step = [0] * n       # exchange step s of the send to d
    for s in range(1, n):
        d = (r + s) % n
        if sc[r][d]:
            send_idx[d] = len(st)
            send_step[d] = s
            st.append(Step(_SEND, _IN, sdispl[d], sc[r][d], d, _IN, 0, ()))

    def overlapping_sends(lo: int, hi: int) -> list[int]:
        """Destinations whose IN range overlaps [lo, hi) (the row is laid out by dst)."""
        if hi <= lo:
            return []
        d = bisect.bisect_right(sdispl, lo) - 1
        out = []
        while d < n and sdispl[d] < hi:
            if d != r and sc[r][d] and sdispl[d] + sc[r][d] > lo:
                out.append(d)
            d += 1
        return out

    own = sc[r][r]
    copy_idx = -1
    c_lo, c_hi = sdispl[r], sdispl[r] + own           # IN range the own copy reads
    if own and rdispl[r] != sdispl[r]:
        dsts = overlapping_sends(rdispl[r], rdispl[r] + own)
        copy_idx = len(st)
        st.append(Step(_COPY, _OUT, rdispl[r], own, -1, _IN, sdispl[r],
                       tuple(sorted(send_idx[d] for d in dsts))))
    elif own:
        c_lo = c_hi = 0   # a copy onto itself in place: the executor skips it, reads nothing
        st.append(Step(_COPY, _OUT, rdispl[r], own, -1, _IN, sdispl[r], ()))
    scratch = 0
    detours = []
    for s in range(1, n):
        q = (r - s) % n
        ln = sc[q][r]
        if not ln:
            continue
        lo, hi = rdispl[q], rdispl[q] + ln
        dsts = overlapping_sends(lo, hi)
        hits_copy = copy_idx >= 0 and lo < c_hi and c_lo < hi
        if not hits_copy and all(send_step[d] < s for d in dsts):
            st.append(Step(_RECV, _OUT, lo, ln, q, _IN, 0,
                           tuple(sorted(send_idx[d] for d in dsts))))
        else:
            i = len(st)
            st.append(Step(_RECV, _SCR, scratch, ln, q, _IN, 0, ()))
            deps = [i] + [send_idx[d] for d in dsts] + ([copy_idx] if hits_copy else [])
            detours.append(Step(_COPY, _OUT, lo, ln, -1, _SCR, scratch, tuple(sorted(deps))))
            scratch += ln
    st.extend(detours)
    return st, scratch
