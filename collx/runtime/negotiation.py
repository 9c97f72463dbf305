"""Negotiation: which requests are ready on every rank, computed identically everywhere.

The negotiated engine's worker (collx/runtime/negotiated_engine.py) runs one coordination
cycle every COLLX_CYCLE_TIME ms (at once after a local submit) on every rank of the world:

1. **Row allgather** (always; one collective, plan key ``("negotiate-rows", words)``): each
   rank contributes ``HEADER + W`` int64 words — flags (NEW: it has a payload; SHUTDOWN;
   JOINED), its payload length, the number of response-cache slots in use, then one bit per
   cache slot: "I have a pending request matching this cached entry". With C cached slots
   W = ceil(C/64): 32 bytes for an empty cache, 152 bytes for 1024 entries.
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
grouped, in ready order, into responses of at most COLLX_FUSION_THRESHOLD bytes.

**Idle.** A cycle in which every row is empty (no flags, no bits) is counted; the engine
stretches its cycle time by 2x after 16 such cycles in a row and 4x after 32 (every rank
sees the same rows, so all stretch alike), and back to 1x after any work. The first request
after a quiet spell therefore waits up to 4 cycle times; an idle rank costs ~4x less CPU.

**Join.** A joined rank's JSON-free flag makes it count as present for every request; when
every rank is joined, join() returns everywhere with the last rank to join (the highest rank
among those whose flag appeared in the latest cycle).
"""
from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

FLAG_NEW, FLAG_SHUTDOWN, FLAG_JOINED = 1, 2, 4
HEADER = 3                      # int64 words before the bits: flags, payload bytes, slots
ALLREDUCE_KINDS = ("allreduce", "grouped_allreduce")
# kinds a joined rank can take part in (zeros / no rows / nothing)
JOINABLE = ALLREDUCE_KINDS + ("quantized_allreduce", "reducescatter", "allgather", "barrier")


def dtype_of(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        import ml_dtypes  # type: ignore[import-not-found]
        return np.dtype(getattr(ml_dtypes, name))


@dataclass(eq=False)
class Request:
    """One submitted operation on this rank. ``agree`` holds what all ranks must pass alike;
    fusible allreduces carry arr/res/op/code/pre/post, everything else a prepared ``job``."""
    name: str
    kind: str
    psid: int
    agree: dict
    job: Callable[[], Any] | None = None
    timeout: float | None = None
    arr: Any = None
    res: Any = None
    op: int = 0
    code: int = 0
    pre: float = 1.0
    post: float = 1.0
    comm: Any = None
    removes: Any = None
    # set by the engine
    handle: Any = None
    slot: int | None = None
    announced: bool = False
    t_submit: float = 0.0
    deadline: float = math.inf
    ckey: tuple = ()                      # the response cache's key (cache_key(...))
    cacheable: bool = field(init=False)   # auto-named requests never repeat: not cached

    def __post_init__(self) -> None:
        if not self.ckey:
            self.ckey = cache_key(self.name, self.kind, self.psid, self.agree)
        self.cacheable = ".noname." not in self.name

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
    shutdown: list[int] = field(default_factory=list)


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
    """key -> slot, identical on every rank; LRU eviction beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.lru: OrderedDict[tuple, int] = OrderedDict()
        self.by_name: dict[str, int] = {}
        self.items: list[Item | None] = []      # slot -> Item (None: free)
        self.free: list[int] = []

    @property
    def nslots(self) -> int:
        return len(self.items)

    def lookup(self, key: tuple) -> int | None:
        return self.lru.get(key)

    def touch(self, slot: int) -> None:
        item = self.items[slot]
        if item is not None:
            self.lru.move_to_end(item.ckey)

    def evict(self, slot: int) -> None:
        item = self.items[slot]
        if item is None:
            return
        self.lru.pop(item.ckey, None)
        self.by_name.pop(item.name, None)
        self.items[slot] = None
        self.free.append(slot)
        self.free.sort(reverse=True)             # lowest free slot last: pop() takes it

    def insert(self, key: tuple, item: Item) -> tuple[int, int | None]:
        """(slot, evicted slot or None)."""
        evicted = None
        if not self.free and len(self.items) >= self.capacity:
            _, evicted = next(iter(self.lru.items()))
            self.evict(evicted)
        if self.free:
            slot = self.free.pop()
            self.items[slot] = item
        else:
            slot = len(self.items)
            self.items.append(item)
        self.lru[key] = slot
        self.by_name[item.name] = slot
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
        self.join_cycle = np.zeros(size, np.int64)
        self.cycle = 0
        self.idle_streak = 0          # consecutive cycles in which no rank had anything
        self._member_cols = np.zeros((size, 0), bool)     # [rank, slot]: rank in slot's set
        self._partial_since: dict[int, float] = {}         # cached slot -> first seen partial
        self._gave_up: dict[str, set[int]] = {}            # name -> ranks that timed out
        self._have: np.ndarray | None = None               # last cycle's bit matrix

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
        flags = rows[:, 0]
        if (rows[:, 2] != self.cache.nslots).any():
            raise RuntimeError(f"collx negotiation: ranks disagree on the response cache "
                               f"({rows[:, 2].tolist()} slots); internal error")
        if not flags.any() and not rows[:, HEADER:].any():      # nobody has anything
            self.idle_streak += 1
            self._partial_since.clear()
            self._have = None
            return out
        self.idle_streak = 0
        newly = (flags & FLAG_JOINED).astype(bool) & ~self.joined
        self.join_cycle[newly] = self.cycle
        self.joined |= (flags & FLAG_JOINED).astype(bool)
        out.shutdown = np.flatnonzero(flags & FLAG_SHUTDOWN).tolist()
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
        ready = self._cached_ready(rows, now, out.reset_slots)
        ready += self._table_ready(out)
        out.responses = self._fuse(ready) + out.responses
        # cache what was negotiated anew (after this cycle's readiness: identical everywhere)
        # (touch every hit before inserting: an insert must not evict a slot used now)
        done = [it for resp in out.responses if resp.error is None for it in resp.items]
        for it in done:
            slot = self.cache.by_name.get(it.name)
            if slot is not None:
                self.cache.touch(slot)
        for it in done:
            if it.kind == "remove_process_set":
                self._evict_set(it.agree.get("process_set_id"), out)
            elif it.name not in self.cache.by_name and ".noname." not in it.name:
                self._insert(it, out)
        if self.joined.all():
            last_cycle = self.join_cycle.max()
            out.join_last = int(np.flatnonzero(self.join_cycle == last_cycle).max())
            self.joined[:] = False
            self.join_cycle[:] = 0
        return out

    def _insert(self, it: Item, out: Outcome) -> None:
        slot, evicted = self.cache.insert(it.ckey, it)
        if evicted is not None:
            out.reset_slots.add(evicted)
        if self._member_cols.shape[1] <= slot:
            grow = np.zeros((self.size, max(64, 2 * self._member_cols.shape[1])), bool)
            grow[:, :self._member_cols.shape[1]] = self._member_cols
            self._member_cols = grow
        col = np.zeros(self.size, bool)
        col[self.members(it.psid) or []] = True
        self._member_cols[:, slot] = col
        self._partial_since.pop(slot, None)

    def _evict_set(self, psid: Any, out: Outcome) -> None:
        for slot, it in enumerate(self.cache.items):
            if it is not None and it.psid == psid:
                self.cache.evict(slot)
                out.reset_slots.add(slot)

    def _cached_ready(self, rows: np.ndarray, now: float, evicted: set[int]) -> list[Response]:
        n = self.cache.nslots
        if n == 0:
            self._have = None
            return []
        bits = np.ascontiguousarray(rows[:, HEADER:]).view(np.uint8)
        have = np.unpackbits(bits, axis=1, bitorder="little")[:, :n].astype(bool)
        for s in evicted:
            have[:, s] = False
        self._have = have
        anyone = have.any(axis=0)
        if not anyone.any():
            self._partial_since.clear()
            return []
        covered = have | self.joined[:, None] | ~self._member_cols[:, :n]
        ready = anyone & covered.all(axis=0)
        partial = anyone & ~ready
        if partial.any():
            keep = {}
            for s in np.flatnonzero(partial).tolist():
                keep[s] = self._partial_since.get(s, now)
            self._partial_since = keep
        else:
            self._partial_since.clear()
        out = []
        joined = tuple(np.flatnonzero(self.joined).tolist())
        for s in np.flatnonzero(ready).tolist():
            it = self.cache.items[s]
            if it is not None:
                self._gave_up.pop(it.name, None)
                out.append(Response([it], joined=self._joined_in(it.psid, joined)))
        return out

    def _joined_in(self, psid: int, joined: tuple[int, ...]) -> tuple[int, ...]:
        if not joined:
            return ()
        members = set(self.members(psid) or [])
        return tuple(r for r in joined if r in members)

    def _table_ready(self, out: Outcome) -> list[Response]:
        ready: list[Response] = []
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
            elif jn and first.kind not in JOINABLE:
                ready.append(Response([first], usage=True, error=(
                    f"collx.{first.kind}: tensor {name!r} cannot run while rank(s) {list(jn)} "
                    f"have joined (collx.join); only allreduce, reducescatter, allgather and "
                    f"barrier can")))
            else:
                ready.append(Response([first], joined=jn))
        return ready

    def _fuse(self, ready: list[Response]) -> list[Response]:
        """Group fusible allreduces (same fuse key, same joined ranks) up to the threshold."""
        if self.fusion_bytes <= 0:
            return ready
        out: list[Response] = []
        open_: dict[tuple, tuple[Response, list[int]]] = {}
        for resp in ready:
            it = resp.items[0]
            if resp.error is not None or it.fuse_key is None:
                out.append(resp)
                continue
            key = it.fuse_key + (resp.joined,)
            cur = open_.get(key)
            if cur is not None and cur[1][0] + it.nbytes <= self.fusion_bytes:
                cur[0].items.append(it)
                cur[1][0] += it.nbytes
                continue
            fused = Response([it], joined=resp.joined)
            open_[key] = (fused, [it.nbytes])
            out.append(fused)
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
        if self._have is not None:
            for s, since in self._partial_since.items():
                it = self.cache.items[s]
                if it is None:
                    continue
                have = np.flatnonzero(self._have[:, s]).tolist()
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
        if self._partial_since:
            times.append(min(self._partial_since.values()))
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
