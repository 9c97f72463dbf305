"""Run a schedule on numpy arrays in one process, check it for races, count its cost.

``simulate`` executes every rank's steps with the strictest semantics the executor may have
(rendezvous): a step starts when its deps are complete and, for a message, when every earlier
message in the same (src, dst) direction has been posted; a SEND and its matching RECV complete
together and the sent range is read at that moment (a peer may pull it late). Among the steps
that can complete, one is picked pseudo-randomly (``seed``), so a schedule that is only correct
in one completion order fails here.

``check_hazards`` is the static half: two steps of a rank that touch overlapping ranges of one
buffer, at least one of them writing, must be ordered by the transitive closure of ``deps``.
Together they prove what the executor relies on (see ir.py).

``cost`` counts bytes and messages per rank and the critical path in message rounds; the
cost model in collx/topo builds on it.
"""
from __future__ import annotations

import random
from typing import Callable, Optional, Sequence

import numpy as np

from .ir import Buf, Kind, Schedule, Step

__all__ = ["ScheduleError", "simulate", "check_hazards", "cost", "validate", "UFUNCS"]


class ScheduleError(Exception):
    """A schedule breaks a rule of ir.py: deadlock, mismatched or unmatched message,
    out-of-bounds range, bad dependency, bad peer, write to IN, or a race."""


UFUNCS = {"sum": np.add, "prod": np.multiply, "min": np.minimum, "max": np.maximum}

_MSG = (Kind.SEND, Kind.RECV, Kind.RECV_REDUCE)
_WRITES = (Kind.RECV, Kind.RECV_REDUCE, Kind.COPY)
_MAX_DUMP = 6   # steps listed per rank in a deadlock report


def _bname(b: int) -> str:
    return Buf(b).name if b in (0, 1, 2) else f"buffer#{b}"


def _desc(rank: int, i: int, st: Step) -> str:
    kind = Kind(st.kind).name if st.kind in (0, 1, 2, 3) else f"kind#{st.kind}"
    where = f"{_bname(st.buf)}[{st.off}:{st.off + st.count}]"
    if st.kind == Kind.SEND:
        return f"rank {rank} step {i} SEND {where} -> {st.peer}"
    if st.kind == Kind.RECV:
        return f"rank {rank} step {i} RECV {where} <- {st.peer}"
    src = f"{_bname(st.src_buf)}[{st.src_off}:{st.src_off + st.count}]"
    if st.kind == Kind.RECV_REDUCE:
        return f"rank {rank} step {i} RECV_REDUCE {where} = {src} op (<- {st.peer})"
    return f"rank {rank} step {i} {kind} {where} = {src}"


def _buf_size(s: Schedule, rank: int, buf: int) -> int:
    if buf == Buf.IN:
        return s.in_counts[rank]
    if buf == Buf.OUT:
        return s.out_counts[rank]
    if buf == Buf.SCRATCH:
        return s.scratch_counts[rank]
    raise ScheduleError(f"rank {rank}: unknown buffer id {buf}")


def _aliased(s: Schedule, rank: int, in_place: bool) -> bool:
    """An in-place call passes one memory as IN and OUT; the runtime does so only where the
    two have the same length, so that is where the checks alias them."""
    return in_place and s.in_counts[rank] == s.out_counts[rank]


class _Plan:
    """Everything static about a schedule, validated: global step ids and message matching.

    Steps get global ids ``base[rank] + index``. For a message step, ``partner`` is the id of
    its match, ``prev_dir``/``next_dir`` the neighbouring messages in the same direction
    (posting order)."""

    def __init__(self, s: Schedule):
        n = s.world_size
        if n < 1:
            raise ScheduleError(f"world_size must be >= 1, got {n}")
        for name in ("steps", "in_counts", "out_counts", "scratch_counts"):
            if len(getattr(s, name)) != n:
                raise ScheduleError(f"{name} has {len(getattr(s, name))} entries for "
                                    f"world_size {n}")
        self.s = s
        self.base = []
        total = 0
        for r in range(n):
            self.base.append(total)
            total += len(s.steps[r])
        self.total = total
        self.rank_of: list[int] = [0] * total
        self.step_of: list[Step] = [None] * total  # type: ignore[list-item]
        self.partner = [-1] * total
        self.prev_dir = [-1] * total
        self.next_dir = [-1] * total
        sends: dict[tuple[int, int], list[int]] = {}
        recvs: dict[tuple[int, int], list[int]] = {}
        rank_of, step_of = self.rank_of, self.step_of
        SEND, COPY, RR, IN = Kind.SEND, Kind.COPY, Kind.RECV_REDUCE, Buf.IN
        for r in range(n):
            b = self.base[r]
            sizes = (s.in_counts[r], s.out_counts[r], s.scratch_counts[r])
            for i, st in enumerate(s.steps[r]):
                g = b + i
                rank_of[g] = r
                step_of[g] = st
                k, buf, off, cnt = st.kind, st.buf, st.off, st.count
                # the common, valid case in a few comparisons; details on failure
                ok = 0 <= buf <= 2 and 0 <= off and 0 <= cnt and off + cnt <= sizes[buf]
                if k == SEND:
                    peer = st.peer
                    ok = ok and 0 <= peer < n and peer != r
                    sends.setdefault((r, peer), []).append(g)
                elif k == COPY or k == RR:
                    sb, so = st.src_buf, st.src_off
                    ok = (ok and buf != IN and 0 <= sb <= 2 and 0 <= so
                          and so + cnt <= sizes[sb])
                    if k == RR:
                        peer = st.peer
                        ok = ok and 0 <= peer < n and peer != r
                        recvs.setdefault((peer, r), []).append(g)
                else:
                    peer = st.peer
                    ok = ok and k == Kind.RECV and buf != IN and 0 <= peer < n and peer != r
                    recvs.setdefault((peer, r), []).append(g)
                for d in st.deps:
                    if not 0 <= d < i:
                        ok = False
                if not ok:
                    self._check_step(r, i, st)
        for key in sorted(set(sends) | set(recvs)):
            ss, rr = sends.get(key, []), recvs.get(key, [])
            a, b2 = key
            for k in range(min(len(ss), len(rr))):
                gs, gr = ss[k], rr[k]
                cs, cr = self.step_of[gs].count, self.step_of[gr].count
                if cs != cr:
                    raise ScheduleError(
                        f"count mismatch on message #{k} from rank {a} to rank {b2}: "
                        f"{_desc(a, gs - self.base[a], self.step_of[gs])} sends {cs} elements, "
                        f"{_desc(b2, gr - self.base[b2], self.step_of[gr])} expects {cr}")
                self.partner[gs], self.partner[gr] = gr, gs
            if len(ss) != len(rr):
                k = min(len(ss), len(rr))
                extra = ss[k] if len(ss) > k else rr[k]
                er = self.rank_of[extra]
                raise ScheduleError(
                    f"unmatched message: rank {a} sends {len(ss)} messages to rank {b2}, "
                    f"which receives {len(rr)}; first unmatched: "
                    f"{_desc(er, extra - self.base[er], self.step_of[extra])}")
            for lst in (ss, rr):
                for k in range(1, len(lst)):
                    self.prev_dir[lst[k]] = lst[k - 1]
                    self.next_dir[lst[k - 1]] = lst[k]

    def _check_step(self, r: int, i: int, st: Step) -> None:
        s = self.s
        n = s.world_size
        if st.kind not in (Kind.SEND, Kind.RECV, Kind.RECV_REDUCE, Kind.COPY):
            raise ScheduleError(f"rank {r} step {i}: unknown kind {st.kind!r}")
        if st.count < 0 or st.off < 0 or st.src_off < 0:
            raise ScheduleError(f"{_desc(r, i, st)}: negative offset or count")
        if st.off + st.count > _buf_size(s, r, st.buf):
            raise ScheduleError(
                f"{_desc(r, i, st)}: out of bounds, {_bname(st.buf)} of rank {r} has "
                f"{_buf_size(s, r, st.buf)} elements")
        if st.kind in (Kind.RECV_REDUCE, Kind.COPY) and \
                st.src_off + st.count > _buf_size(s, r, st.src_buf):
            raise ScheduleError(
                f"{_desc(r, i, st)}: source out of bounds, {_bname(st.src_buf)} of rank {r} "
                f"has {_buf_size(s, r, st.src_buf)} elements")
        if st.kind in _WRITES and st.buf == Buf.IN:
            raise ScheduleError(f"{_desc(r, i, st)}: writes IN, which is the caller's input "
                                "and never written")
        if st.kind in _MSG and not (0 <= st.peer < n and st.peer != r):
            raise ScheduleError(f"{_desc(r, i, st)}: peer {st.peer} is out of range "
                                f"[0, {n}) or the rank itself")
        for d in st.deps:
            if not (0 <= d < i):
                raise ScheduleError(f"{_desc(r, i, st)}: bad dependency {d} (deps must name "
                                    "earlier steps of the same rank)")
        raise ScheduleError(f"{_desc(r, i, st)}: invalid step")

    def run(self, pick: Optional[Callable[[int], int]],
            on_post: Callable[[int], None], on_complete: Callable[[int, int], None]) -> None:
        """Drive the schedule to the end. ``pick(k)`` chooses which of ``k`` ready events
        completes next (None: first ready first). ``on_post(g)``: step g has started (deps
        done, and for messages posted in FIFO order). ``on_complete(g, partner)``: a local step
        (partner -1) or a matched SEND/RECV pair (send id, recv id) completes."""
        total = self.total
        step_of, partner = self.step_of, self.partner
        prev_dir, next_dir = self.prev_dir, self.next_dir
        pending = [0] * total
        children: list[Optional[list[int]]] = [None] * total
        for r, b in enumerate(self.base):
            for i, st in enumerate(self.s.steps[r]):
                deps = st.deps
                if deps:
                    g = b + i
                    pending[g] = len(deps)
                    for d in deps:
                        c = children[b + d]
                        if c is None:
                            children[b + d] = [g]
                        else:
                            c.append(g)
        depsdone = [False] * total
        posted = [False] * total
        done = [False] * total
        ready: list[int] = []   # local step ids, or send ids of pairs posted on both sides

        def start(g: int) -> None:
            depsdone[g] = True
            if step_of[g].kind == Kind.COPY:
                on_post(g)
                ready.append(g)
                return
            while g != -1 and depsdone[g] and not posted[g] and \
                    (prev_dir[g] == -1 or posted[prev_dir[g]]):
                posted[g] = True
                on_post(g)
                p = partner[g]
                if posted[p]:
                    ready.append(g if step_of[g].kind == Kind.SEND else p)
                g = next_dir[g]

        for g in range(total):
            if pending[g] == 0:
                start(g)
        ndone = 0
        while ready:
            k = pick(len(ready)) if pick is not None else 0
            g = ready[k]
            ready[k] = ready[-1]
            ready.pop()
            p = partner[g]
            on_complete(g, p)
            for x in (g, p) if p != -1 else (g,):
                done[x] = True
                ndone += 1
                for c in children[x] or ():
                    pending[c] -= 1
                    if pending[c] == 0:
                        start(c)
        if ndone != total:
            raise ScheduleError(self._deadlock_report(depsdone, posted, done))

    def _deadlock_report(self, depsdone, posted, done) -> str:
        lines = ["deadlock: no step can progress. Waiting, per rank:"]
        s = self.s
        for r in range(s.world_size):
            b = self.base[r]
            waits = []
            for i, st in enumerate(s.steps[r]):
                g = b + i
                if done[g]:
                    continue
                if not depsdone[g]:
                    missing = [d for d in st.deps if not done[b + d]]
                    why = f"waits for its deps {missing}"
                elif not posted[g]:
                    why = (f"cannot be posted: the earlier message in this direction, step "
                           f"{self.prev_dir[g] - b}, is not posted")
                else:
                    p = self.partner[g]
                    pr = self.rank_of[p]
                    why = (f"posted; its match, rank {pr} step {p - self.base[pr]}, "
                           "is not posted")
                waits.append(f"    {_desc(r, i, st)}: {why}")
            if waits:
                extra = len(waits) - _MAX_DUMP
                lines.append(f"  rank {r}: {len(waits)} steps not done")
                lines.extend(waits[:_MAX_DUMP])
                if extra > 0:
                    lines.append(f"    ... and {extra} more")
        return "\n".join(lines)


def validate(schedule: Schedule) -> None:
    """Static checks only: buffer bounds, peers, deps, message counts and matching, no write
    to IN. Raises ScheduleError."""
    _Plan(schedule)


def _sentinel(dtype: np.dtype):
    if dtype.kind == "f" or dtype.kind == "c":
        return np.nan
    if dtype.kind in "iu":
        return np.iinfo(dtype).max - 7
    if dtype.kind == "b":
        return True
    return 0


def simulate(schedule: Schedule, inputs: Sequence[Optional[np.ndarray]], op: str = "sum",
             in_place: bool = False, seed: int = 0) -> list[np.ndarray]:
    """Execute ``schedule`` on numpy arrays and return every rank's OUT array.

    ``inputs[r]`` is rank r's IN (1-D, ``in_counts[r]`` elements; None or empty where the rank
    passes none). OUT and SCRATCH start filled with a sentinel (NaN, or a large integer) so an
    element no step writes shows up. ``in_place`` makes IN and OUT one array on the ranks where
    their lengths match. Inputs are not modified. Raises ScheduleError on any broken rule
    (see ``validate``), on deadlock (with what every rank waits for) and when an out-of-place
    run changed IN. Races show as wrong results in some completion order (``seed``);
    ``check_hazards`` finds them statically.
    """
    if op not in UFUNCS:
        raise ValueError(f"op must be one of {sorted(UFUNCS)}, got {op!r}")
    ufunc = UFUNCS[op]
    s = schedule
    plan = _Plan(s)
    n = s.world_size
    if len(inputs) != n:
        raise ValueError(f"{len(inputs)} inputs for world_size {n}")
    dtype = None
    for x in inputs:
        if x is not None and np.asarray(x).size:
            dtype = np.asarray(x).dtype
            break
    if dtype is None:
        dtype = np.dtype(np.float64)
    bufs: list[list[np.ndarray]] = []
    originals: list[Optional[np.ndarray]] = []
    for r in range(n):
        x = inputs[r]
        x = np.zeros(0, dtype) if x is None else np.asarray(x)
        if x.ndim != 1 or x.size != s.in_counts[r]:
            raise ValueError(f"rank {r}: input has shape {x.shape}, schedule wants "
                             f"({s.in_counts[r]},)")
        inb = x.astype(dtype, copy=True)
        if _aliased(s, r, in_place):
            outb = inb
            originals.append(None)
        else:
            outb = np.full(s.out_counts[r], _sentinel(dtype), dtype)
            originals.append(inb.copy())
        scratch = np.full(s.scratch_counts[r], _sentinel(dtype), dtype)
        bufs.append([inb, outb, scratch])

    step_of, rank_of = plan.step_of, plan.rank_of

    def on_complete(g: int, p: int) -> None:
        st = step_of[g]
        r = rank_of[g]
        if p == -1:    # COPY
            src = bufs[r][st.src_buf][st.src_off:st.src_off + st.count].copy()
            bufs[r][st.buf][st.off:st.off + st.count] = src
            return
        data = bufs[r][st.buf][st.off:st.off + st.count].copy()
        rs = step_of[p]
        q = rank_of[p]
        dst = bufs[q][rs.buf]
        if rs.kind == Kind.RECV:
            dst[rs.off:rs.off + rs.count] = data
        else:
            src = bufs[q][rs.src_buf][rs.src_off:rs.src_off + rs.count]
            dst[rs.off:rs.off + rs.count] = ufunc(src, data)

    rng = random.Random(seed)
    plan.run(lambda k: rng.randrange(k), lambda g: None, on_complete)
    for r in range(n):
        if originals[r] is not None and not np.array_equal(bufs[r][0], originals[r],
                                                           equal_nan=bufs[r][0].dtype.kind == "f"):
            raise ScheduleError(f"rank {r}: IN was modified by an out-of-place run")
    return [bufs[r][1] for r in range(n)]


def check_hazards(schedule: Schedule, in_place: bool) -> None:
    """Static race check: per rank, any two steps touching overlapping ranges of one buffer,
    at least one writing, must be ordered by the transitive closure of deps. IN is OUT on the
    ranks where ``in_place`` aliases them (equal lengths); a COPY onto itself is a no-op.
    Also runs ``validate``. Raises ScheduleError naming rank, steps and ranges."""
    s = schedule
    _Plan(s)
    for r in range(s.world_size):
        steps = s.steps[r]
        aliased = _aliased(s, r, in_place)
        anc = [0] * len(steps)      # bit d of anc[i]: step d is ordered before step i
        per_buf: dict[int, list[tuple[int, int, int, bool]]] = {}
        OUT = int(Buf.OUT)
        for i, st in enumerate(steps):
            a = 0
            for d in st.deps:
                a |= anc[d] | (1 << d)
            anc[i] = a
            cnt = st.count
            if cnt == 0:
                continue
            k = st.kind
            b = OUT if aliased and st.buf == Buf.IN else int(st.buf)
            lo = st.off
            if k == Kind.SEND or k == Kind.RECV:
                per_buf.setdefault(b, []).append((lo, lo + cnt, i, k == Kind.RECV))
                continue
            sb = OUT if aliased and st.src_buf == Buf.IN else int(st.src_buf)
            so = st.src_off
            if k == Kind.COPY and sb == b and so == lo:
                continue    # a copy onto itself: the executor skips it
            per_buf.setdefault(b, []).append((lo, lo + cnt, i, True))
            per_buf.setdefault(sb, []).append((so, so + cnt, i, False))
        for b, acc in per_buf.items():
            acc.sort()
            active_r: list[tuple[int, int, int, bool]] = []
            active_w: list[tuple[int, int, int, bool]] = []
            for cur in acc:
                lo, hi, i, w = cur
                active_r = [x for x in active_r if x[1] > lo]
                active_w = [x for x in active_w if x[1] > lo]
                for other in (active_r + active_w if w else active_w):
                    j = other[2]
                    if j == i or (anc[i] >> j) & 1 or (anc[j] >> i) & 1:
                        continue
                    bname = Buf(b).name + (" (= IN, in-place)" if aliased and b == Buf.OUT
                                           else "")
                    raise ScheduleError(
                        f"race on rank {r}, buffer {bname}: {_desc(r, i, steps[i])} and "
                        f"{_desc(r, j, steps[j])} touch [{max(lo, other[0])}:"
                        f"{min(hi, other[1])}] (one writes) and are not ordered by deps")
                (active_w if w else active_r).append(cur)


def cost(schedule: Schedule, itemsize: int = 4, alpha: float = 0.0,
         beta: float = 0.0) -> dict:
    """Traffic and depth of a schedule.

    Returns ``bytes_sent``/``bytes_recv``/``msgs_sent``/``msgs_recv`` (lists per rank),
    ``max_bytes_sent``, ``total_bytes``, ``rounds`` (critical path in message rounds: the
    longest chain of deps, FIFO posting order and send/recv matching, each matched pair one
    round), ``critical_bytes`` (the same chain weighted by message bytes) and ``time`` (weighted
    by ``alpha + beta * bytes`` per message; local copies cost nothing here).
    """
    s = schedule
    plan = _Plan(s)
    n = s.world_size
    sent = [0] * n
    recvd = [0] * n
    msent = [0] * n
    mrecv = [0] * n
    for r in range(n):
        for st in s.steps[r]:
            if st.kind == Kind.SEND:
                sent[r] += st.count * itemsize
                msent[r] += 1
            elif st.kind != Kind.COPY:
                recvd[r] += st.count * itemsize
                mrecv[r] += 1
    total = plan.total
    step_of, base, rank_of = plan.step_of, plan.base, plan.rank_of
    # (rounds, bytes, time) at which each step may start / is complete
    start = [(0, 0, 0.0)] * total
    end = [(0, 0, 0.0)] * total

    def on_post(g: int) -> None:
        b = base[rank_of[g]]
        r0, b0, t0 = 0, 0, 0.0
        for d in step_of[g].deps:
            e = end[b + d]
            r0, b0, t0 = max(r0, e[0]), max(b0, e[1]), max(t0, e[2])
        pd = plan.prev_dir[g]
        if pd != -1:
            e = start[pd]
            r0, b0, t0 = max(r0, e[0]), max(b0, e[1]), max(t0, e[2])
        start[g] = (r0, b0, t0)

    def on_complete(g: int, p: int) -> None:
        if p == -1:
            end[g] = start[g]
            return
        a, c = start[g], start[p]
        nbytes = step_of[g].count * itemsize
        end[g] = end[p] = (max(a[0], c[0]) + 1, max(a[1], c[1]) + nbytes,
                           max(a[2], c[2]) + alpha + beta * nbytes)

    plan.run(None, on_post, on_complete)
    return {
        "bytes_sent": sent, "bytes_recv": recvd, "msgs_sent": msent, "msgs_recv": mrecv,
        "max_bytes_sent": max(sent) if sent else 0, "total_bytes": sum(sent),
        "rounds": max((e[0] for e in end), default=0),
        "critical_bytes": max((e[1] for e in end), default=0),
        "time": max((e[2] for e in end), default=0.0),
        "steps": [len(x) for x in s.steps],
    }
