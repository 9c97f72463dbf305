"""Negotiation: which requests are ready on every rank, computed identically everywhere.

The negotiated engine's worker (collx/runtime/negotiated_engine.py) runs one coordination
cycle every COLLX_CYCLE_TIME ms (at once after a local submit) on every rank of the world:

1. **Row allgather** (always; one collective, plan key ``("negotiate-rows", words)``): each
   rank contributes ``HEADER + W`` int64 words — flags (NEW: it has a payload; SHUTDOWN: it
   is in collx.shutdown(); JOINED; LEFT: it leaves now), its payload length, the number of
   response-cache slots in use, then one bit per cache slot: "I have a pending request
   matching this cached entry". With C cached slots W = ceil(C/64): 32 bytes for an empty
   cache, 152 bytes for 1024 entries.
2. **Payload allgather** (only in cycles where some rank has NEW): each rank's JSON payload
   ``{"n": [keys of requests the cache does not know], "c": [names it cancels]}``, padded
   to one power of two >= 256 bytes for all ranks (plan key ``("negotiate-payload", L)``).

Every rank then runs ``Coordinator.process`` on the same gathered bytes, so every rank
reaches the same responses in the same order without a coordinator broadcast. The plan keys
of both collectives differ from every user collective's, so a rank running the ordered
engine against one running this one gets MismatchError, not garbage.

**When a request is ready.** A request is described by its key: ``[name, kind, process set
id, agree]`` where ``agree`` is what every rank must pass alike (dtype, shape or trailing
shape, op, root, scale factors). It is ready when every rank of its process set that has
not joined announced it in this cycle's data: for a cached key, its bit is set in every such
rank's row (one numpy AND over the bit matrix); for a new key, every such rank announced its
name in a payload of this or an earlier cycle (the table keeps announcements until the name
is ready or cancelled). If the announced keys for a name differ across ranks, the response is
an error naming the tensor, each group of ranks and what it passed (MismatchError on every
rank that submitted it). A name announced anew while the cache holds it under another key
evicts that entry, so ranks still using the old key re-announce and the disagreement is
reported the same way.

**Response cache.** A successfully negotiated key (not auto-named ``*.noname.*`` ones, which
never repeat) is inserted after the cycle's responses are computed, into the lowest free
slot, or the least recently used one's when COLLX_CACHE_CAPACITY is reached; every rank does
the same, so slot numbers agree. A rank whose pending request sat on an evicted slot
re-announces it in the next payload.

**Fusion.** Ready allreduces with equal (process set, dtype, op, prescale, postscale) are
grouped, in ready order, into responses of at most COLLX_FUSION_THRESHOLD bytes. Cached
hits keep their fusion group and size per slot, so a cycle's hits are grouped with a few
numpy calls, not a Python step per tensor (``_group_slots``; the same result as ``_fuse``).

**Idle.** A cycle in which every row is empty (no flags, no bits) is counted; the engine
stretches its cycle time by 2x after 16 such cycles in a row and 4x after 32 (every rank
sees the same rows, so all stretch alike), and back to 1x after any work. The first request
after a quiet spell therefore waits up to 4 cycle times; an idle rank costs ~4x less CPU.

**Join.** A joined rank's JSON-free flag makes it count as present for every request it can
serve with zeros or no rows (Sum/Average reductions, allgather, barrier; anything else, cached
or announced, is an InvalidUsage response naming the joined ranks); when
every rank is joined, join() returns everywhere with the last rank to join (the highest rank
among those whose flag appeared in the latest cycle).

**Shutdown** is collective, like MPI_Finalize: a rank in collx.shutdown() keeps cycling with
its SHUTDOWN flag up (such rows count as idle) until every rank's flag is up, then every
worker stops in that same cycle. Work still pending on a process set that does not contain
the leaving ranks runs meanwhile; a request whose set contains one can never run and fails
at once with the ranks' names (collx/runtime/negotiated_engine.py). A rank that waited its
timeout raises LEFT, and every worker stops in that cycle.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from _thread import allocate_lock as _allocate_lock

import numpy as np

from .engine import Handle

FLAG_NEW, FLAG_SHUTDOWN, FLAG_JOINED, FLAG_LEFT = 1, 2, 4, 8
HEADER = 3                      # int64 words before the bits: flags, payload bytes, slots
ALLREDUCE_KINDS = ("allreduce", "grouped_allreduce")
# kinds a joined rank can take part in (zeros / no rows / nothing)
JOINABLE = ALLREDUCE_KINDS + ("quantized_allreduce", "reducescatter", "allgather", "barrier")
# ops a joined rank's zeros leave unchanged (Min/Max/Product would see the zeros)
JOIN_OPS = ("Sum", "Average")


def joinable(it: "Item") -> bool:
    """Whether ``it`` can run while some ranks of its set have joined (contributing zeros
    or no rows): allgather, barrier, and Sum/Average reductions."""
    return it.kind in JOINABLE and it.agree.get("op", "Sum") in JOIN_OPS


def join_error(it: "Item", jn: tuple[int, ...]) -> "Response":
    return Response([it], usage=True, error=(
        f"collx.{it.kind}: tensor {it.name!r} cannot run while rank(s) {list(jn)} have "
        f"joined (collx.join); only allreduce, reducescatter and quantized_allreduce with "
        f"Sum or Average, allgather and barrier can (a joined rank contributes zeros)"))


def dtype_of(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # type: ignore[import-not-found]
        return np.dtype(getattr(ml_dtypes, name))


class Request(Handle):
    """One submitted operation on this rank, and the handle its caller waits on (one object
    per tensor on the hot path). ``agree`` holds what all ranks must pass alike (shared,
    never modified); fusible allreduces carry arr/res, everything else a prepared ``job``.
    Slotted: compact and quick to build."""

    __slots__ = ("kind", "psid", "agree", "job", "timeout", "arr", "res", "removes", "ckey",
                 "slot", "announced", "t_submit")

    def __init__(self, name: str, kind: str, psid: int, agree: dict, job: Any = None,
                 timeout: float | None = None, arr: Any = None, res: Any = None,
                 removes: Any = None, ckey: tuple = ()) -> None:
        self.name, self.kind, self.psid, self.agree = name, kind, psid, agree
        self._lock = lock = _allocate_lock()     # Handle's: released when finished
        lock.acquire()
        self._done, self._result, self._error = False, None, None
        self.job, self.timeout, self.arr, self.res, self.removes = job, timeout, arr, res, removes
        # the response cache's key (cache_key(...)); set by the engine: slot, announced,
        # t_submit (its deadline is t_submit + timeout)
        self.ckey = ckey or cache_key(name, kind, psid, agree)
        self.slot, self.announced, self.t_submit = None, False, 0.0

    @property
    def handle(self) -> "Request":
        return self

    @property
    def cacheable(self) -> bool:
        """Auto-named requests never repeat: never cached."""
        return ".noname." not in self.name

    @property
    def key(self) -> str:
        """The JSON description sent in a payload (only for requests the cache lacks)."""
        return encode_key(self.name, self.kind, self.psid, self.agree)


def encode_key(name: str, kind: str, psid: int, agree: dict) -> str:
    return json.dumps([name, kind, psid, agree], sort_keys=True, separators=(",", ":"))


def cache_key(name: str, kind: str, psid: int, agree: dict) -> tuple:
    """Hashable twin of encode_key (lists become tuples); equal for equal descriptions on
    every rank, whether built locally or parsed from a payload."""
    return (name, kind, psid,
            tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in agree.items())))


@dataclass
class Item:
    """A ready request as every rank sees it."""
    name: str
    kind: str
    psid: int
    agree: dict
    nbytes: int
    fuse_key: tuple | None      # None: not fusible
    ckey: tuple = ()


@dataclass
class Response:
    items: list[Item]
    error: str | None = None    # a mismatch (or unsupported-with-joined) message
    usage: bool = False         # error is InvalidUsage rather than MismatchError
    joined: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        return self.items[0].kind

    @property
    def psid(self) -> int:
        return self.items[0].psid


@dataclass
class Outcome:
    responses: list[Response] = field(default_factory=list)
    reset_slots: set[int] = field(default_factory=set)   # evicted: re-announce requests there
    join_last: int | None = None
    shutdown: list[int] = field(default_factory=list)    # ranks in collx.shutdown()
    left: list[int] = field(default_factory=list)        # ranks leaving in this cycle


def _item(key: str) -> Item:
    name, kind, psid, agree = json.loads(key)
    fuse_key = None
    nbytes = 0
    if "shape" in agree and "dtype" in agree:
        try:
            nbytes = math.prod(agree["shape"]) * dtype_of(agree["dtype"]).itemsize
        except (TypeError, AttributeError, ImportError):
            nbytes = 0
    if kind in ALLREDUCE_KINDS:
        fuse_key = (psid, agree["dtype"], agree["op"], agree["prescale"], agree["postscale"])
    return Item(name, kind, psid, agree, nbytes, fuse_key, cache_key(name, kind, psid, agree))


def _describe(agree: dict, kind: str, psid: int) -> str:
    parts = [kind] + [f"{k}={v}" for k, v in sorted(agree.items())]
    if psid:
        parts.append(f"process_set={psid}")
    return " ".join(parts)


class ResponseCache:
    """key -> slot, identical on every rank; LRU eviction beyond ``capacity``.

    Recency is a stamp per slot (one numpy store for all the slots a cycle used); the
    victim is the occupied slot with the oldest stamp, the lowest such slot on a tie."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.index: dict[tuple, int] = {}
        self.by_name: dict[str, int] = {}
        self.items: list[Item | None] = []      # slot -> Item (None: free)
        self.free: list[int] = []
        self.used = np.zeros(64, np.int64)       # slot -> last use (clock)
        self.nonglobal = 0                       # entries of sets other than the global one
        self.clock = 0
        # slot -> fusion group (-2 free, -1 not fusible, else an id per fuse key) and bytes,
        # so that a cycle's cached hits are grouped with numpy (Coordinator._group_slots)
        self.group = np.full(64, -2, np.int64)
        self.nbytes = np.zeros(64, np.int64)

    @property
    def nslots(self) -> int:
        return len(self.items)

    def lookup(self, key: tuple) -> int | None:
        return self.index.get(key)

    def touch(self, slot: int | np.ndarray) -> None:
        """Mark slot(s) used now (an int or an array of slots)."""
        self.clock += 1
        self.used[slot] = self.clock

    def evict(self, slot: int) -> None:
        item = self.items[slot]
        if item is None:
            return
        self.index.pop(item.ckey, None)
        self.by_name.pop(item.name, None)
        self.nonglobal -= item.psid != 0
        self.items[slot] = None
        self.group[slot] = -2
        self.free.append(slot)
        self.free.sort(reverse=True)             # lowest free slot last: pop() takes it

    def insert(self, key: tuple, item: Item) -> tuple[int, int | None]:
        """(slot, evicted slot or None)."""
        evicted = None
        if not self.free and len(self.items) >= self.capacity:
            evicted = int(np.argmin(self.used[:len(self.items)]))
            self.evict(evicted)
        if self.free:
            slot = self.free.pop()
            self.items[slot] = item
        else:
            slot = len(self.items)
            self.items.append(item)
            if slot >= self.used.size:
                grow = self.used.size
                self.used = np.concatenate([self.used, np.zeros(grow, np.int64)])
                self.group = np.concatenate([self.group, np.full(grow, -2, np.int64)])
                self.nbytes = np.concatenate([self.nbytes, np.zeros(grow, np.int64)])
        self.index[key] = slot
        self.by_name[item.name] = slot
        self.nonglobal += item.psid != 0
        self.group[slot] = -1
        self.nbytes[slot] = item.nbytes
        self.touch(slot)
        return slot, evicted


@dataclass
class _Entry:
    """A name announced through payloads: rank -> key, and when it was first seen here."""
    keys: dict[int, str]
    since: float
    items: dict[int, Item] = field(default_factory=dict)
    gave_up: set[int] = field(default_factory=set)     # ranks that cancelled (timed out)


class Coordinator:
    """The state every rank keeps identical: cache, table of announcements, joined ranks.

    ``members(psid)`` returns the world ranks of a process set (None for an unknown id)."""

    def __init__(self, size: int, capacity: int, fusion_bytes: int,
                 members: Callable[[int], list[int] | None]) -> None:
        self.size = size
        self.cache = ResponseCache(capacity)
        self.fusion_bytes = fusion_bytes
        self.members = members
        self.table: dict[str, _Entry] = {}
        self.joined = np.zeros(size, bool)
        self._joined_any = False      # == self.joined.any()
        self.join_cycle = np.zeros(size, np.int64)
        self.cycle = 0
        self.idle_streak = 0          # consecutive cycles in which no rank had anything
        self._member_cols = np.zeros((size, 0), bool)     # [rank, slot]: rank in slot's set
        # cached slot -> when first seen partial (some ranks have it, not all); NaN: not
        self._since = np.full(64, np.nan)
        self._any_partial = False
        self._gave_up: dict[str, set[int]] = {}            # name -> ranks that timed out
        self._have: np.ndarray | None = None               # last cycle's bit matrix, or
        self._rows: np.ndarray | None = None               # the rows to compute it from
        self._gids: dict[tuple, int] = {}                   # fuse key -> cache.group id
        self._hits: tuple | None = None                     # (slots, groups) of this cycle

    # ---- the row ------------------------------------------------------------------------
    def words(self) -> int:
        return max(1, -(-self.cache.nslots // 64))

    def row(self, flags: int, payload_len: int, bits: np.ndarray) -> np.ndarray:
        """This rank's contribution: header + bits[:64*words] packed little-endian."""
        w = self.words()
        row = np.zeros(HEADER + w, np.int64)
        row[0], row[1], row[2] = flags, payload_len, self.cache.nslots
        packed = np.packbits(bits[:64 * w], bitorder="little")
        row[HEADER:].view(np.uint8)[:packed.size] = packed
        return row

    # ---- one cycle ----------------------------------------------------------------------
    def process(self, rows: np.ndarray, payloads: list[bytes], now: float) -> Outcome:
        """The same on every rank: rows (size x (HEADER+words)) and payloads per rank."""
        self.cycle += 1
        out = Outcome()
        header = rows[:, :HEADER].tolist()       # a few ranks: Python beats numpy here
        nslots = self.cache.nslots
        if any(h[2] != nslots for h in header):
            raise RuntimeError(f"collx negotiation: ranks disagree on the response cache "
                               f"({[h[2] for h in header]} slots); internal error")
        flags = [h[0] for h in header]
        if any(flags):
            out.shutdown = [r for r, f in enumerate(flags) if f & FLAG_SHUTDOWN]
            out.left = [r for r, f in enumerate(flags) if f & FLAG_LEFT]
        # a rank waiting in shutdown() for the others is idle (its flag stays up)
        if not any(f & ~(FLAG_SHUTDOWN | FLAG_LEFT) for f in flags) \
                and not rows[:, HEADER:].any():      # nobody has anything
            self.idle_streak += 1
            self._clear_partial()
            self._have = self._rows = None
            return out
        self.idle_streak = 0
        if any(f & FLAG_JOINED for f in flags):
            joined = np.array([bool(f & FLAG_JOINED) for f in flags])
            newly = joined & ~self.joined
            self.join_cycle[newly] = self.cycle
            self.joined |= joined
            self._joined_any = True
        if out.shutdown and self._joined_any:   # every pending join() fails (the engine)
            self.joined[:] = False
            self._joined_any = False
            self.join_cycle[:] = 0
        # payloads: cancels and new announcements, in rank order
        for r, payload in enumerate(payloads):
            if payload:
                msg = json.loads(payload)
                for name in msg.get("c", ()):
                    if len(self._gave_up) > 4096:        # names that never completed
                        self._gave_up.clear()
                    self._gave_up.setdefault(name, set()).add(r)
                    entry = self.table.get(name)
                    if entry is not None:
                        entry.keys.pop(r, None)
                        entry.items.pop(r, None)
                        entry.gave_up.add(r)
                        if not entry.keys:
                            del self.table[name]
                for key in msg.get("n", ()):
                    name = json.loads(key)[0]
                    slot = self.cache.by_name.get(name)
                    if slot is not None:                 # cached under another key
                        self.cache.evict(slot)
                        out.reset_slots.add(slot)
                    entry = self.table.get(name)
                    if entry is None:
                        entry = self.table[name] = _Entry({}, now)
                    entry.keys[r] = key
                    entry.items[r] = _item(key)
                    entry.gave_up.discard(r)
                    self._gave_up.get(name, set()).discard(r)
        self._hits = None
        ready = self._cached_ready(rows, now, out.reset_slots)   # stamps the slots it uses
        table = self._table_ready(out)
        if table or self._hits is None:
            out.responses = self._fuse(ready + table if table else ready) + out.responses
        else:
            out.responses = self._group_slots(ready, *self._hits) + out.responses
        # cache what was negotiated anew (after this cycle's readiness: identical everywhere;
        # the cached hits were stamped first, so an insert never evicts a slot used now)
        by_name = self.cache.by_name
        for resp in table:
            if resp.error is not None:
                continue
            for it in resp.items:
                slot = by_name.get(it.name)
                if slot is not None:
                    self.cache.touch(slot)
                elif it.kind == "remove_process_set":
                    self._evict_set(it.agree.get("process_set_id"), out)
                elif ".noname." not in it.name:
                    self._insert(it, out)
        if self._joined_any and self.joined.all():
            last_cycle = self.join_cycle.max()
            out.join_last = int(np.flatnonzero(self.join_cycle == last_cycle).max())
            self.joined[:] = False
            self._joined_any = False
            self.join_cycle[:] = 0
        return out

    def _insert(self, it: Item, out: Outcome) -> None:
        slot, evicted = self.cache.insert(it.ckey, it)
        if it.fuse_key is not None:
            self.cache.group[slot] = self._gids.setdefault(it.fuse_key, len(self._gids))
        if evicted is not None:
            out.reset_slots.add(evicted)
        if self._member_cols.shape[1] <= slot:
            grow = np.zeros((self.size, max(64, 2 * self._member_cols.shape[1])), bool)
            grow[:, :self._member_cols.shape[1]] = self._member_cols
            self._member_cols = grow
        col = np.zeros(self.size, bool)
        col[self.members(it.psid) or []] = True
        self._member_cols[:, slot] = col
        if slot >= self._since.size:
            self._since = np.concatenate([self._since, np.full(self._since.size, np.nan)])
        self._since[slot] = np.nan

    def _evict_set(self, psid: Any, out: Outcome) -> None:
        for slot, it in enumerate(self.cache.items):
            if it is not None and it.psid == psid:
                self.cache.evict(slot)
                out.reset_slots.add(slot)

    def _cached_ready(self, rows: np.ndarray, now: float, evicted: set[int]) -> list[Any]:
        n = self.cache.nslots
        self._have = self._rows = None
        if n == 0:
            return []
        if not self._joined_any and not evicted and not self.cache.nonglobal:
            # every cached request is of the global set and nobody joined: ready = AND of
            # every rank's words, partial = OR but not AND (no bit matrix needed)
            words = rows[:, HEADER:HEADER + -(-n // 64)]
            orw = np.bitwise_or.reduce(words, axis=0)
            if not orw.any():
                self._clear_partial()
                return []
            self._rows = rows
            andw = np.bitwise_and.reduce(words, axis=0)
            ready = np.unpackbits(andw.view(np.uint8), bitorder="little")[:n].view(bool)
            if (orw != andw).any():
                partial = np.unpackbits((orw ^ andw).view(np.uint8),
                                        bitorder="little")[:n].view(bool)
                self._mark_partial(partial, n, now)
            else:
                self._clear_partial()
        else:
            bits = np.ascontiguousarray(rows[:, HEADER:]).view(np.uint8)
            have = np.unpackbits(bits, axis=1, bitorder="little")[:, :n].astype(bool)
            for s in evicted:
                have[:, s] = False
            self._have = have
            anyone = have.any(axis=0)
            if not anyone.any():
                self._clear_partial()
                return []
            covered = have | self.joined[:, None] | ~self._member_cols[:, :n]
            ready = anyone & covered.all(axis=0)
            partial = anyone & ~ready
            if partial.any():
                self._mark_partial(partial, n, now)
            else:
                self._clear_partial()
        slots = np.flatnonzero(ready)
        self.cache.touch(slots)
        items = self.cache.items
        if self._gave_up:
            for s in slots.tolist():
                it = items[s]
                if it is not None:
                    self._gave_up.pop(it.name, None)
        if not self._joined_any:                # the common case: Items, grouped by numpy
            groups = self.cache.group[slots]
            if (groups == -2).any():            # (a free slot is never ready; be safe)
                slots, groups = slots[groups != -2], groups[groups != -2]
            self._hits = (slots, groups)
            return list(map(items.__getitem__, slots.tolist()))
        out: list[Any] = []
        joined = tuple(np.flatnonzero(self.joined).tolist())
        for s in slots.tolist():
            it = items[s]
            if it is not None:
                jn = self._joined_in(it.psid, joined)
                if jn:                          # a joined rank that still submitted it takes part
                    jn = tuple(r for r in jn if not self._have[r, s])
                out.append(join_error(it, jn) if jn and not joinable(it) else
                           Response([it], joined=jn))
        return out

    def _mark_partial(self, partial: np.ndarray, n: int, now: float) -> None:
        since = self._since[:n]
        since[partial & np.isnan(since)] = now
        since[~partial] = np.nan
        self._since[n:] = np.nan
        self._any_partial = True

    def _have_matrix(self) -> np.ndarray | None:
        """The last cycle's [rank, slot] bit matrix (None when idle)."""
        if self._have is None and self._rows is not None:
            bits = np.ascontiguousarray(self._rows[:, HEADER:]).view(np.uint8)
            self._have = np.unpackbits(bits, axis=1, bitorder="little")[
                :, :self.cache.nslots].astype(bool)
        return self._have

    def _clear_partial(self) -> None:
        if self._any_partial:
            self._since[:] = np.nan
            self._any_partial = False

    def _joined_in(self, psid: int, joined: tuple[int, ...]) -> tuple[int, ...]:
        if not joined:
            return ()
        members = set(self.members(psid) or [])
        return tuple(r for r in joined if r in members)

    def _table_ready(self, out: Outcome) -> list[Response]:
        ready: list[Response] = []
        if not self.table:
            return ready
        joined = set(np.flatnonzero(self.joined).tolist())
        for name in list(self.table):
            entry = self.table[name]
            items = entry.items
            need: set[int] = set()
            unknown = []
            for it in items.values():
                m = self.members(it.psid)
                if m is None:
                    unknown.append(it.psid)
                else:
                    need |= set(m)
            if unknown:
                del self.table[name]
                first = next(iter(items.values()))
                out.responses.append(Response([first], usage=True, error=(
                    f"collx.{first.kind}: {name!r} names process set(s) {sorted(set(unknown))}, "
                    f"which are not registered (collx.add_process_set)")))
                continue
            if not (need - joined) <= set(entry.keys):
                continue
            del self.table[name]
            self._gave_up.pop(name, None)
            keys = set(entry.keys.values())
            first = items[min(items)]
            jn = tuple(sorted(need & joined - set(entry.keys)))
            if len(keys) > 1:
                groups: dict[str, list[int]] = {}
                for r in sorted(entry.keys):
                    groups.setdefault(entry.keys[r], []).append(r)
                what = "; ".join(
                    f"rank(s) {rs} passed "
                    f"{_describe(items[rs[0]].agree, items[rs[0]].kind, items[rs[0]].psid)}"
                    for rs in groups.values())
                ready.append(Response([first], error=(
                    f"collx.{first.kind}: ranks disagree about tensor {name!r}: {what}")))
            elif jn and not joinable(first):
                ready.append(join_error(first, jn))
            else:
                ready.append(Response([first], joined=jn))
        return ready

    def _group_slots(self, items: list[Item], slots: np.ndarray, groups: np.ndarray
                     ) -> list[Response]:
        """What ``_fuse(items)`` returns, for cached hits with no rank joined, without a
        Python step per item when every fuse key's tensors fit in one response."""
        limit = self.fusion_bytes
        if not items:
            return []
        if limit <= 0 or (groups < 0).any():
            return self._fuse(items)
        nbytes = self.cache.nbytes[slots]
        if (groups == groups[0]).all():
            return [Response(items)] if int(nbytes.sum()) <= limit else self._fuse(items)
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        if (np.bincount(inverse, weights=nbytes) > limit).any():
            return self._fuse(items)
        return [Response([items[i] for i in np.flatnonzero(inverse == k).tolist()])
                for k in np.argsort(first, kind="stable").tolist()]

    def _fuse(self, ready: list) -> list[Response]:
        """Responses for the ready list (Items: cached and ready with no rank joined;
        Responses: everything else): fusible allreduces with the same fuse key and joined
        ranks are grouped, in ready order, up to the threshold."""
        limit = self.fusion_bytes
        out: list[Response] = []
        open_: dict[tuple, list] = {}           # key -> [items, bytes]
        for entry in ready:
            if isinstance(entry, Item):
                it, joined = entry, ()
                key = it.fuse_key
            else:
                if entry.error is not None or limit <= 0 or entry.items[0].fuse_key is None:
                    out.append(entry)
                    continue
                it, joined = entry.items[0], entry.joined
                key = it.fuse_key + (joined,)
            if key is None or limit <= 0:
                out.append(Response([it], joined=joined))
                continue
            cur = open_.get(key)
            if cur is not None and cur[1] + it.nbytes <= limit:
                cur[0].append(it)
                cur[1] += it.nbytes
                continue
            resp = Response([it], joined=joined)
            open_[key] = [resp.items, it.nbytes]
            out.append(resp)
        return out

    # ---- reports ------------------------------------------------------------------------
    def pending(self, now: float) -> list[tuple[str, float, list[int], list[int]]]:
        """(name, seconds waiting, ranks that have it, ranks missing) for every request
        some ranks announced and others not yet, oldest first."""
        rows = []
        joined = set(np.flatnonzero(self.joined).tolist())
        for name, entry in self.table.items():
            need: set[int] = set()
            for it in entry.items.values():
                need |= set(self.members(it.psid) or [])
            have = sorted(entry.keys)
            rows.append((name, now - entry.since, have,
                         sorted(need - joined - set(have) - entry.gave_up)))
        matrix = self._have_matrix()
        if matrix is not None:
            partial = np.flatnonzero(~np.isnan(self._since[:matrix.shape[1]])).tolist()
            for s, since in zip(partial, self._since[partial].tolist()):
                it = self.cache.items[s]
                if it is None:
                    continue
                have = np.flatnonzero(matrix[:, s]).tolist()
                need = set(self.members(it.psid) or [])
                gave_up = self._gave_up.get(it.name, set())
                rows.append((it.name, now - since, have,
                             sorted(need - joined - set(have) - gave_up)))
        rows.sort(key=lambda r: -r[1])
        return rows

    def oldest(self) -> float | None:
        """When the longest-waiting partially announced request was first seen (None: none);
        cheap, so the stall check can run every cycle."""
        times = [e.since for e in self.table.values()]
        if self._any_partial:
            times.append(float(np.nanmin(self._since)))
        return min(times) if times else None

    def missing(self, name: str, now: float) -> list[int]:
        for row in self.pending(now):
            if row[0] == name:
                return row[3]
        return []


def stall_message(rows: list[tuple[str, float, list[int], list[int]]], limit: int = 10) -> str:
    parts = [f"{name!r} (waiting {age:.1f} s; missing rank(s) {missing}, ready on {have})"
             for name, age, have, missing in rows[:limit]]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ("collx: stalled: some ranks submitted tensors that others have not: "
            + "; ".join(parts) + more + ". Every rank of the set must submit the same names "
            "(check for a rank skipping a step or a conditional collective)")


def monotonic() -> float:
    return time.monotonic()
