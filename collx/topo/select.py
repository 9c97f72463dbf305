"""Algorithm selection: which registered schedule runs a collective, and why.

Pipeline of ``Selector.choose`` (one decision per (op, bytes, world size, root, in-place)):

  1. capability filter: every algorithm of ``collx.algos.registry.ALGORITHMS[op]`` is built
     for the case; a builder raising ValueError refuses it (``pair`` serves 2 ranks only,
     ...), and ``pairwise_direct`` refuses in-place calls (its IN and OUT must not alias).
  2. cost model: ``collx.algos.costmodel.predict`` prices every remaining schedule on the
     topology: link class "shm" between ranks of one host and "tcp" across hosts
     (``Topology.link_class``), the host map for the contention terms, CPUs per host.
  3. tune table (COLLX_TUNE_FILE, written by ``collx-bench --tune``): where it holds
     measurements of at least two algorithms for the same (op, np, hosts) at a size within a
     factor 2 of this one, the measured fastest (at the nearest such size) replaces the
     model's choice: a measurement on this machine beats a model of it.
  4. user override (COLLX_ALGO, ``parse_algo_spec``): a forced name wins; a forced name the
     capability filter refused falls back to what steps 1-3 chose, and the refusal is logged
     (WARNING) and stated in the decision's reason. Selection never fails for a valid op.

Near-ties. When other candidates are predicted within ``TIE`` (2 %) of the fastest, the
simpler one is preferred: the registry's ``DEFAULT[op]``, then ``ring``, then ``binomial``.
A 2 % difference is far below what the model can resolve (its alpha/beta are fitted, and
run-to-run noise on a shared machine is 10-50 %, perf/RESULTS.md), and the measured tables
there show schedules the model puts that close indistinguishable in practice; the default
is the best tested and the one whose behaviour users already know.

Dedicated summation servers (``servers`` > 0; only ``star`` uses them): participants
n .. n + servers - 1 of a schedule. Each server is its own host (link class "tcp" to every
worker), unless the Selector is given ``world_size`` = n and a topology of n + servers ranks,
in which case the topology's host of each server is used (a server beside workers on one
host then talks "shm" to them).

Every decision is computed once, cached, and logged once on ``logging.getLogger("collx.topo")``
at DEBUG with its reason; ``configure_logging`` sets that logger's level from COLLX_LOG.
Decisions are deterministic functions of (topology, links, spec, tune table, case): every
rank given the same inputs chooses the same algorithm, which the collective needs.

This module imports collx.algos, collx.config, collx.errors and the topology model only.
"""
from __future__ import annotations

import json
import logging
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from .. import config
from ..algos.costmodel import LinkParams, predict
from ..algos.registry import ALGORITHMS, DEFAULT, OPS, build_schedule, even_split
from ..errors import InvalidUsage
from .topology import Topology

__all__ = ["AlgoSpec", "SpecEntry", "parse_algo_spec", "Decision", "Selector", "TuneTable",
           "load_tune", "default_links", "configure_logging", "format_bytes", "format_time",
           "TIE", "EXPLAIN_OPS", "bucket_bytes", "EXPLAIN_SIZES", "LOG", "case_bytes", "tune_from_text"]

LOG = logging.getLogger("collx.topo")

MAX_DECISIONS = 4096        # cached decisions per Selector (oldest dropped beyond)
TIE = 0.02                  # candidates within 2 % of the fastest count as tied
BUCKET_EXACT_BYTES = 4096   # cases up to this size are decided per exact size (cheap)
EXPLAIN_OPS = ("allreduce", "broadcast", "allgather", "reducescatter")
EXPLAIN_SIZES = (8, 1 << 10, 64 << 10, 1 << 20, 16 << 20, 256 << 20)

_ROOTED = ("broadcast", "reduce", "gather", "scatter")
_BY_COUNT = ("allreduce", "broadcast", "reduce")
_BY_COUNTS = ("allgather", "reducescatter", "gather", "scatter")
# (op, algorithm) that cannot run in place: IN and OUT must be different buffers
_OUT_OF_PLACE_ONLY = {("alltoall", "pairwise_direct")}


# ---------------------------------------------------------------------------------------
# defaults and formatting

def default_links() -> dict[str, LinkParams]:
    """Built-in link parameters, used when no probe ran (COLLX_PROBE=0, or ``collx info``
    outside a job). Round numbers of the right order, not measurements:

      shm: alpha 1 us, beta 8 GB/s (one-core memcpy ~7.5 GB/s here, DESIGN.md)
      tcp: alpha 20 us, beta 1 GB/s (a 10 Gbit NIC or loopback through the kernel)
      both: gamma 2e-11 s/B (reducing float32 at ~50 GB/s with SIMD kernels, cache-hot)
    """
    return {"shm": LinkParams(alpha_s=1e-6, beta_Bps=8e9, gamma_s_per_B=2e-11),
            "tcp": LinkParams(alpha_s=20e-6, beta_Bps=1e9, gamma_s_per_B=2e-11)}


_UNITS = (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))


def format_bytes(n: int) -> str:
    """8 -> '8 B', 65536 -> '64 KiB', 1536 -> '1.5 KiB'."""
    for unit, scale in _UNITS:
        if n >= scale:
            v = n / scale
            return f"{v:.0f} {unit}iB" if v == int(v) else f"{v:.3g} {unit}iB"
    return f"{n} B"


def format_time(s: float) -> str:
    """Seconds as '850 ns', '1.2 us', '3.40 ms', '1.25 s' (ASCII)."""
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    for unit, scale in (("us", 1e-6), ("ms", 1e-3)):
        if s < scale * 1000:
            v = s / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{s:.3g} s"


# ---------------------------------------------------------------------------------------
# COLLX_ALGO

_RANGE = re.compile(r"^\s*([0-9]*\.?[0-9]*)\s*([kmgKMG]?)(?:i?[bB])?\s*$")
_SCALE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class SpecEntry:
    """Force ``name`` for ``op`` on sizes [lo, hi) bytes (hi None: no upper end)."""
    op: str
    name: str
    lo: int = 0
    hi: Optional[int] = None

    def covers(self, nbytes: int) -> bool:
        return self.lo <= nbytes and (self.hi is None or nbytes < self.hi)

    def describe(self) -> str:
        if self.lo == 0 and self.hi is None:
            return f"{self.op}:{self.name}"
        hi = "" if self.hi is None else format_bytes(self.hi)
        return f"{self.op}:{self.name}:{format_bytes(self.lo)}-{hi}"


@dataclass(frozen=True)
class AlgoSpec:
    """Parsed COLLX_ALGO: entries in the order given; later entries win where they overlap."""
    entries: tuple[SpecEntry, ...] = ()
    text: str = ""

    def forced(self, op: str, nbytes: int) -> Optional[str]:
        """The algorithm forced for ``op`` at ``nbytes`` bytes, or None."""
        for e in reversed(self.entries):
            if e.op == op and e.covers(nbytes):
                return e.name
        return None

    def entry_for(self, op: str, nbytes: int) -> Optional[SpecEntry]:
        for e in reversed(self.entries):
            if e.op == op and e.covers(nbytes):
                return e
        return None

    def ops(self) -> set[str]:
        return {e.op for e in self.entries}

    def __bool__(self) -> bool:
        return bool(self.entries)


def _known() -> str:
    return "; ".join(f"{op}: {', '.join(sorted(names))}" for op, names in ALGORITHMS.items())


def _parse_size(text: str, bad) -> int:
    m = _RANGE.match(text)
    if not m or m.group(1) in ("", "."):
        raise bad(f"size {text.strip()!r} is not a byte count (digits with an optional "
                  "K, M or G suffix, powers of 1024)")
    value = float(m.group(1)) * _SCALE[m.group(2).lower()]
    if value != int(value):
        raise bad(f"size {text.strip()!r} is not a whole number of bytes")
    return int(value)


def _parse_range(text: str, bad) -> tuple[int, Optional[int]]:
    lo_text, sep, hi_text = text.partition("-")
    if not sep:
        raise bad(f"range {text!r} needs the form lo-hi (e.g. 0-64K, 4M-; half-open "
                  "[lo, hi) in bytes, empty hi = no upper end)")
    lo = _parse_size(lo_text, bad) if lo_text.strip() else 0
    hi = _parse_size(hi_text, bad) if hi_text.strip() else None
    if hi is not None and hi <= lo:
        raise bad(f"range {text!r} is empty (hi must be above lo)")
    return lo, hi


def parse_algo_spec(text: Optional[str]) -> AlgoSpec:
    """COLLX_ALGO -> AlgoSpec. Comma-separated entries:

      ``name``              every op that registers ``name`` (all sizes)
      ``op:name``           ``op`` (all sizes)
      ``op:name:lo-hi``     ``op`` on sizes [lo, hi) bytes; K/M/G suffixes (1024-based),
                            empty lo = 0, empty hi = no upper end
      ``name:lo-hi``        continues the previous entry's op:
                            ``allreduce:tree:0-64K,hd:64K-4M,ring:4M-``

    Later entries win where they overlap (``allreduce:ring,allreduce:tree:0-64K``: tree
    below 64 KiB, ring above). Names are checked against the registry as it is now; a bad
    entry is InvalidUsage naming COLLX_ALGO, the entry and what is known."""
    entries: list[SpecEntry] = []
    if not text or not text.strip():
        return AlgoSpec((), text or "")
    known = _known()
    prev_op: Optional[str] = None
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue

        def bad(why: str, entry: str = entry) -> InvalidUsage:
            return InvalidUsage(f"COLLX_ALGO={text!r}: entry {entry!r}: {why}; known: {known}")

        parts = [p.strip() for p in entry.split(":")]
        if len(parts) > 3:
            raise bad("too many ':' (op:name:range at most)")
        if len(parts) == 1:                              # bare name: every op having it
            name = parts[0]
            ops = [o for o, names in ALGORITHMS.items() if name in names]
            if not ops:
                raise bad("is no algorithm of any op")
            entries.extend(SpecEntry(o, name) for o in ops)
            prev_op = None                               # nothing single to continue
            continue
        if parts[0] in ALGORITHMS or len(parts) == 3:    # op:name[:range]
            op, name = parts[0], parts[1]
            if op not in ALGORITHMS:
                raise bad(f"names unknown op {op!r} (ops: {', '.join(OPS)})")
            rng = parts[2] if len(parts) == 3 else None
        else:                                            # name:range, previous entry's op
            name, rng = parts
            if not any(name in names for names in ALGORITHMS.values()):
                raise bad(f"names unknown op {name!r} (ops: {', '.join(OPS)}), and it is no "
                          "algorithm name either")
            if prev_op is None:
                raise bad(f"'{name}:{rng}' continues the previous entry's op, but there is no "
                          "previous 'op:name' entry (write op:name:range)")
            op = prev_op
        if not name:
            raise bad(f"names no algorithm for {op}")
        if name not in ALGORITHMS[op]:
            raise bad(f"{op} has no algorithm {name!r}")
        lo, hi = _parse_range(rng, bad) if rng is not None else (0, None)
        entries.append(SpecEntry(op, name, lo, hi))
        prev_op = op
    return AlgoSpec(tuple(entries), text)


# ---------------------------------------------------------------------------------------
# tune table

@dataclass(frozen=True)
class TuneEntry:
    op: str
    np: int
    hosts: int
    nbytes: int
    algo: str
    us: float


@dataclass
class TuneTable:
    """Measured times: ``entries`` as in the JSON file, ``path`` where it came from."""
    entries: list[TuneEntry] = field(default_factory=list)
    path: str = "<memory>"

    def measured(self, op: str, np: int, hosts: int, nbytes: int
                 ) -> Optional[tuple[int, dict[str, float]]]:
        """(measured size, {algo: best us}) at the measured size nearest to ``nbytes``
        within a factor 2 (nbytes 0: size 0 only) among the entries of (op, np, hosts),
        or None."""
        sizes = {e.nbytes for e in self.entries
                 if e.op == op and e.np == np and e.hosts == hosts
                 and nbytes / 2 <= e.nbytes <= nbytes * 2}
        if not sizes:
            return None
        target = math.log(max(nbytes, 1))
        size = min(sizes, key=lambda s: (abs(math.log(max(s, 1)) - target), s))
        times: dict[str, float] = {}
        for e in self.entries:
            if e.op == op and e.np == np and e.hosts == hosts and e.nbytes == size:
                times[e.algo] = min(e.us, times.get(e.algo, math.inf))
        return size, times


def load_tune(path: str) -> TuneTable:
    """Read a tune table: ``{"version": 1, "entries": [{"op", "np", "hosts", "nbytes",
    "algo", "us"}, ...]}`` (one entry per measured (op, np, hosts, nbytes, algo); repeated
    entries keep the fastest). InvalidUsage naming the file when it is unreadable or
    malformed."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise InvalidUsage(f"tune table {path} (COLLX_TUNE_FILE): cannot read it: "
                           f"{exc}") from exc
    return tune_from_text(text, path)


def tune_from_text(text: str, path: str = "<memory>") -> TuneTable:
    """``load_tune`` of a file's contents (a job's rank 0 reads the file and shares it, so
    that every rank selects from the same table even without a shared filesystem)."""
    def bad(why: str) -> InvalidUsage:
        return InvalidUsage(f"tune table {path} (COLLX_TUNE_FILE): {why}")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise bad(f"not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != 1:
        raise bad("expected an object with \"version\": 1 and \"entries\"")
    rows = data.get("entries")
    if not isinstance(rows, list):
        raise bad("\"entries\" must be a list")
    out = []
    for i, row in enumerate(rows):
        try:
            e = TuneEntry(str(row["op"]), int(row["np"]), int(row["hosts"]),
                          int(row["nbytes"]), str(row["algo"]), float(row["us"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"entry {i} ({row!r}) needs op, np, hosts, nbytes, algo, us: "
                      f"{exc!r}") from None
        if e.op not in ALGORITHMS or e.algo not in ALGORITHMS[e.op]:
            continue        # an algorithm this collx no longer has: ignore the row
        out.append(e)
    return TuneTable(out, path)


# ---------------------------------------------------------------------------------------
# decisions

@dataclass(frozen=True)
class Decision:
    """One selection. ``candidates``: algorithm -> predicted seconds, or the refusal
    (a string) for algorithms that cannot serve this case. ``source``: "model", "tuned",
    "forced" or "fallback"."""
    op: str
    nbytes: int
    algo: str
    predicted_s: float
    reason: str
    candidates: dict[str, Union[float, str]]
    source: str = "model"

    def ranked(self) -> list[tuple[str, float]]:
        """Predicted candidates, fastest first."""
        return sorted(((k, v) for k, v in self.candidates.items() if isinstance(v, float)),
                      key=lambda kv: (kv[1], kv[0]))

    def runner_up(self) -> Optional[tuple[str, float]]:
        for name, t in self.ranked():
            if name != self.algo:
                return name, t
        return None


def configure_logging() -> logging.Logger:
    """Set the "collx.topo" logger's level from COLLX_LOG (debug | info | warning). When
    nothing in the logging tree has a handler yet, attach one to stderr so that
    COLLX_LOG=debug shows the decisions without any logging setup in the program."""
    text = (config.get("COLLX_LOG") or "warning").strip().lower()
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
    if text not in levels:
        raise InvalidUsage(f"COLLX_LOG={text!r}: expected one of debug, info, warning")
    LOG.setLevel(levels[text])
    if not LOG.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("collx.topo %(levelname)s: %(message)s"))
        LOG.addHandler(handler)
    return LOG


def _cores(topology: Topology) -> Optional[int]:
    """CPUs per host the cost model's CPU term uses: the fewest any host's ranks may run on
    together (union of their affinities, else the host's online CPUs); None if unknown."""
    per = []
    for h, host in enumerate(topology.hosts):
        cpus = topology.usable_cpus(h) or host.cpus
        if any(info.host == h for info in topology.ranks) and cpus:
            per.append(len(cpus))
    return min(per) if per else None


class Selector:
    """Chooses algorithms for one job (module docstring).

    ``topology``: the job's Topology (its first ``world_size`` ranks are the workers;
    ``world_size`` None: all of them). ``links``: LinkParams per link class ("shm", and
    "tcp" when there are several hosts or servers), e.g. the probe's or ``default_links()``.
    ``servers``: dedicated summation servers of the job. ``spec``: an AlgoSpec or COLLX_ALGO
    text (None: no override). ``tune``: a TuneTable, a path, or None. ``chunk_bytes``: the
    pipelining chunk (COLLX_CHUNK_BYTES). ``cores``: CPUs per host for the cost model
    (None: from the topology; 0: not modelled)."""

    def __init__(self, topology: Topology, links: Mapping[str, LinkParams], *,
                 servers: int = 0, spec: Union[AlgoSpec, str, None] = None,
                 tune: Union[TuneTable, str, None] = None, chunk_bytes: int = 1 << 20,
                 cores: Optional[int] = None, world_size: Optional[int] = None):
        if isinstance(servers, bool) or not isinstance(servers, int) or servers < 0:
            raise InvalidUsage(f"Selector: servers={servers!r} must be a non-negative int")
        n = topology.size if world_size is None else int(world_size)
        if not 1 <= n <= topology.size:
            raise InvalidUsage(f"Selector: world_size={world_size!r} but the topology has "
                               f"{topology.size} ranks")
        self.topology, self.n, self.servers = topology, n, servers
        self.links = dict(links)
        self.spec = spec if isinstance(spec, AlgoSpec) else parse_algo_spec(spec)
        self.tune = load_tune(tune) if isinstance(tune, str) else tune
        self.chunk_bytes = max(1, int(chunk_bytes))
        self.cores = _cores(topology) if cores is None else (cores or None)
        self.groups = [g for g in topology.host_groups() if g[0] < n]
        self.groups = [[r for r in g if r < n] for g in self.groups]
        self.hosts_count = len(self.groups)
        hosts = [topology.ranks[r].host for r in range(n)]
        if servers and topology.size == n + servers:
            hosts += [topology.ranks[n + k].host for k in range(servers)]
        else:
            hosts += [topology.hosts_count + k for k in range(servers)]
        self.host_map = hosts
        needed = {"shm"} | ({"tcp"} if len(set(hosts)) > 1 else set())
        missing = sorted(needed - set(self.links))
        if missing:
            raise InvalidUsage(f"Selector: no LinkParams for link class(es) "
                               f"{', '.join(missing)} (given: {', '.join(sorted(self.links))})")
        self._cache: dict[tuple, Decision] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Drop every cached decision (the tune table changed)."""
        with self._lock:
            self._cache.clear()

    # ---- the cost model's view of the job

    def link_class(self, a: int, b: int) -> str:
        if a < self.n and b < self.n:
            return self.topology.link_class(a, b)
        return "shm" if self.host_map[a] == self.host_map[b] else "tcp"

    def _build(self, op: str, name: str, count: int, counts, send_counts, root: int,
               itemsize: int):
        return build_schedule(op, self.n, count=count, counts=counts,
                              send_counts=send_counts, root=root,
                              chunk_count=max(1, self.chunk_bytes // max(1, itemsize)),
                              algo=name, groups=self.groups, servers=self.servers)

    def predict(self, op: str, name: str, *, itemsize: int, count: int = 0, counts=None,
                send_counts=None, root: int = 0) -> float:
        """The cost model's time for algorithm ``name`` (ValueError if it refuses)."""
        s = self._build(op, name, count, counts, send_counts, root, itemsize)
        return predict(s, itemsize, self.link_class, self.links, hosts=self.host_map,
                       cores=self.cores)

    # ---- choosing

    def choose(self, op: str, *, itemsize: int, count: int = 0,
               counts: Optional[Sequence[int]] = None,
               send_counts: Optional[Sequence[Sequence[int]]] = None, root: int = 0,
               in_place: bool = False) -> Decision:
        """The algorithm for ``op`` on this case (sizes in elements of ``itemsize`` bytes,
        as ``build_schedule`` takes them).

        Evenly split cases are decided once per size bucket (``bucket_bytes``: exact up to
        BUCKET_EXACT_BYTES, then four buckets per octave) and priced at the bucket's upper
        bound: a decision builds and prices every candidate schedule (5-100 ms for large
        buffers on 8-16 ranks), and the engine's fusion buffers take a new size nearly every
        cycle. Uneven counts are decided per exact case. Cached per (op, bucket, item size,
        n, root, in_place): the item size changes the schedules priced, and two ranks must
        never answer the same case differently because they asked in another order.
        COLLX_ALGO is applied afterwards on the exact size (its ranges are the user's).
        Thread-safe (the engine's worker and the user's thread both ask)."""
        if op not in ALGORITHMS:
            raise InvalidUsage(f"Selector.choose: unknown op {op!r}; ops are {', '.join(OPS)}")
        nbytes, shape = case_bytes(op, self.n, itemsize, count, counts, send_counts)
        root = root if op in _ROOTED else 0
        priced = nbytes
        if shape is None and (op in _BY_COUNT or (op in _BY_COUNTS and counts is not None)):
            priced = bucket_bytes(nbytes, itemsize)
            if priced != nbytes:
                elems = priced // itemsize
                if op in _BY_COUNT:
                    count = elems
                else:
                    counts = even_split(elems, self.n)
        key = (op, priced, itemsize, self.n, root, bool(in_place), shape)
        d = self._cache.get(key)
        if d is None:
            d = self._decide(op, priced, itemsize, count, counts, send_counts, root,
                             bool(in_place))
            with self._lock:
                self._cache[key] = d
                while len(self._cache) > MAX_DECISIONS:     # drop the oldest decision
                    self._cache.pop(next(iter(self._cache)), None)
            LOG.debug("%s %s np=%d root=%d%s: %s (%s)", op, format_bytes(priced), self.n,
                      root, " in-place" if in_place else "", d.algo, d.reason)
        return self._apply_spec(d, op, nbytes)

    def _apply_spec(self, d: Decision, op: str, nbytes: int) -> Decision:
        """The cached decision, unless COLLX_ALGO forces a name for this exact size."""
        entry = self.spec.entry_for(op, nbytes) if self.spec else None
        if entry is None:
            return d
        forced, ok = entry.name, {k: v for k, v in d.candidates.items() if isinstance(v, float)}
        if forced in ok:
            return Decision(op, nbytes, forced, ok[forced],
                            f"forced by COLLX_ALGO ({entry.describe()})", d.candidates,
                            "forced")
        why = d.candidates.get(forced, "not registered")
        LOG.warning("collx.%s %s np=%d: COLLX_ALGO forces %s, which refuses this case (%s); "
                    "using %s", op, format_bytes(nbytes), self.n, forced, why, d.algo)
        return Decision(op, nbytes, d.algo, d.predicted_s,
                        f"fallback: forced {forced} refused: {why}; {d.reason}", d.candidates,
                        "fallback")

    def _decide(self, op, nbytes, itemsize, count, counts, send_counts, root, in_place
                ) -> Decision:
        cands: dict[str, Union[float, str]] = {}
        for name in ALGORITHMS[op]:
            if in_place and (op, name) in _OUT_OF_PLACE_ONLY:
                cands[name] = "out of place only (IN and OUT must not alias)"
                continue
            try:
                cands[name] = float(self.predict(op, name, itemsize=itemsize, count=count,
                                                 counts=counts, send_counts=send_counts,
                                                 root=root))
            except ValueError as exc:         # InvalidUsage is a ValueError too
                cands[name] = str(exc)
        ok = {k: v for k, v in cands.items() if isinstance(v, float)}
        if not ok:                             # cannot happen for a registered op's default
            raise InvalidUsage(f"collx.{op}: no algorithm serves {format_bytes(nbytes)} on "
                               f"{self.n} ranks: " + "; ".join(f"{k}: {v}"
                                                               for k, v in cands.items()))
        algo, reason, source = self._model_choice(op, ok)
        tuned = self._tuned_choice(op, nbytes, ok)
        if tuned is not None:
            algo, reason, source = tuned
        return Decision(op, nbytes, algo, ok[algo], reason, cands, source)

    def _model_choice(self, op: str, ok: Mapping[str, float]) -> tuple[str, str, str]:
        ranked = sorted(ok.items(), key=lambda kv: (kv[1], kv[0]))
        best_name, best = ranked[0]
        tied = [k for k, v in ranked if v <= best * (1 + TIE)]
        chosen = best_name
        note = ""
        if len(tied) > 1:
            for pref in _preference(op):
                if pref in tied:
                    chosen = pref
                    break
            if chosen != best_name:
                note = (f" (within {TIE:.0%} of {best_name}: {chosen} preferred, "
                        f"{'the default' if chosen == DEFAULT[op] else 'the simpler'})")
        order = [(chosen, ok[chosen])] + [kv for kv in ranked if kv[0] != chosen]
        shown = " < ".join(f"{k} {format_time(v)}" for k, v in order[:4])
        more = f" (+{len(order) - 4} more)" if len(order) > 4 else ""
        return chosen, f"cost model: {shown}{more}{note}", "model"

    def _tuned_choice(self, op: str, nbytes: int, ok: Mapping[str, float]
                      ) -> Optional[tuple[str, str, str]]:
        if self.tune is None:
            return None
        found = self.tune.measured(op, self.n, self.hosts_count, nbytes)
        if found is None:
            return None
        size, times = found
        usable = sorted(((us, a) for a, us in times.items() if a in ok))
        if len(usable) < 2:        # one measured algorithm is no comparison
            return None
        (us, algo), (us2, algo2) = usable[0], usable[1]
        return (algo, f"tuned: measured fastest at {format_bytes(size)} ({algo} {us:.3g} us "
                      f"< {algo2} {us2:.3g} us; table {self.tune.path})", "tuned")

    # ---- explaining

    def explain(self, ops: Sequence[str] = EXPLAIN_OPS,
                sizes: Sequence[int] = EXPLAIN_SIZES, itemsize: int = 4) -> str:
        """A table per op: size | algorithm | predicted | runner-up | why, for float32-sized
        elements (``itemsize``), evenly split counts, root 0, out of place."""
        lines = []
        for op in ops:
            lines.append(f"{op} (np={self.n}, {self.hosts_count} host"
                         f"{'s' if self.hosts_count != 1 else ''}"
                         f"{f', {self.servers} servers' if self.servers else ''}):")
            rows = [("size", "algorithm", "predicted", "runner-up", "why")]
            for size in sizes:
                d = self.choose(op, itemsize=itemsize, **_even_case(op, self.n, size, itemsize))
                ru = d.runner_up()
                rows.append((format_bytes(size), d.algo, format_time(d.predicted_s),
                             f"{ru[0]} {format_time(ru[1])}" if ru else "-", d.source))
            widths = [max(len(r[i]) for r in rows) for i in range(5)]
            for r in rows:
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        return "\n".join(lines)


def bucket_bytes(nbytes: int, itemsize: int = 1) -> int:
    """The size bucket a case of ``nbytes`` is decided in: ``nbytes`` itself up to
    BUCKET_EXACT_BYTES, else the smallest ``m << e`` (m in 4..7) at or above it, rounded up
    to whole items: four buckets per octave, each at most 25% wider than its lower end, so
    that one decision serves every size within it."""
    if nbytes <= BUCKET_EXACT_BYTES:
        return nbytes
    e = max(0, nbytes.bit_length() - 3)
    m = -(-nbytes // (1 << e))               # 4..8
    b = m << e
    return -(-b // itemsize) * itemsize


def _preference(op: str) -> list[str]:
    out = [DEFAULT[op], "ring", "binomial"]
    return [a for i, a in enumerate(out) if a not in out[:i]]


def _even_case(op: str, n: int, nbytes: int, itemsize: int) -> dict[str, Any]:
    """Arguments of ``choose`` for a total of ``nbytes`` split evenly (as collx-bench)."""
    elems = nbytes // itemsize
    if op in _BY_COUNT:
        return {"count": elems}
    if op in _BY_COUNTS:
        return {"counts": even_split(elems, n)}
    if op == "alltoall":
        per = even_split(elems, n)
        return {"send_counts": [per for _ in range(n)]}
    return {}


def case_bytes(op: str, n: int, itemsize: int, count: int, counts, send_counts
               ) -> tuple[int, Any]:
    """(bytes of the case, what else distinguishes it). Bytes: the buffer every rank holds
    (allreduce/broadcast/reduce), the whole gathered/scattered buffer (allgather,
    reducescatter, gather, scatter), a rank's average send buffer (alltoall)."""
    if op in _BY_COUNT:
        return int(count) * itemsize, None
    if op in _BY_COUNTS:
        if counts is None:
            return 0, None       # build_schedule refuses it with the usual message
        counts = [int(c) for c in counts]
        total = sum(counts)
        even = counts == even_split(total, len(counts)) if counts else True
        return total * itemsize, None if even else tuple(counts)
    if op == "alltoall":
        if send_counts is None:
            return 0, None
        rows = tuple(tuple(int(c) for c in row) for row in send_counts)
        total = sum(map(sum, rows))
        return total * itemsize // max(1, n), rows
    return 0, None
