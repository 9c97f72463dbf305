"""Process sets: collectives among a subset of the world's ranks (Horovod's ProcessSet).

A process set is a *view* of the world communicator, not a new mesh. Its Communicator
shares the world's C communicator (``ccomm``: connections, shared memory, deadlines) and
differs in four things only:

* ``rank``/``size`` are the position in and size of the set (ranks sorted ascending, as
  Horovod sorts them: ProcessSet([3, 0]) has world rank 0 as set rank 0, 3 as set rank 1),
  so every ``ops.prepare_*`` builds the schedule for the set's size unchanged, and Average
  divides by the set's size;
* ``peers`` maps set ranks to world ranks: ``Communicator.plan`` packs every step's peer
  through it (``collx.algos.pack.pack_rank``), so the C executor talks to world ranks;
* ``fp_salt`` (set id and ranks) enters every message fingerprint, so a rank
  running a set's collective against a peer running the world's (or another set's)
  collective of the same shape fails with MismatchError instead of mixing bytes;
* ``host_groups`` are the world's restricted to the set (in set ranks), and the set's
  Selector is the world's cost model on the sub-topology of the set's ranks (same links,
  tune table, COLLX_ALGO spec and chunk size): every member derives the same one, so
  members choose alike. A world without a Selector (one process, or tests that build
  Communicators by hand) gives sets without one: registry defaults and COLLX_ALGO.

A set's Communicator never registers plans into the C allreduce fast path: that table is
per ``ccomm`` and keyed by (bytes, dtype, op) only, so the world's ``allreduce_fast`` would
replay a set's plan. Callers must not use ``ccomm.allreduce_fast`` for a set's call either
(collx.api uses it only for the global set). Removing a set never closes the shared ccomm.

Ordering: messages between two ranks match in FIFO order per direction, for the world and
every set alike. Every rank must run the collectives of the sets it belongs to in one
global program order (the ordered engine's rule, with non-members skipping the call) —
then sets that overlap ({0,1} and {1,2,3}) cannot deadlock or cross messages. Disjoint
sets run fully concurrently.

Registration (``add``/``remove``) is collective over the *world*: every world rank calls it
with the same ranks; the ranks are exchanged (one variable-size allgather of int64 rows:
two small messages per rank pair at most, on the world's connections) and a disagreement is
a MismatchError on every rank naming what each rank passed. Ids are assigned in call order
(1, 2, ... never reused within one table), hence identical on every rank. ``prepare_add`` /
``prepare_remove`` return the exchange as a zero-argument job, so an engine can run it on
the thread that owns the communicator (the negotiated engine's worker).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import InvalidUsage, MismatchError
from .communicator import Communicator

Job = Callable[[], Any]

__all__ = ["ProcessSet", "ProcessSetTable", "global_process_set", "current_table",
           "comm_for"]


def _as_ranks(ranks: Any) -> list[int]:
    """Sorted, validated world ranks (no world size check: that needs the table)."""
    if isinstance(ranks, ProcessSet):
        return list(ranks.ranks)
    try:
        items = list(ranks)
    except TypeError:
        raise InvalidUsage(f"collx.ProcessSet: ranks={ranks!r} must be an iterable of "
                           f"ints (world ranks)") from None
    out = []
    for r in items:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
            raise InvalidUsage(f"collx.ProcessSet: rank {r!r} in {items!r} is not an int")
        out.append(int(r))
    if len(set(out)) != len(out):
        raise InvalidUsage(f"collx.ProcessSet: ranks {items!r} name a rank twice")
    if not out:
        raise InvalidUsage("collx.ProcessSet: a process set needs at least one rank")
    if min(out) < 0:
        raise InvalidUsage(f"collx.ProcessSet: ranks {items!r} include a negative rank")
    return sorted(out)


class ProcessSet:
    """A set of world ranks that run collectives together (Horovod's ``ProcessSet``).

    ``ranks``: the world ranks, sorted ascending (set rank i is world rank ranks[i]).
    ``process_set_id``: None until registered with ``add_process_set`` (then 1, 2, ...;
    the global set is 0); set back to None by ``remove_process_set`` and by shutdown.
    Constructing one is local (no communication); only registration is collective.
    """

    def __init__(self, ranks: Iterable[int]) -> None:
        self.ranks: list[int] = _as_ranks(ranks)
        self.process_set_id: int | None = None
        self._table: ProcessSetTable | None = None

    @classmethod
    def _global(cls) -> "ProcessSet":
        ps = cls.__new__(cls)
        ps.ranks, ps.process_set_id, ps._table = [], 0, None
        return ps

    def _need_table(self, what: str) -> "ProcessSetTable":
        table = self._table
        if table is None or self.process_set_id is None:
            raise InvalidUsage(f"collx: {self!r}.{what}() needs a registered process set; call "
                               f"collx.add_process_set(...) after collx.init() first")
        return table

    def size(self) -> int:
        """Number of ranks in the set (the global set: the world size once initialized)."""
        if self.process_set_id == 0 and self._table is None:
            raise InvalidUsage("collx.global_process_set.size(): call collx.init() first")
        return len(self.ranks)

    def rank(self) -> int:
        """This process's rank within the set, or -1 when it is not a member."""
        table = self._need_table("rank")
        w = table.world.rank
        return self.ranks.index(w) if w in self.ranks else -1

    def included(self) -> bool:
        """Whether this process is a member of the set."""
        return self._need_table("included").world.rank in self.ranks

    def __repr__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks})"

    __str__ = __repr__


# The global set: id 0, ranks filled in by the ProcessSetTable of collx.init() and emptied
# again at shutdown (the same object across init/shutdown/init, as in Horovod).
global_process_set = ProcessSet._global()

_current: "ProcessSetTable | None" = None


def current_table() -> "ProcessSetTable | None":
    """The table of the live world communicator (None before init / after shutdown)."""
    return _current


def comm_for(ps: "ProcessSet | None") -> Communicator:
    """``current_table().comm_for(ps)``; InvalidUsage before init."""
    table = _current
    if table is None:
        raise InvalidUsage("collx: no communicator; call collx.init() first")
    return table.comm_for(ps)


def _subgroups(groups: Any, pos: dict[int, int]) -> Any:
    """World host groups -> the set's: set ranks, hosts without members dropped, hosts in
    order of their lowest set rank (the world's convention, and the sub-topology's)."""
    if groups is None:
        return None
    out = [sorted(pos[r] for r in g if r in pos) for g in groups]
    return sorted((g for g in out if g), key=lambda g: g[0])


def _sub_selector(world: Communicator, ranks: list[int]) -> Any:
    """The world's Selector on the sub-topology of ``ranks`` (None: the world has none)."""
    sel = world.selector
    if sel is None or world.topology is None:
        return None
    from ..topo.select import Selector
    from ..topo.topology import Topology
    topo = Topology(ranks=[world.topology.ranks[r] for r in ranks], hosts=world.topology.hosts)
    return Selector(topo, sel.links, servers=0, spec=world.spec, tune=sel.tune,
                    chunk_bytes=sel.chunk_bytes, cores=sel.cores or 0, world_size=len(ranks))


def make_set_communicator(world: Communicator, ranks: list[int], set_id: int) -> Communicator:
    """The Communicator of this (member) rank for the set ``ranks`` of ``world`` registered
    as ``set_id`` (ids are never reused within a table, so the fingerprint salt of a set
    added after a removal differs from the removed one's)."""
    pos = {r: i for i, r in enumerate(ranks)}
    groups = _subgroups(world.host_groups, pos)
    me = pos[world.rank]
    local_rank, local_size, cross_rank, cross_size = 0, 1, 0, 1
    if groups:
        for h, g in enumerate(groups):
            if me in g:
                local_rank, local_size, cross_rank = g.index(me), len(g), h
        cross_size = len(groups)
    comm = Communicator(me, len(ranks), local_rank=local_rank, local_size=local_size,
                        cross_rank=cross_rank, cross_size=cross_size, ccomm=world.ccomm,
                        transports={pos[p]: t for p, t in world.transports.items() if p in pos},
                        timeout=world.timeout, store=None, servers=0, host_groups=groups,
                        topology=None, probe=world.probe, selector=None,
                        peers=list(ranks), fp_salt=f"|ps{set_id}:{ranks}",
                        owns_ccomm=False)
    comm.spec = world.spec                     # the world's COLLX_ALGO (set_spec included)
    comm.selector = _sub_selector(world, ranks)
    return comm


class ProcessSetTable:
    """The process sets of one world communicator (one per collx.init()).

    ``add``/``remove`` are collective over the world (see the module docstring);
    ``comm_for``/``get``/``sets`` are local and thread-safe.
    """

    def __init__(self, world: Communicator) -> None:
        global _current
        self.world = world
        self._lock = threading.Lock()
        self._sets: dict[int, ProcessSet] = {0: global_process_set}
        self._comms: dict[int, Communicator] = {}
        self._next_id = 1
        global_process_set.ranks = list(range(world.size))
        global_process_set._table = self
        _current = self

    # ---- local queries

    def get(self, process_set_id: int) -> ProcessSet:
        """The registered set with this id; InvalidUsage if there is none."""
        with self._lock:
            ps = self._sets.get(process_set_id)
        if ps is None:
            raise InvalidUsage(f"collx: no process set with id {process_set_id!r} (registered: "
                               f"{sorted(self._sets)})")
        return ps

    def sets(self) -> list[ProcessSet]:
        """Every registered set, the global one first, by id."""
        with self._lock:
            return [self._sets[k] for k in sorted(self._sets)]

    def comm_for(self, ps: ProcessSet | None) -> Communicator:
        """The Communicator to pass to ``ops.prepare_*`` for a call on ``ps`` (None or the
        global set: the world). InvalidUsage when ``ps`` is not registered in this table or
        this rank is not one of its members (naming the set and the rank)."""
        if ps is None:
            return self.world
        if not isinstance(ps, ProcessSet):
            raise InvalidUsage(f"collx: process_set={ps!r} must be a collx.ProcessSet (or None "
                               f"for the global set)")
        pid = ps.process_set_id
        if pid == 0:
            return self.world
        comm = self._comms.get(pid) if pid is not None else None   # dict read: atomic
        if comm is not None and ps._table is self:
            return comm
        if pid is None or ps._table is not self or pid not in self._sets:
            raise InvalidUsage(f"collx: {ps!r} is not registered; call "
                               f"collx.add_process_set({ps.ranks}) on every rank first")
        raise InvalidUsage(f"collx: rank {self.world.rank} is not a member of {ps!r}; only "
                           f"ranks {ps.ranks} may call collectives on it")

    # ---- collective registration

    def prepare_add(self, ps_or_ranks: Any, timeout: float | None = None) -> Job:
        """The job registering ``ps_or_ranks`` (a ProcessSet or world ranks) on every world
        rank; the job returns the registered ProcessSet (the one passed, if it was one).
        A local error (bad ranks, a rank outside the world, a set already registered) is
        still exchanged first, then raised on every rank: InvalidUsage where every rank
        passed the same ranks, MismatchError naming each rank's ranks where they differ."""
        from . import ops
        problem = ""
        ps: ProcessSet | None = ps_or_ranks if isinstance(ps_or_ranks, ProcessSet) else None
        try:
            ranks = _as_ranks(ps_or_ranks)
        except InvalidUsage as exc:
            ranks, problem = [], str(exc)
        n = self.world.size
        if not problem and ranks[-1] >= n:
            problem = f"collx.add_process_set: ranks {ranks} go beyond the world's {n} ranks"
        if not problem and ps is not None and ps.process_set_id is not None:
            problem = f"collx.add_process_set: {ps!r} is already registered"
        row = np.array([1 if problem else 0, len(ranks)] + ranks, dtype=np.int64)
        exchange = ops.prepare_allgather(self.world, row, None, timeout, name="add_process_set") \
            if n > 1 else (lambda: row)

        def job() -> ProcessSet:
            table = exchange()
            rows, i = [], 0
            while i < len(table):                # [status, k, r_1..r_k] per world rank
                k = int(table[i + 1])
                rows.append((int(table[i]), table[i + 2:i + 2 + k].tolist()))
                i += 2 + k
            if any(r != rows[0] for r in rows):
                said = "; ".join(f"rank {w}: {rk}{' (invalid)' if st else ''}"
                                 for w, (st, rk) in enumerate(rows))
                raise MismatchError(f"collx.add_process_set: the ranks disagree on the set to "
                                    f"add ({said}); every rank must pass the same ranks")
            if problem:
                raise InvalidUsage(problem)
            with self._lock:
                for pid_, other in self._sets.items():
                    if other.ranks == ranks and pid_ != 0:
                        raise InvalidUsage(f"collx.add_process_set: ranks {ranks} are already "
                                           f"registered as {other!r}; duplicate process sets "
                                           f"are not allowed")
                pid = self._next_id
                self._next_id += 1
                target = ps if ps is not None else ProcessSet(ranks)
                if self.world.rank in ranks:
                    self._comms[pid] = make_set_communicator(self.world, ranks, pid)
                target.process_set_id, target._table = pid, self
                self._sets[pid] = target
            return target
        return job

    def add(self, ps_or_ranks: Any, timeout: float | None = None) -> ProcessSet:
        """``prepare_add(ps_or_ranks, timeout)()``: run the registration on this thread."""
        return self.prepare_add(ps_or_ranks, timeout)()

    def prepare_remove(self, ps: ProcessSet, timeout: float | None = None) -> Job:
        """The job unregistering ``ps`` on every world rank (collective; the ids each rank
        passes are exchanged and must agree, else MismatchError on every rank). The job
        returns True, or False for the global set (never removed, nothing exchanged). The
        set's Communicator is dropped (its plans freed); the shared ccomm stays open."""
        from . import ops
        if not isinstance(ps, ProcessSet):
            raise InvalidUsage(f"collx.remove_process_set: {ps!r} is not a collx.ProcessSet")
        if ps.process_set_id == 0:
            return lambda: False
        pid = ps.process_set_id if ps._table is self else None
        mine = -1 if pid is None or pid not in self._sets else pid
        row = np.array([mine], dtype=np.int64)
        exchange = ops.prepare_allgather(self.world, row, None, timeout,
                                         name="remove_process_set") \
            if self.world.size > 1 else (lambda: row)

        def job() -> bool:
            ids = exchange().tolist()
            if any(i != ids[0] for i in ids):
                said = "; ".join(f"rank {w}: {'unregistered' if i < 0 else f'id {i}'}"
                                 for w, i in enumerate(ids))
                raise MismatchError(f"collx.remove_process_set: the ranks disagree on the set "
                                    f"to remove ({said}); every rank must remove the same set")
            if mine < 0:
                raise InvalidUsage(f"collx.remove_process_set: {ps!r} is not registered")
            with self._lock:
                self._sets.pop(mine, None)
                self._comms.pop(mine, None)
            ps.process_set_id, ps._table = None, None
            return True
        return job

    def remove(self, ps: ProcessSet, timeout: float | None = None) -> bool:
        """``prepare_remove(ps, timeout)()``: run the removal on this thread."""
        return self.prepare_remove(ps, timeout)()

    def close(self) -> None:
        """At shutdown (no communication): every registered set is invalidated (id None),
        the global set's ranks emptied; the world communicator is the caller's to close."""
        global _current
        with self._lock:
            for pid, ps in self._sets.items():
                if pid != 0:
                    ps.process_set_id, ps._table = None, None
            self._sets = {0: global_process_set}
            self._comms.clear()
        if global_process_set._table is self:
            global_process_set.ranks, global_process_set._table = [], None
        if _current is self:
            _current = None
