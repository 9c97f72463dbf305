"""Online link probe: latency (alpha) and bandwidth (beta) per link class, measured at init.

Every rank calls ``probe_links`` collectively, in the same order, right after the mesh is
connected (before any user collective). In order:

1. Decide (one broadcast from rank 0). Rank 0 looks for a cache entry named by a fingerprint
   of the topology (hosts' ids and NIC speeds, CPUs, rank -> host map, size, COLLX_TRANSPORT
   and COLLX_SPIN); a fresh one (< 7 days) is broadcast to everybody and used as is
   (source "cache"). Only rank 0 reads the file, so all ranks take the same decision even
   when hosts have different disks.
2. Measure (cache miss). For each link class present ("shm": two ranks of one host, "tcp":
   two hosts) ONE representative pair, the lexicographically lowest (a, b) of that class,
   runs small schedules made of collx.algos.ir Steps; rank a times them:
     sync        one untimed 8-byte round trip (absorbs a peer still busy elsewhere)
     warm-up     a 32 KiB transfer + 8-byte ack: a rough bandwidth, used only to choose the
                 transfer size and count so that the class stays within its budget
     pings       8-byte round trips (at least 5, at most 64, about a quarter of the class
                 budget); each ping tells b whether more follow, the last one carries
                 rank a's transfer plan (size and count, chosen from the warm-up and the
                 round trips), so that b runs exactly the same sequence;
                 alpha = round trip / 2
     transfers   ``reps`` one-way transfers of N bytes (16 KiB .. 1 MiB, a power of two),
                 each acknowledged by 8 bytes: t = 2 alpha + N / beta, so
                 beta = N / (t - round trip)
   where round trip and t are the 20th percentiles of their samples (low_quantile: the
   machine is shared, and the cache keeps the numbers for days; medians are kept in raw).
   Pairs of different classes are measured one after the other by a rank in both; disjoint
   pairs run at the same time. Rank 0 meanwhile times collx._C's reduction kernel
   (float32 sum, 256 KiB, best of a few short batches): gamma, seconds per reduced byte.
3. Share (one allgather of fixed-size float64 records): every rank decodes alpha, beta and
   the raw numbers of each class from the record of the pair's rank a, and gamma from rank
   0's, so that all ranks hold bit-identical LinkParams. Rank 0 writes the cache entry.

Timings are what a collective pays: they include the Python call into the executor. The
probe's plans carry fixed fingerprints (crc32 of "collx.probe.v1/...") that no user
collective's plan produces, so a probe message can never be taken for a user's.

COLLX_PROBE=0 (or a one-rank job) skips all of it: ``default_links()``, source "defaults".
Classes absent from the topology keep their default values in ``links`` (so lookups never
fail); ``raw`` holds exactly the measured classes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .. import _C, config
from ..algos import ir
from ..algos.costmodel import LinkParams
from ..algos.ir import Buf, Schedule
from ..algos.pack import pack_rank
from ..algos.registry import build_schedule
from ..errors import InvalidUsage, MismatchError
from .topology import Topology

__all__ = ["ProbeResult", "probe_links", "default_links", "representative_pairs",
           "topology_key", "topology_fingerprint", "cache_dir", "cache_path", "read_cache",
           "write_cache", "measure_gamma", "alpha_from_round_trips", "beta_from_transfers",
           "choose_transfer", "low_quantile", "CLASSES", "MAX_AGE_S"]

PROBE_VERSION = 2
CLASSES = ("shm", "tcp")                # record slot order; every class the topology names
MAX_AGE_S = 7 * 86400.0                 # cache entries older than this are ignored
RESERVE_S = 0.03                        # of the budget: decide, gamma, share, plans

PING_BYTES = 8
WARMUP_BYTES = 32 << 10
MIN_XFER = 16 << 10
MAX_XFER = 1 << 20
MAX_REPS = 8
MIN_PINGS, MAX_PINGS = 5, 64
PING_SHARE = 0.25                       # of a class's budget spent on round trips at most
LOW_Q = 0.2                             # alpha and beta from this quantile of the samples

# raw numbers per class, in record order (the sharing step's float64 layout)
FIELDS = ("alpha_s", "beta_Bps", "rtt_min_s", "rtt_med_s", "pings", "nbytes", "reps",
          "t_xfer_med_s", "t_xfer_min_s", "seconds")
_INT_FIELDS = ("pings", "nbytes", "reps")
REC_LEN = 2 + len(CLASSES) * len(FIELDS)    # [valid flag, gamma, class slots...]


def _fp(name: str) -> int:
    return zlib.crc32(f"collx.probe.v{PROBE_VERSION}/{name}".encode())


FP_DECIDE = _fp("decide")
FP_SHARE = _fp("share")
FP_PING = _fp("ping")


def default_links() -> dict[str, LinkParams]:
    """Built-in LinkParams per class, used with COLLX_PROBE=0 and for classes the job does
    not have. Round, somewhat conservative values: shm 5 us / 4 GB/s (this probe measures
    2-3 us and ~8 GB/s at 1 MiB on an idle x86 server, Python entry included), tcp 30 us /
    1.1 GB/s (a 10 Gbit/s LAN; loopback is much faster); gamma 20 ps per reduced byte
    (float32 sum, AVX-512/AVX2, cache-resident: 15-20 ps measured).
    collx/topo/select.py must use the same values (import them from here)."""
    gamma = 2e-11
    return {"shm": LinkParams(5e-6, 4e9, gamma), "tcp": LinkParams(30e-6, 1.1e9, gamma)}


# ---------------------------------------------------------------------------------------
# Result


@dataclass
class ProbeResult:
    """``links``: class -> LinkParams (every class of CLASSES); ``source``: "probed",
    "cache" or "defaults"; ``seconds``: this rank's wall time in probe_links; ``raw``:
    class -> the measured numbers (FIELDS plus "pair"), only measured classes;
    ``gamma_s_per_B``: the reduction cost in every class's LinkParams; ``fingerprint``:
    the topology's cache key (empty for defaults)."""
    links: dict[str, LinkParams]
    source: str
    seconds: float = 0.0
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)
    gamma_s_per_B: float = 0.0
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "seconds": self.seconds, "fingerprint": self.fingerprint,
                "gamma_s_per_B": self.gamma_s_per_B,
                "links": {c: {"alpha_s": p.alpha_s, "beta_Bps": p.beta_Bps,
                              "gamma_s_per_B": p.gamma_s_per_B, "shared_Bps": p.shared_Bps,
                              "overhead_s": p.overhead_s, "rdv_s": p.rdv_s,
                              "eager_bytes": p.eager_bytes}
                          for c, p in self.links.items()},
                "raw": self.raw}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def describe(self) -> str:
        parts = [f"{c} alpha {p.alpha_s * 1e6:.2f} us beta {p.beta_Bps / 1e9:.3f} GB/s"
                 for c, p in self.links.items() if c in self.raw or self.source == "defaults"]
        return (f"link probe ({self.source}, {self.seconds * 1e3:.1f} ms): " + "; ".join(parts)
                + f"; gamma {self.gamma_s_per_B * 1e12:.1f} ps/B")


def _defaults(seconds: float = 0.0) -> ProbeResult:
    links = default_links()
    return ProbeResult(links=links, source="defaults", seconds=seconds,
                       gamma_s_per_B=next(iter(links.values())).gamma_s_per_B)


# ---------------------------------------------------------------------------------------
# Pure math and choices (unit-tested)


def low_quantile(values: list[float], q: float = LOW_Q) -> float:
    """The ``q`` quantile taken from below (sorted[int(q * n)]): with 5 samples the second
    best, with one the only one. On a shared machine the best samples are the ones least
    disturbed by other processes, and the cached numbers should describe the machine, not
    the load of the minute they were taken; one outlier on the fast side is skipped."""
    if not values:
        raise ValueError("no samples")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def alpha_from_round_trips(rtts: list[float]) -> float:
    """One message's latency: half the fastest 8-byte round trip. A round trip cannot be
    faster than the link allows, while a slow one only says the pair was descheduled (with
    more ranks than cores, a quantile cached a 20x pessimistic alpha here)."""
    return min(rtts) / 2.0 if rtts else 0.0


def beta_from_transfers(nbytes: int, times: list[float], rtt: float) -> float:
    """Bytes per second of an N-byte transfer timed with its 8-byte ack: the low-quantile
    time less one small round trip ``rtt`` (the two latencies). When that leaves under a
    tenth of the time (latency-bound: N too small for this link, or a noisy rtt), the whole
    time counts instead, which underestimates beta rather than inventing a huge one."""
    if nbytes <= 0:
        raise ValueError("no bytes")
    t = low_quantile(times)
    wire = t - rtt
    if wire < 0.1 * t:
        wire = t
    return nbytes / max(wire, 1e-9)


def choose_transfer(est_Bps: float, budget_s: float, latency_s: float = 0.0) -> tuple[int, int]:
    """(N bytes, reps) for the bandwidth transfers, each costing about ``latency_s`` (a
    round trip: the message's latency and its ack's) + N / ``est_Bps``: N a power of two in
    MIN_XFER..MAX_XFER whose transfer takes about budget/5, reps (1..MAX_REPS) as many as
    the budget holds (the estimate comes from one small cold transfer, so it errs on the
    slow side)."""
    est = max(float(est_Bps), 1.0)
    budget = max(float(budget_s), 0.0)
    lat = max(float(latency_s), 0.0)
    want = est * (budget / 5.0 - lat)
    n = MIN_XFER
    while n * 2 <= min(want, MAX_XFER):
        n *= 2
    reps = int(budget / (lat + n / est)) if budget > 0 else 1
    return n, max(1, min(MAX_REPS, reps))


def encode_plan(nbytes: int, reps: int, more: bool) -> int:
    """The 8-byte ping payload: rank a's transfer plan and whether more pings follow."""
    return (int(nbytes) << 8) | (int(reps) << 1) | int(bool(more))


def decode_plan(code: int) -> tuple[int, int, bool]:
    return int(code) >> 8, (int(code) >> 1) & 0x7F, bool(code & 1)


def representative_pairs(topology: Topology) -> dict[str, tuple[int, int]]:
    """Per link class present, the lexicographically lowest rank pair (a < b) of that class:
    "shm" two ranks of one host, "tcp" two hosts. Classes without a pair are absent."""
    pairs: dict[str, tuple[int, int]] = {}
    groups = topology.host_groups()
    local = [(g[0], g[1]) for g in groups if len(g) > 1]
    if local:
        pairs["shm"] = min(local)
    if len(groups) > 1:
        host = [info.host for info in topology.ranks]
        for a in range(topology.size):
            b = next((b for b in range(a + 1, topology.size) if host[b] != host[a]), None)
            if b is not None:
                pairs["tcp"] = (a, b)
                break
    return pairs


def topology_key(topology: Topology) -> dict[str, Any]:
    """What the measured numbers depend on: the hosts (ids, boot ids, CPU counts, NIC names
    and speeds), which rank lives where, and the knobs that change the transports used."""
    hosts = []
    for h in topology.hosts:
        nics = sorted([n.name, n.speed_mbps] for n in h.nics if n.up and not n.loopback)
        hosts.append({"id": h.host_id, "kernel": h.kernel_id, "cpus": len(h.cpus),
                      "nics": nics})
    return {"version": PROBE_VERSION, "size": topology.size, "hosts": hosts,
            "rank_hosts": [r.host for r in topology.ranks],
            "ranks_per_host": [len(g) for g in topology.host_groups()],
            "transport": config.get("COLLX_TRANSPORT"), "spin": config.get("COLLX_SPIN")}


def topology_fingerprint(topology: Topology) -> str:
    text = json.dumps(topology_key(topology), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# ---------------------------------------------------------------------------------------
# Cache


def cache_dir() -> str:
    d = config.get("COLLX_PROBE_CACHE")
    if d:
        return d
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "collx")


def cache_path(fingerprint: str, directory: str | None = None) -> str:
    return os.path.join(directory or cache_dir(), f"probe-{fingerprint}.json")


def read_cache(path: str, classes, now: float | None = None,
               max_age_s: float = MAX_AGE_S) -> Optional[dict[str, Any]]:
    """The entry at ``path`` when it is readable, of this version, younger than
    ``max_age_s`` (and not from the future), and has every class in ``classes`` with
    positive finite alpha and beta; else None."""
    now = time.time() if now is None else now
    try:
        with open(path) as f:
            entry = json.load(f)
        if entry.get("schema") != "collx.probe" or entry.get("version") != PROBE_VERSION:
            return None
        created = float(entry["created"])
        if not (now - max_age_s < created <= now + 60.0):
            return None
        gamma = float(entry["gamma_s_per_B"])
        if not (np.isfinite(gamma) and gamma >= 0):
            return None
        for c in classes:
            raw = entry["raw"][c]
            for k in FIELDS:
                if not np.isfinite(float(raw[k])):
                    return None
            if not (raw["alpha_s"] > 0 and raw["beta_Bps"] > 0):
                return None
        return entry
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_cache(path: str, result: ProbeResult, now: float | None = None) -> bool:
    """Write ``result`` atomically (a reader never sees half a file); False on any error."""
    entry = {"schema": "collx.probe", "version": PROBE_VERSION,
             "created": time.time() if now is None else now,
             "fingerprint": result.fingerprint, "gamma_s_per_B": result.gamma_s_per_B,
             "raw": result.raw, "probe_seconds": result.seconds}
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(entry, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
        return True
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return False


# ---------------------------------------------------------------------------------------
# Records shared between ranks


def _encode(rec: np.ndarray, cls: str, raw: dict[str, Any]) -> None:
    base = 2 + CLASSES.index(cls) * len(FIELDS)
    for i, k in enumerate(FIELDS):
        rec[base + i] = float(raw[k])


def _decode(rec: np.ndarray, cls: str, pair: tuple[int, int]) -> dict[str, Any]:
    base = 2 + CLASSES.index(cls) * len(FIELDS)
    raw: dict[str, Any] = {"pair": [int(pair[0]), int(pair[1])]}
    for i, k in enumerate(FIELDS):
        v = float(rec[base + i])
        raw[k] = int(v) if k in _INT_FIELDS else v
    return raw


def _links(raw: dict[str, dict[str, Any]], gamma: float) -> dict[str, LinkParams]:
    links = {c: dataclasses.replace(p, gamma_s_per_B=gamma) for c, p in default_links().items()}
    for c, r in raw.items():
        links[c] = LinkParams(r["alpha_s"], r["beta_Bps"], gamma)
    return links


# ---------------------------------------------------------------------------------------
# Measurement


def measure_gamma(nbytes: int = 256 << 10, batches: int = 5, calls: int = 8) -> float:
    """Seconds per byte of collx._C's float32 sum kernel (dst = a + b) on ``nbytes`` arrays,
    best of ``batches`` batches of ``calls`` calls (a few ms in all)."""
    n = nbytes // 4
    a = np.ones(n, np.float32)
    b = np.full(n, 2.0, np.float32)
    dst = np.zeros(n, np.float32)
    _C.reduce_kernel(_C.SUM, _C.FLOAT32, -1, dst, a, b)       # warm: caches, page faults
    best = float("inf")
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(calls):
            _C.reduce_kernel(_C.SUM, _C.FLOAT32, -1, dst, a, b)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best / nbytes


def _pair_plan(ccomm, rank: int, size: int, a: int, b: int, nbytes: int):
    """Rank a sends ``nbytes`` from IN and receives an 8-byte reply into OUT; rank b
    receives into OUT and then replies (nbytes == 8: echoes what it got, from OUT; else an
    ack from IN). Byte-granular (itemsize 1)."""
    steps: list[list[ir.Step]] = [[] for _ in range(size)]
    steps[a] = [ir.send(b, Buf.IN, 0, nbytes), ir.recv(b, Buf.OUT, 0, PING_BYTES)]
    reply_buf = Buf.OUT if nbytes == PING_BYTES else Buf.IN
    steps[b] = [ir.recv(a, Buf.OUT, 0, nbytes),
                ir.send(a, reply_buf, 0, PING_BYTES, deps=(0,))]
    sched = Schedule("probe", "probe", size, steps, [nbytes] * size, [nbytes] * size)
    packed, deps, scratch = pack_rank(sched, rank, 1)
    return ccomm.plan(packed, deps, scratch)


def _buffers(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    inbuf = np.ones(nbytes, np.uint8)          # written: pages touched before timing
    outbuf = np.ones(nbytes, np.uint8)
    return inbuf, outbuf


def _measure_pair(ccomm, rank: int, size: int, a: int, b: int, budget_s: float,
                  timeout: float) -> dict[str, Any] | None:
    """Run the pair's sequence on rank a or b; rank a returns the raw numbers."""
    t_start = time.perf_counter()
    first = rank == a
    ping = _pair_plan(ccomm, rank, size, a, b, PING_BYTES)
    pin, pout = np.zeros(PING_BYTES, np.uint8), np.zeros(PING_BYTES, np.uint8)
    code = pin.view(np.int64)
    got = pout.view(np.int64)
    ex = ccomm.execute
    u8, s = _C.UINT8, _C.SUM

    ex(ping, pin, pout, u8, s, 1, FP_PING, timeout)                 # sync
    warm = _pair_plan(ccomm, rank, size, a, b, WARMUP_BYTES)
    win, wout = _buffers(WARMUP_BYTES)
    fp_warm = _fp(f"xfer/{WARMUP_BYTES}")
    t0 = time.perf_counter()
    ex(warm, win, wout, u8, s, 1, fp_warm, timeout)
    t_warm = time.perf_counter() - t0

    rtts: list[float] = []
    nbytes, reps = 0, 0
    if first:
        ping_budget = PING_SHARE * (budget_s - (time.perf_counter() - t_start))
        t_pings = time.perf_counter()
        for i in range(MAX_PINGS):
            last_rtt = rtts[-1] if rtts else 0.0
            more = i + 1 < MAX_PINGS and (
                i + 1 < MIN_PINGS or time.perf_counter() - t_pings + last_rtt < ping_budget)
            if not more:        # the last ping carries the transfer plan, decided now
                rtt = low_quantile(rtts) if rtts else t_warm
                est = WARMUP_BYTES / max(t_warm - rtt, 0.1 * t_warm, 1e-9)
                left = budget_s - (time.perf_counter() - t_start) - rtt
                nbytes, reps = choose_transfer(est, left, rtt)
            code[0] = encode_plan(nbytes, reps, more)
            t0 = time.perf_counter()
            ex(ping, pin, pout, u8, s, 1, FP_PING, timeout)
            rtts.append(time.perf_counter() - t0)
            if not more:
                break
    else:
        for _ in range(MAX_PINGS):
            ex(ping, pin, pout, u8, s, 1, FP_PING, timeout)
            nbytes, reps, more = decode_plan(int(got[0]))
            if not more:
                break
        if not (MIN_XFER <= nbytes <= MAX_XFER and 1 <= reps <= MAX_REPS):
            raise MismatchError(f"collx link probe: rank {rank} got a bad transfer plan "
                                f"({nbytes} bytes x {reps}) from rank {a}")

    xfer = _pair_plan(ccomm, rank, size, a, b, nbytes)
    xin, xout = _buffers(nbytes)
    fp_xfer = _fp(f"xfer/{nbytes}")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        ex(xfer, xin, xout, u8, s, 1, fp_xfer, timeout)
        times.append(time.perf_counter() - t0)
    if not first:
        return None
    return {"pair": [a, b], "alpha_s": alpha_from_round_trips(rtts),
            "beta_Bps": beta_from_transfers(nbytes, times, low_quantile(rtts)),
            "rtt_min_s": min(rtts), "rtt_med_s": statistics.median(rtts), "pings": len(rtts),
            "nbytes": nbytes, "reps": reps, "t_xfer_med_s": statistics.median(times),
            "t_xfer_min_s": min(times), "seconds": time.perf_counter() - t_start}


def _collective(ccomm, rank: int, schedule: Schedule, inbuf, outbuf, fp: int,
                timeout: float) -> None:
    packed, deps, scratch = pack_rank(schedule, rank, 8)
    cap = ccomm.plan(packed, deps, scratch)
    ccomm.execute(cap, inbuf, outbuf, _C.FLOAT64, _C.SUM, 1, fp, timeout)


def probe_links(ccomm, rank: int, size: int, topology: Topology, *, budget_s: float = 0.2,
                timeout: float = 10.0, cache: bool = True) -> ProbeResult:
    """Measure (or load from the cache) LinkParams for every link class of ``topology``;
    collective over ranks 0..size-1 of ``ccomm`` (a connected collx._C.Comm), called by
    all of them in the same order with equal arguments; returns equal links on every rank.
    ``budget_s``: target total time of a measurement; ``timeout``: per step, seconds;
    ``cache=False``: neither read nor write the cache (always measure)."""
    t_start = time.perf_counter()
    if not config.get("COLLX_PROBE") or size < 2:
        return _defaults(time.perf_counter() - t_start)
    if topology.size != size:
        raise InvalidUsage(f"probe_links: the topology has {topology.size} ranks, the job "
                           f"has {size}")
    pairs = representative_pairs(topology)
    classes = [c for c in CLASSES if c in pairs]
    fingerprint = topology_fingerprint(topology)
    path = cache_path(fingerprint)

    # 1. decide: rank 0's cache entry (or none) to everybody
    rec = np.zeros(REC_LEN, np.float64)
    if rank == 0 and cache:
        entry = read_cache(path, classes)
        if entry is not None:
            rec[0], rec[1] = 1.0, entry["gamma_s_per_B"]
            for c in classes:
                _encode(rec, c, entry["raw"][c])
    _collective(ccomm, rank, build_schedule("broadcast", size, count=REC_LEN, root=0),
                rec, rec, FP_DECIDE, timeout)
    if rec[0] == 1.0:
        raw = {c: _decode(rec, c, pairs[c]) for c in classes}
        gamma = float(rec[1])
        return ProbeResult(links=_links(raw, gamma), source="cache",
                           seconds=time.perf_counter() - t_start, raw=raw,
                           gamma_s_per_B=gamma, fingerprint=fingerprint)

    # 2. measure
    mine = np.zeros(REC_LEN, np.float64)
    class_budget = max(budget_s - RESERVE_S, 0.01) / max(1, len(classes))
    for c in classes:
        a, b = pairs[c]
        if rank in (a, b):
            raw_c = _measure_pair(ccomm, rank, size, a, b, class_budget, timeout)
            if raw_c is not None:
                _encode(mine, c, raw_c)
    if rank == 0:
        mine[1] = measure_gamma()

    # 3. share
    everyone = np.zeros(REC_LEN * size, np.float64)
    _collective(ccomm, rank, build_schedule("allgather", size, counts=[REC_LEN] * size),
                mine, everyone, FP_SHARE, timeout)
    recs = everyone.reshape(size, REC_LEN)
    raw = {c: _decode(recs[pairs[c][0]], c, pairs[c]) for c in classes}
    gamma = float(recs[0][1])
    result = ProbeResult(links=_links(raw, gamma), source="probed",
                         seconds=time.perf_counter() - t_start, raw=raw,
                         gamma_s_per_B=gamma, fingerprint=fingerprint)
    if rank == 0 and cache:
        write_cache(path, result)
    return result
