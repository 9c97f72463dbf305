"""The negotiated engine (Horovod semantics): one background worker per rank agrees with the
other ranks on which named requests are ready, fuses small allreduces and runs them.

User threads only queue requests (``enqueue``: validation already done by collx.api, a name
already pending on this rank is InvalidUsage) and wait on handles. The worker owns the world
communicator: it cycles every COLLX_CYCLE_TIME ms after the ranks last met (stretched up to
4x while every rank is idle), and at once when a submit finds nothing pending on this rank;
then it also rings its peers' doorbells (collx/runtime/wake.py: one UDP datagram each) so
that they join the cycle now rather than on their timers. Every rank must cycle, since each
cycle is one or two small allgathers over the world (protocol, bytes and the readiness
rule: collx/runtime/negotiation.py). Each cycle:

1. take new local requests: a key the response cache knows sets its bit, else it goes into
   this rank's payload; requests past their deadline fail with CollxTimeout naming the
   missing ranks (a payload-announced one is cancelled in the same payload);
2. allgather the rows (and payloads when any rank has one); ``Coordinator.process`` yields
   the same responses on every rank;
3. run them in order on this thread: a fused allreduce packs its tensors into one reused
   buffer (collx/runtime/fusion.py), anything else runs the ``ops.prepare_*`` job prepared at
   submit on the request's (process set's) communicator. A rank that has joined contributes
   zeros (allreduce, reducescatter) or no rows (allgather);
4. rank 0 warns (logging and stderr) about requests waiting longer than
   COLLX_STALL_WARNING, naming tensors and missing ranks, and records the timeline.

With COLLX_FREEZE_AFTER=N (default 3; 0 never freezes), once N periods of a
training loop repeated the same allreduces, the worker stops cycling and runs them in the
frozen order and groups (collx/runtime/frozen.py), until a rank meets something outside
the schedule; then every rank returns to negotiation together.

Shutdown is collective (like MPI_Finalize): ``shutdown()`` waits for this rank's pending
requests (bounded by their deadlines; what is still pending then fails with CollxTimeout),
then raises the SHUTDOWN flag and keeps cycling until every rank's flag is up; then every
worker stops in that cycle. Meanwhile the other ranks' work on process sets without the
leaving ranks runs on, and a request whose set contains a leaving rank fails at once with
TransportError naming it (that rank will never submit it). A rank that waited its timeout
for the others raises LEFT, and every worker stops in that cycle (the ranks that were not
shutting down with TransportError naming it). A
coordination collective that fails (a dead peer) fails every pending handle with its error;
later calls raise it at once. A worker that stops on any error closes the world's
connections, so that its peers raise TransportError at once instead of at COLLX_TIMEOUT.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

import numpy as np

from .. import _C, config
from ..algos.registry import build_schedule
from ..errors import CollxError, CollxTimeout, InvalidUsage, MismatchError, TransportError
from . import ops
from . import timeline as tl
from collections import deque
from itertools import repeat
from operator import attrgetter

from .engine import Handle, finish_all
from .frozen import Frozen, PeriodTracker
from .fusion import FusionBuffer, fuse, nice_count, unfuse
from .wake import Doorbell
from .negotiation import (ALLREDUCE_KINDS, FLAG_JOINED, FLAG_LEFT, FLAG_NEW, FLAG_SHUTDOWN,
                          Coordinator, Item, Request, Response, dtype_of, stall_message)

log = logging.getLogger("collx.engine")
_perf_counter = time.perf_counter


class NegotiatedEngine:
    def __init__(self, comm: Any, table: Any = None) -> None:
        self.comm, self.table = comm, table
        self.rank, self.size = comm.rank, comm.size
        self.cycle_s = max(0.0, config.get("COLLX_CYCLE_TIME")) / 1000.0
        self.stall_s = config.get("COLLX_STALL_WARNING")
        capacity = max(1, config.get("COLLX_CACHE_CAPACITY"))
        self.coord = Coordinator(self.size, capacity, config.get("COLLX_FUSION_THRESHOLD"),
                                 self._members)
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._incoming: list[Request] = []
        self._names: set[str] = set()            # pending on this rank (guarded by _cv)
        self._counters: dict[tuple[str, int], int] = {}
        self._stop_reason: BaseException | None = None
        self._shutdown_asked = False
        self._shutdown_wait = self.comm.timeout  # how long shutdown() waits for the others
        self._leave_now = False                  # close(): leave without waiting
        self._join_handle: Handle | None = None
        # worker-owned state
        self._local: dict[str, Request] = {}
        self._bits = np.zeros(-(-capacity // 64) * 64, bool)
        self._cancels: list[str] = []
        self._reannounce: list[Request] = []
        self._joined = False
        self._shutdown_sent = False
        self._leave_at = 0.0
        self._fbuf = FusionBuffer()
        # allreduce runners (ops.allreduce_runner) by (communicator, its epoch, count, dtype,
        # op, timeout): validation, selection and the plan lookup cost ~25 us per response,
        # and a training loop reduces the same cases every step. Keyed by the case, never by
        # a buffer, so no user array is held; every member runs the same responses in the
        # same order, so the cache (and its evictions) agree across ranks.
        self._runners: dict[tuple, Any] = {}
        self._last_warn = 0.0
        self._ran = False
        self._idle = True                        # nothing pending here (worker-written)
        self._last_start = 0.0
        self._next_expiry = 0.0
        self.cycles = 0
        # counters for tests and tools (worker-owned; read them after the work is done)
        self.stats = {"cycles": 0, "payload_cycles": 0, "responses": 0, "fused_responses": 0,
                      "fused_tensors": 0, "cache_hits": 0, "announced": 0, "freezes": 0,
                      "frozen_groups": 0, "unfreezes": 0}
        freeze = config.get("COLLX_FREEZE_AFTER")
        self._tracker = PeriodTracker(freeze) if freeze > 0 else None
        self._frozen: Frozen | None = None
        self._bell = self._open_bell()
        self._thread = threading.Thread(target=self._loop, name="collx-negotiator", daemon=True)
        self._thread.start()

    def _open_bell(self) -> Doorbell | None:
        """The doorbell (collx/runtime/wake.py) that lets a rank with new work wake sleeping
        peers at once; None (timer-only cycles) for one rank, without a store, or when the
        address exchange fails (e.g. a peer running the ordered engine)."""
        comm = self.comm
        if self.size == 1 or comm.store is None or not getattr(comm, "store_prefix", ""):
            return None
        bell = None
        try:
            bell = Doorbell(getattr(comm, "host_addr", "127.0.0.1"))
            bell.exchange(comm.store, f"{comm.store_prefix}/negotiated", self.rank, self.size,
                          min(comm.timeout, 10.0))
            return bell
        except Exception as exc:  # noqa: BLE001 - latency only: cycles still run on the timer
            log.debug("collx: negotiated engine without doorbell: %r", exc)
            if bell is not None:
                bell.close()
            return None

    # ---- user side ----------------------------------------------------------------------
    def name_for(self, kind: str, name: str | None, psid: int = 0) -> str:
        """``name``, or the next automatic name of ``kind`` on process set ``psid`` (one
        counter per (kind, set): a rank in several sets numbers each set's calls alone)."""
        if name is not None:
            return str(name)
        with self._cv:
            k = self._counters.get((kind, psid), 0)
            self._counters[(kind, psid)] = k + 1
        return f"{kind}.noname.{k}" if psid == 0 else f"{kind}.ps{psid}.noname.{k}"

    def submit_allreduce(self, kind: str, name: Any, agree: tuple[dict, tuple], arr: Any,
                         res: Any) -> Handle:
        """A fusible allreduce of the global set, already validated (collx.api's hot path):
        ``agree`` is (description, its cache-key tuple)."""
        if type(name) is not str:
            name = self.name_for(kind, name, 0)
        desc, desc_t = agree
        r = Request(name, kind, 0, desc, None, None, arr, res, None, (name, kind, 0, desc_t))
        return self.enqueue1(r)

    def enqueue1(self, r: Request) -> Handle:
        """``enqueue([r])[0]``, for the hot path (errors: through enqueue)."""
        h = r
        r.t_submit = _perf_counter()            # its deadline: t_submit + timeout (_expire)
        with self._lock:
            slow = self._stop_reason is not None or self._join_handle is not None \
                or r.name in self._names
            if not slow:
                self._names.add(r.name)
                incoming = self._incoming
                wake = not incoming
                incoming.append(r)
                if wake:
                    self._cv.notify()
                    if self._frozen is not None:
                        wake = False            # the frozen wait sleeps on _cv, not the bell
        if slow:
            return self.enqueue([r])[0]
        if wake and self._bell is not None:
            self._bell.ring_local()
        return h

    def enqueue(self, reqs: list[Request]) -> list[Handle]:
        t_submit = time.perf_counter()
        for r in reqs:
            r.t_submit = t_submit
        with self._cv:
            if self._stop_reason is not None:
                raise self._stopped_error(reqs[0].kind)
            if self._join_handle is not None:
                raise InvalidUsage(f"collx.{reqs[0].kind}: this rank called collx.join(), which "
                                   f"has not returned (a join that timed out stays in force: "
                                   f"the other ranks count this rank as joined); call join() "
                                   f"again to wait for them")
            names = self._names
            batch: set[str] = set()
            for r in reqs:
                if r.name in names or r.name in batch:
                    raise InvalidUsage(f"collx.{r.kind}: a request named {r.name!r} is already "
                                       f"pending on this rank; synchronize it first or pass "
                                       f"another name=")
                if len(reqs) > 1:
                    batch.add(r.name)
            # wake the worker when nothing was queued since it last took the queue: it
            # starts a cycle for the new work at once (or right after the one it is in);
            # later submits join that queue, so a burst costs one wake-up, not one each
            wake = not self._incoming
            for r in reqs:
                names.add(r.name)
            self._incoming.extend(reqs)
            if wake:
                self._cv.notify()
                if self._frozen is not None:
                    wake = False                # the frozen wait sleeps on _cv, not the bell
        if wake and self._bell is not None:
            self._bell.ring_local()
        return list(reqs)

    def _stopped_error(self, kind: str) -> CollxError:
        reason = self._stop_reason
        if isinstance(reason, CollxError) and not isinstance(reason, InvalidUsage):
            return type(reason)(f"collx.{kind}: the engine stopped: {reason}")
        return InvalidUsage(f"collx.{kind}: collx was shut down; call collx.init() first")

    def join(self, timeout: float | None = None) -> int:
        with self._cv:
            if self._stop_reason is not None:
                raise self._stopped_error("join")
            if self._join_handle is None:
                self._join_handle = Handle("join")
            handle = self._join_handle
            self._cv.notify_all()
        self._ring()
        return handle.wait(timeout)

    def drain(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (self.comm.timeout if timeout is None else timeout)
        with self._cv:
            while self._names and self._stop_reason is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cv.wait(min(left, 0.05))

    def shutdown(self, timeout: float | None = None) -> None:
        """Finish this rank's work, then wait (up to ``timeout``) until every rank called
        shutdown; every worker stops in the same cycle."""
        wait = self.comm.timeout if timeout is None else timeout
        self.drain(wait)
        with self._cv:
            self._shutdown_wait = wait
            self._shutdown_asked = True
            self._cv.notify_all()
        self._ring()
        self._thread.join(timeout=wait + 5)

    def close(self) -> None:
        with self._cv:
            self._shutdown_asked = True
            self._leave_now = True
            if self._stop_reason is None and not self._thread.is_alive():
                self._stop_reason = InvalidUsage("shut down")
            self._cv.notify_all()
        self._ring()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._bell is not None and not self._thread.is_alive():
            self._bell.close()

    def _ring(self) -> None:
        bell = self._bell
        if bell is not None:
            bell.ring_local()

    # ---- worker -------------------------------------------------------------------------
    def _members(self, psid: int) -> list[int] | None:
        if psid == 0:
            return list(range(self.size))
        if self.table is None:
            return None
        try:
            return list(self.table.get(psid).ranks)
        except Exception:  # noqa: BLE001 - unknown id: reported by the coordinator
            return None

    def _comm_of(self, psid: int) -> Any:
        return self.comm if psid == 0 else self.table.comm_for(self.table.get(psid))

    def _loop(self) -> None:
        try:
            while True:
                if self._frozen is not None:
                    if self._frozen_step():
                        continue
                ring = self._wait_cycle()
                with self._cv:
                    new, self._incoming = self._incoming, []
                    shutdown = self._shutdown_asked
                    if self._join_handle is not None:
                        self._joined = True
                if ring and self._bell is not None:
                    self._bell.ring_peers()      # they join this cycle now, not on their timer
                if self._cycle(new, shutdown):
                    break
        except BaseException as exc:  # noqa: BLE001 - every waiter gets the error
            if isinstance(exc, MismatchError) and "negotiate-" in str(exc):
                exc = MismatchError(f"{exc} — a peer ran another collective against the "
                                    f"negotiated engine's coordination: every rank must run "
                                    f"the same engine (collx.init(negotiate=...), "
                                    f"COLLX_ENGINE) and call collectives only through it")
            self._stop(exc if isinstance(exc, CollxError) else
                       TransportError(f"collx negotiated engine failed: {exc!r}"))
            # the peers wait for this rank in the next coordination collective: close the
            # world's connections so that they raise TransportError now, not at COLLX_TIMEOUT
            try:
                self.comm.ccomm.close()
            except Exception:  # noqa: BLE001 - already closed
                pass

    def _wait_cycle(self) -> bool:
        """Sleep until the next cycle is due. A cycle starts cycle_s (stretched while every
        rank is idle) after the ranks last met, at once when a peer rings, and at once when
        this rank has new work (submits that arrive during a cycle are batched into the
        next). True when this rank starts the cycle for its own new work (or a
        shutdown/join): then it rings its peers, so that a tensor is negotiated as soon as
        its last rank submits it instead of on the next timer (measured on the example
        model at np 2: 2.4 ms per step instead of 3.0, perf/RESULTS.md)."""
        bell = self._bell
        while True:
            with self._cv:
                if self._shutdown_asked and not self._shutdown_sent \
                        or self._leave_now and self._shutdown_sent \
                        or (self._join_handle is not None and not self._joined) \
                        or self._incoming:
                    return True
                streak = self.coord.idle_streak
                stretch = 1 if streak < 16 else 2 if streak < 32 else 4
                left = self._last_start + stretch * self.cycle_s - time.monotonic()
                if left <= 0:
                    return False
                if bell is None:
                    self._cv.wait(left)
                    continue
            if bell.wait(left):                  # rung: by a peer, or by a local submit
                with self._cv:
                    return bool(self._shutdown_asked and not self._shutdown_sent
                                or self._join_handle is not None and not self._joined
                                or self._incoming)

    def _stop(self, reason: BaseException) -> None:
        with self._cv:
            if self._stop_reason is None:
                self._stop_reason = reason
            pending = list(self._local.values()) + self._incoming + self._reannounce
            self._incoming, self._reannounce = [], []
            self._local.clear()
            join = self._join_handle
            self._join_handle = None
            self._names.clear()
            self._cv.notify_all()
        for r in pending:
            if not r.done():
                r._finish(None, reason)
        if join is not None and not join.done():
            join._finish(None, reason)

    def _gather(self, key: tuple, mine: np.ndarray, build: Any) -> np.ndarray:
        comm = self.comm
        out = np.empty(mine.size * self.size, mine.dtype)
        if self.size == 1:
            out[:] = mine
            return out.reshape(self.size, -1)
        plan = comm.plan(key, mine.itemsize, build)
        code = _C.INT64 if mine.dtype == np.int64 else _C.UINT8
        comm.execute(plan, mine, out, code, _C.SUM, None)
        return out.reshape(self.size, -1)

    def _cycle(self, new: list[Request], shutdown: bool) -> bool:
        """One coordination cycle; True when the worker must stop."""
        now = time.monotonic()
        coord, bits = self.coord, self._bits
        announce: list[str] = []
        batch = self._reannounce + new if self._reannounce else new
        self._reannounce = []
        local = self._local
        if shutdown and not self._shutdown_sent:
            self._begin_shutdown(now, batch)
            batch = []
        lookup, bad = coord.cache.index.get, None
        hit_slots, misses = [], []
        for req in batch:
            local[req.name] = req                # in _local before anything can fail
            slot = lookup(req.ckey)             # (auto-named ones are never in the cache)
            if slot is not None:
                req.slot = slot
                req.announced = False
                hit_slots.append(slot)
            else:
                misses.append(req)
        for req in misses:
            req.slot = None
            try:
                key = req.key
            except (TypeError, ValueError) as exc:
                bad = (bad or []) + [(req, exc)]
                continue
            req.announced = True
            announce.append(key)
        if hit_slots:
            bits[hit_slots] = True
        self.stats["cache_hits"] += len(hit_slots)
        self.stats["announced"] += len(announce)
        for req, exc in bad or ():
            self._forget([req])
            req._finish(None, InvalidUsage(
                f"collx.{req.kind}: {req.name!r} cannot be described to the other ranks "
                f"({exc}); pass plain Python/numpy values"))
        if self._local and now >= self._next_expiry:
            self._next_expiry = now + 0.1       # deadlines are checked every 100 ms
            self._expire(now)
        payload = b""
        if announce or self._cancels:
            payload = json.dumps({"n": announce, "c": self._cancels},
                                 separators=(",", ":")).encode()
            self._cancels = []
        flags = (FLAG_NEW if payload else 0) | (FLAG_JOINED if self._joined else 0)
        if self._shutdown_sent:
            flags |= FLAG_SHUTDOWN
            if self._leave_now or now >= self._leave_at:
                flags |= FLAG_LEFT
        row = coord.row(flags, len(payload), bits)
        n = self.size
        rows = self._gather(("negotiate-rows", row.size), row, lambda: build_schedule(
            "allgather", n, counts=[row.size] * n))
        # the next cycle is timed from here, where the ranks just met: timing it from each
        # rank's own start would keep an early rank early (spinning in the gather) forever
        self._last_start = time.monotonic()
        payloads = [b""] * n
        if (rows[:, 0] & FLAG_NEW).any():
            length = max(256, 1 << int(rows[:, 1].max() - 1).bit_length())
            mine = np.zeros(length, np.uint8)
            mine[:len(payload)] = np.frombuffer(payload, np.uint8)
            table = self._gather(("negotiate-payload", length), mine, lambda: build_schedule(
                "allgather", n, counts=[length] * n))
            payloads = [table[r, :rows[r, 1]].tobytes() for r in range(n)]
            self.stats["payload_cycles"] += 1
        t_ready = time.perf_counter()
        outcome = coord.process(rows, payloads, now)
        self.cycles += 1
        self.stats["cycles"] += 1
        self.stats["responses"] += len(outcome.responses)
        self._ran = bool(outcome.responses)
        if self._ran and tl.mark_cycles():
            tl.instant("CYCLE", {"cycle": coord.cycle, "responses": len(outcome.responses)})
        for resp in outcome.responses:
            self._execute(resp, t_ready)
        for req in list(self._local.values()) if outcome.reset_slots else ():
            if req.slot is not None and req.slot in outcome.reset_slots:
                bits[req.slot] = False
                req.slot = None
                del self._local[req.name]
                self._reannounce.append(req)
        if self.rank == 0 and self.stall_s > 0 and now - self._last_warn >= self.stall_s:
            self._warn_stalls(now)
        self._idle = not self._local and not self._reannounce
        if self._tracker is not None and not outcome.shutdown:
            schedule = self._tracker.observe(outcome, not coord.table, bool(coord.joined.any()))
            if schedule is not None:
                self._frozen = Frozen(schedule)
                self._idle = True                # every submit wakes the frozen wait
                self.stats["freezes"] += 1
        if outcome.join_last is not None:
            with self._cv:
                handle, self._join_handle = self._join_handle, None
                self._joined = False
            if handle is not None:
                handle._finish(outcome.join_last, None)
        if outcome.left or len(outcome.shutdown) == n:
            if self._shutdown_sent:
                self._stop(InvalidUsage("shut down"))
            else:
                self._stop(TransportError(
                    f"rank(s) {outcome.left} called collx.shutdown() and left after waiting "
                    f"for this rank to call it too; call collx.shutdown() on every rank"))
            return True
        if outcome.shutdown:
            self._orphan(outcome.shutdown)
        return False

    def _begin_shutdown(self, now: float, batch: list[Request]) -> None:
        """This rank enters shutdown: what drain() left pending cannot run any more (the
        other ranks may never submit it); fail it and cancel its announcements."""
        self._shutdown_sent = True
        self._leave_at = now + max(0.0, self._shutdown_wait)
        stale = list(self._local.values())
        self._cancels.extend(map(_NAME, stale))
        self._forget(stale + batch)              # batch: taken from the queue, not in _local
        for req in stale + batch:
            req._finish(None, CollxTimeout(
                f"collx.{req.kind}: tensor {req.name!r} was still not ready on every rank "
                f"when collx.shutdown() stopped waiting for it"))

    def _orphan(self, leaving: list[int]) -> None:
        """Fail this rank's requests that a rank in shutdown() would have to join (it never
        will): at once, naming it, instead of at the request's deadline."""
        gone = set(leaving)
        doomed = []                              # (request, the leaving ranks of its set)
        for req in self._local.values():
            who = sorted(gone.intersection(self._members(req.psid) or ()))
            if who:
                doomed.append((req, who))
        if doomed:
            reqs = [req for req, _ in doomed]
            self._cancels.extend(map(_NAME, reqs))
            self._forget(reqs)
            for req, who in doomed:
                req._finish(None, TransportError(
                    f"collx.{req.kind}: tensor {req.name!r} can never run: rank(s) {who} "
                    f"called collx.shutdown() without submitting it; every rank of the "
                    f"process set must submit the same tensors before leaving"))
        if self._shutdown_sent:
            return
        with self._cv:
            join, self._join_handle = self._join_handle, None
            self._joined = False
        if join is not None and not join.done():
            join._finish(None, TransportError(
                f"collx.join: rank(s) {sorted(gone)} called collx.shutdown() instead of "
                f"collx.join(); every rank must join before any rank leaves"))

    # ---- frozen order (collx/runtime/frozen.py) -----------------------------------------
    def _frozen_step(self) -> bool:
        """Run the next frozen group; False once this rank (with all others) unfroze."""
        fz = self._frozen
        group = fz.group
        n = self.size
        grace = self.stall_s / 2 if self.stall_s > 0 else self.comm.timeout / 2
        deadline = time.monotonic() + grace
        control = 0
        local = self._local
        missing = {it.name for it in group if it.name not in local}
        with self._cv:
            while True:
                new, self._incoming = self._incoming, []
                for req in new:
                    local[req.name] = req
                    req.slot, req.announced = None, False
                    if not fz.fits(req):
                        control = n              # not in the schedule: leave frozen mode
                    missing.discard(req.name)
                if self._shutdown_asked or self._join_handle is not None:
                    control = n
                if control or not missing:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    control = n                  # a tensor is late: let negotiation report
                    break
                self._cv.wait(min(left, 1.0))
        reqs = [local.get(it.name) for it in group]
        it0 = group[0]
        dtype = dtype_of(it0.agree["dtype"])
        op, pre, post = _op_code(it0.agree["op"]), it0.agree["prescale"], it0.agree["postscale"]
        # a request of a scheduled name with another shape/dtype/op has set control; it
        # must not change this rank's buffer: zeros in its place, like a missing one
        arrays = [r.arr if r is not None and (control == 0 or fz.fits(r))
                  else np.zeros(it.agree["shape"], dtype) for it, r in zip(group, reqs)]
        total = sum(a.size for a in arrays)
        view = self._fbuf.view(nice_count(total + 1), dtype)
        run = self._runner(self.comm, view, op, None)
        t0 = time.perf_counter()
        fuse(arrays, view, total, pre)
        view[total] = control                    # after the prescale: an exact 0 or n
        t1 = time.perf_counter()
        run(view, view)
        t2 = time.perf_counter()
        if view[total] != 0:                     # someone left: discard, renegotiate
            self._unfreeze()
            return False
        outs = [r.res for r in reqs]
        unfuse(view, outs, post)
        self.stats["frozen_groups"] += 1
        timeline = tl.active()
        if timeline is not None:
            t3 = time.perf_counter()
            for it, r in zip(group, reqs):
                timeline.complete(it.name, "QUEUE", r.t_submit, t0, {"frozen": True})
                timeline.complete(it.name, "FUSE", t0, t1)
                timeline.complete(it.name, "UNFUSE", t2, t3)
            self._record(timeline, [it.name for it in group], "ALLREDUCE", t1, self.comm,
                         view.nbytes, t2)
        self._forget(reqs)
        for r in reqs:
            r._finish(r.res, None)
        fz.advance()
        return True

    def _unfreeze(self) -> None:
        """Back to negotiation (on every rank after the same collective): every pending
        request is taken in again, as if just submitted."""
        self._frozen = None
        for req in self._local.values():
            if req.slot is not None:
                self._bits[req.slot] = False
                req.slot = None
        self._reannounce = list(self._local.values()) + self._reannounce
        self._local.clear()
        self._last_start = 0.0                   # cycle at once
        self.stats["unfreezes"] += 1

    def _expire(self, now: float) -> None:
        default, pc = self.comm.timeout, time.perf_counter()
        for req in [r for r in self._local.values()
                    if r.t_submit + (default if r.timeout is None else r.timeout) <= pc]:
            missing = self.coord.missing(req.name, now)
            self._forget([req])
            self._cancels.append(req.name)      # drops it from the table; names who gave up
            who = f"rank(s) {missing} never submitted it" if missing else \
                "the other ranks did not agree on it"
            waited = self.comm.timeout if req.timeout is None else req.timeout
            req._finish(None, CollxTimeout(
                f"collx.{req.kind}: tensor {req.name!r} was not ready on every rank after "
                f"{waited:g} s: {who} (COLLX_TIMEOUT or timeout=)"))

    def _forget(self, reqs: list) -> None:
        if None in reqs:
            reqs = [req for req in reqs if req is not None]
        names = list(map(_NAME, reqs))
        slots = [s for s in map(_SLOT, reqs) if s is not None]
        deque(map(self._local.pop, names, repeat(None)), maxlen=0)
        if slots:
            self._bits[slots] = False
        with self._lock:
            self._names.difference_update(names)
            self._cv.notify_all()

    def _warn_stalls(self, now: float) -> None:
        oldest = self.coord.oldest()
        if oldest is None or now - oldest < self.stall_s:
            return
        rows = [r for r in self.coord.pending(now) if r[1] >= self.stall_s and r[3]]
        if not rows:
            return
        self._last_warn = now
        msg = stall_message(rows)
        if log.hasHandlers():           # else logging's last resort would print it twice
            log.warning(msg)
        print(f"[collx rank {self.rank}] WARNING {msg}", file=sys.stderr, flush=True)

    # ---- running responses --------------------------------------------------------------
    def _execute(self, resp: Response, t_ready: float) -> None:
        local = self._local
        if resp.error is not None:              # every rank that submitted the name learns it
            reqs = [local.get(it.name) for it in resp.items]
            err = InvalidUsage(resp.error) if resp.usage else MismatchError(resp.error)
            self._forget(reqs)
            for req in reqs:
                if req is not None:
                    req._finish(None, err)
            return
        psid = resp.items[0].psid
        if psid != 0:
            members = self._members(psid)
            if members is not None and self.rank not in members:
                return
        reqs = list(map(local.get, map(_NAME, resp.items)))
        if None in reqs and all(r is None for r in reqs) and self.rank not in resp.joined:
            return
        t_start = time.perf_counter()
        timeline = tl.active()
        if timeline is not None:
            for it, req in zip(resp.items, reqs):
                if req is not None:
                    timeline.complete(it.name, "NEGOTIATE", req.t_submit, t_ready)
                timeline.complete(it.name, "QUEUE", t_ready, t_start)
        try:
            if resp.kind in ALLREDUCE_KINDS:
                results = self._allreduce(resp, reqs, timeline)
            else:
                results = [self._run_job(resp.items[0], reqs[0], timeline)]
        except BaseException as exc:  # noqa: BLE001 - goes to the handles
            self._forget(reqs)
            for req in reqs:
                if req is not None:
                    req._finish(None, exc)
            if isinstance(exc, TransportError) or self.comm.ccomm.broken():
                raise
            return
        self._forget(reqs)
        finish_all(reqs, results)

    def _runner(self, comm: Any, arr: np.ndarray, op: int, timeout: Any) -> Any:
        """``ops.allreduce_runner`` for this case, reused (see ``_runners``)."""
        dtype = arr.dtype
        key = (id(comm), comm.epoch, arr.size, dtype.str, op, timeout)
        hit = self._runners.get(key)
        if hit is not None:
            return hit[1]
        code = ops.reduce_code(arr, "allreduce")
        run = ops.allreduce_runner(comm, arr.itemsize, arr.size, code, op,
                                   ops._check_timeout(timeout, "allreduce"))
        if len(self._runners) >= 256:            # bounded: drop the oldest entry
            self._runners.pop(next(iter(self._runners)))
        self._runners[key] = (comm, run)         # the comm held: its id is not reused
        return run

    def _allreduce(self, resp: Response, reqs: list, timeline: Any) -> list:
        it0 = resp.items[0]
        op = _op_code(it0.agree["op"])
        pre, post = it0.agree["prescale"], it0.agree["postscale"]
        if None in reqs:
            arrays, outs = [], []
            for it, req in zip(resp.items, reqs):
                if req is None:       # joined: zeros in, result dropped
                    z = np.zeros(it.agree["shape"], dtype_of(it.agree["dtype"]))
                    arrays.append(z)
                    outs.append(np.empty_like(z))
                else:
                    arrays.append(req.arr)
                    outs.append(req.res)
        else:
            arrays = list(map(_ARR, reqs))
            outs = list(map(_RES, reqs))
        timeout = max(filter(None, map(_TIMEOUT, filter(None, reqs))), default=None)
        comm = self._comm_of(resp.psid)
        if len(arrays) == 1 and pre == 1.0 and post == 1.0:
            t0 = time.perf_counter()
            self._runner(comm, arrays[0], op, timeout)(arrays[0], outs[0])
            if timeline is not None:
                self._record(timeline, [it0.name], "ALLREDUCE", t0, comm, it0.nbytes)
            return outs
        if len(arrays) > 1:
            self.stats["fused_responses"] += 1
            self.stats["fused_tensors"] += len(arrays)
        total = sum(map(_SIZE, arrays))
        view = self._fbuf.view(nice_count(total), arrays[0].dtype)
        run = self._runner(comm, view, op, timeout)
        t0 = time.perf_counter()
        fuse(arrays, view, total, pre)
        t1 = time.perf_counter()
        run(view, view)
        t2 = time.perf_counter()
        unfuse(view, outs, post)
        if timeline is not None:
            t3 = time.perf_counter()
            names = [it.name for it in resp.items]
            for name in names:
                timeline.complete(name, "FUSE", t0, t1)
                timeline.complete(name, "UNFUSE", t2, t3)
            self._record(timeline, names, "ALLREDUCE", t1, comm, view.nbytes, t2)
        return outs

    def _run_job(self, it: Item, req: Request | None, timeline: Any) -> Any:
        t0 = time.perf_counter()
        if req is not None:
            result = req.job()
        else:                                   # joined rank: take part with nothing
            comm = self._comm_of(it.psid)
            dt = dtype_of(it.agree["dtype"]) if "dtype" in it.agree else None
            if it.kind == "allgather":
                z = np.empty([0] + list(it.agree["shape"]), dt)
                ops.prepare_allgather(comm, z, None, None)()
            elif it.kind == "barrier":
                ops.prepare_barrier(comm, None)()
            elif it.kind == "reducescatter":
                ops.prepare_reducescatter(comm, np.zeros(it.agree["shape"], dt),
                                          _op_code(it.agree["op"]), None)()
            elif it.kind == "quantized_allreduce":
                from . import quantize
                quantize.prepare_quantized_allreduce(
                    comm, np.zeros(it.agree["shape"], dt), _op_code(it.agree["op"]), None,
                    None, block=it.agree.get("block", 64))()
            else:                               # negotiation never lets a joined rank here
                raise InvalidUsage(f"collx.{it.kind}: {it.name!r} cannot run on a joined rank")
            result = None
        if timeline is not None:
            self._record(timeline, [it.name], it.kind.upper(), t0, self._comm_of(it.psid),
                         it.nbytes)
        return result

    def _record(self, timeline: Any, names: list[str], phase: str, t0: float, comm: Any,
                nbytes: int, t1: float | None = None) -> None:
        plan = getattr(comm, "last_plan", None)
        args = {"algorithm": getattr(plan, "algo", "?"), "transport": comm.transport_name(),
                "bytes": int(nbytes), "tensors": len(names)}
        end = time.perf_counter() if t1 is None else t1
        for name in names:
            timeline.complete(name, phase, t0, end, args)


_OPS = {v: k for k, v in ops.REDOP_NAMES.items()}
_NAME, _SLOT, _ARR, _RES, _TIMEOUT, _SIZE = (attrgetter(a) for a in (
    "name", "slot", "arr", "res", "timeout", "size"))


def _op_code(name: str) -> int:
    return _OPS[name]


__all__ = ["NegotiatedEngine"]
