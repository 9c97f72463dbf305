"""The communicator: this rank's connections (collx._C.Comm) plus a cache of plans.

A plan is one rank's packed schedule validated by C once; it is keyed by everything that
changes the schedule (op, element counts, item size, root) and replayed on every call with
the same key. The fingerprint derived from the key travels with every message, so ranks
that call different collectives fail with MismatchError instead of exchanging garbage.
"""
from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import _C, config
from ..errors import CollxError, CollxTimeout, MismatchError
from ..algos.ir import Schedule
from ..algos.pack import pack_rank
from ..topo.select import parse_algo_spec

MAX_PLANS = 512


def parse_forced_algo(text: str | None) -> dict[str, str]:
    """COLLX_ALGO -> {op: algorithm} for the entries that cover every size (a view of
    collx.topo.select.parse_algo_spec, which also takes size ranges and validates)."""
    spec = parse_algo_spec(text)
    return {e.op: e.name for e in spec.entries if e.lo == 0 and e.hi is None}


@dataclass
class Plan:
    capsule: Any
    fingerprint: int
    algo: str
    nsteps: int
    key: tuple = ()
    # fingerprint per (dtype, op): ranks passing float32 vs int32, or Sum vs Max, to the
    # same plan must get MismatchError, not silently mixed bytes; computed once per pair
    fingerprints: dict = field(default_factory=dict)

    def describe(self) -> str:
        op, *sizes = self.key[:-1] if self.key else ("?",)
        return f"{op}{tuple(sizes)} with {self.algo}"


_REDOP_NAMES = {_C.SUM: "Sum", _C.PROD: "Product", _C.MIN: "Min", _C.MAX: "Max",
                _C.AVERAGE: "Average"}


def _annotated(exc: CollxError, plan: Plan, dtype: int, redop: int,
               where: str = "") -> CollxError:
    """The same error, its message prefixed with the op (and, for a mismatch, what this
    rank called), so that every rank's message says which collective failed."""
    op = plan.key[0] if plan.key else "collective"
    msg = f"collx.{op}: {exc}"
    if isinstance(exc, MismatchError):
        msg += (f" [this rank ran {plan.describe()}{where}, dtype {_C.DTYPE_NAMES[dtype]}, op "
                f"{_REDOP_NAMES.get(redop, redop)}]")
    elif isinstance(exc, CollxTimeout) and not op.endswith("-meta"):
        # the algorithm is chosen per size: ranks that pass different sizes may run
        # schedules with different peers, and then wait instead of seeing a mismatch
        msg += (f" [this rank ran {plan.describe()}{where}, dtype {_C.DTYPE_NAMES[dtype]}; if the "
                f"ranks passed different sizes to this call they may have chosen different "
                f"algorithms — check that every rank passes the same shape]")
    new = type(exc)(msg)
    for attr in ("peer", "status"):
        if hasattr(exc, attr):
            setattr(new, attr, getattr(exc, attr))
    return new


@dataclass
class Communicator:
    rank: int
    size: int
    local_rank: int = 0
    local_size: int = 1
    cross_rank: int = 0
    cross_size: int = 1
    ccomm: Any = None
    transports: dict[int, str] = field(default_factory=dict)
    timeout: float = 300.0
    store: Any = None
    # dedicated summation servers (collx.server) beside the ``size`` workers: they are ranks
    # size .. size + servers - 1 of the C communicator and of star schedules, never of the
    # user's world
    servers: int = 0
    # worker ranks of each host (first-seen host order); None = unknown (single process)
    host_groups: Any = None
    # the job as collx/topo sees it (set by bootstrap): Topology, ProbeResult, Selector;
    # None: no selection (ops use the registry defaults and COLLX_ALGO only)
    topology: Any = None
    probe: Any = None
    selector: Any = None
    # process sets (collx/runtime/process_sets.py): the world rank of each rank of this
    # communicator (None: this is the world), a salt that enters every fingerprint (so a
    # set's messages never match the world's or another set's), and whether close()
    # closes ccomm (a set's communicator shares the world's)
    peers: Any = None
    fp_salt: str = ""
    # store keys of this generation of the job's mesh ("collx/g<N>") and the address this
    # rank's data listener is bound to (peers reach it there): for later exchanges such as
    # the negotiated engine's doorbells (collx/runtime/wake.py)
    store_prefix: str = ""
    host_addr: str = "127.0.0.1"
    owns_ccomm: bool = True
    # bumped whenever the algorithm chosen for a case may change (set_spec, choices_changed):
    # callers that keep prepared runners (ops.allreduce_runner) key them by it
    epoch: int = 0
    _plans: "OrderedDict[tuple, Plan]" = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # COLLX_ALGO, parsed and validated once, here (collx.topo.select.parse_algo_spec:
        # one name, op:name entries, size ranges op:name:lo-hi)
        self.spec = parse_algo_spec(config.get("COLLX_ALGO"))
        self.forced_ok: set[tuple] = set()      # (op, algo, root) a forced algo was checked for
        if self.ccomm is None:
            self.ccomm = _C.Comm(self.rank, self.size + self.servers)
        self.ccomm.set_timeout(float(self.timeout))

    @property
    def forced_algo(self) -> dict[str, str]:
        """op -> algorithm COLLX_ALGO forces for every size."""
        return {e.op: e.name for e in self.spec.entries if e.lo == 0 and e.hi is None}

    def set_spec(self, text: str | None) -> None:
        """Replace the COLLX_ALGO spec for the rest of the job (collx-bench --tune): the C
        fast path forgets the plans it replays, since their algorithm may change."""
        self.spec = parse_algo_spec(text)
        self.choices_changed()

    def choices_changed(self) -> None:
        """The algorithm of some case may differ from now on (a new COLLX_ALGO spec or tune
        table): forget cached decisions, the C fast path's plans and prepared runners."""
        self.epoch += 1
        if self.selector is not None:
            self.selector.forget()
        if self.ccomm is not None:
            self.ccomm.fast_clear()

    def transport_name(self) -> str:
        kinds = sorted(set(self.transports.values()))
        return "+".join(kinds) if kinds else "local"

    def chunk_count(self, itemsize: int) -> int:
        return max(1, config.get("COLLX_CHUNK_BYTES") // max(1, itemsize))

    def plan(self, key: tuple, itemsize: int, build: Callable[[], Schedule]) -> Plan:
        full_key = key + (itemsize,)
        plan = self._plans.get(full_key)       # hot path: a dict read is atomic, no lock
        if plan is not None:
            return plan
        schedule = build()
        steps, deps, scratch = pack_rank(schedule, self.rank, itemsize, self.peers)
        capsule = self.ccomm.plan(steps, deps, scratch)
        plan = Plan(capsule, zlib.crc32(repr(full_key).encode()), schedule.algo,
                    len(schedule.steps[self.rank]), full_key)
        with self._lock:
            self._plans[full_key] = plan
            while len(self._plans) > MAX_PLANS:     # evict the oldest-built plan
                self._plans.popitem(last=False)
        return plan

    def _fingerprint(self, plan: Plan, dtype: int, redop: int) -> int:
        fp = plan.fingerprints.get((dtype, redop))
        if fp is None:
            fp = plan.fingerprints[(dtype, redop)] = zlib.crc32(
                f"|{dtype}|{redop}{self.fp_salt}".encode(), plan.fingerprint)
        return fp

    def register_fast(self, plan: Plan, nbytes: int, dtype: int, redop: int) -> None:
        """Let later identical allreduce calls (same bytes, dtype, op; validated here once)
        go straight to C: collx._C.Comm.allreduce_fast. Registered on every call that took
        the Python path: the C table has one slot per hash of (bytes, dtype, op), so another
        plan (a colliding size, or another algorithm chosen for these bytes) may have taken
        the slot since — which is exactly why this call missed the fast path.

        A process set's communicator never registers: the C table belongs to the shared
        ccomm and is keyed without the set, so the world's allreduce_fast would replay a
        set's plan."""
        if self.peers is not None:
            return
        self.ccomm.fast_register(nbytes, dtype, redop, plan.capsule,
                                 self._fingerprint(plan, dtype, redop),
                                 self.size if redop == _C.AVERAGE else 1)

    def execute(self, plan: Plan, inbuf: Any, outbuf: Any, dtype: int, redop: int,
                timeout: float | None) -> None:
        fp = self._fingerprint(plan, dtype, redop)
        self.last_plan = plan          # what ran last (collx-bench's algo column)
        t = self.timeout if timeout is None else timeout
        # Average = Sum on the wire; the executor divides OUT by the divisor at the end on
        # every rank that holds a result (also ranks whose own steps reduced nothing).
        try:
            self.ccomm.execute(plan.capsule, inbuf, outbuf, dtype, redop,
                               self.size if redop == _C.AVERAGE else 1, fp, t)
        except CollxError as exc:
            where = "" if self.peers is None else f" on the process set of world ranks " \
                f"{list(self.peers)}"
            raise _annotated(exc, plan, dtype, redop, where) from None

    def close(self) -> None:
        if self.ccomm is not None and self.owns_ccomm:
            self.ccomm.close()
        if self.store is not None:
            try:
                self.store.close()
            except Exception:  # noqa: BLE001 - closing a store that is already gone
                pass
