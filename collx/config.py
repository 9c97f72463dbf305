"""Every COLLX_* environment variable, declared once: name, type, default, doc.

``python -m collx.config`` prints the table with the values in effect. Code reads knobs
only through ``get(name)`` so that an unknown name is a bug caught at once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Knob:
    name: str
    type: Callable[[str], Any]
    default: Any
    doc: str


def _bool(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


KNOBS: dict[str, Knob] = {k.name: k for k in [
    # identity, set by the launcher (collxrun) or derived from mpirun's variables
    Knob("COLLX_RANK", int, None, "this process's rank in the world (launcher sets it)"),
    Knob("COLLX_SIZE", int, None, "number of ranks in the world"),
    Knob("COLLX_LOCAL_RANK", int, None, "rank among the processes of this host"),
    Knob("COLLX_LOCAL_SIZE", int, None, "number of ranks on this host"),
    Knob("COLLX_CROSS_RANK", int, None, "index of this host among the hosts"),
    Knob("COLLX_CROSS_SIZE", int, None, "number of hosts"),
    Knob("COLLX_STORE_ADDR", str, None, "host:port of the rendezvous store (launcher sets it)"),
    Knob("COLLX_SECRET", str, None, "job secret; every store and data connection proves it "
         "holds it (HMAC challenge) before anything else is exchanged"),
    Knob("COLLX_SERVERS", int, 0, "number of dedicated summation server processes in the "
         "job (collxrun --servers sets it for ranks and servers; 0: none)"),
    Knob("COLLX_SERVER_INDEX", int, None, "this server's index 0..COLLX_SERVERS-1 (set by the "
         "launcher for server processes only; ranks have COLLX_RANK instead)"),
    # behaviour
    Knob("COLLX_TIMEOUT", float, 300.0, "seconds any blocking call may take before "
         "CollxTimeout (per call: timeout=)"),
    Knob("COLLX_PEER_TIMEOUT", float, 10.0, "seconds within which a vanished peer host "
         "(no FIN/RST, e.g. a cut link) is declared dead via TCP keepalive"),
    Knob("COLLX_TRANSPORT", str, "auto", "auto | shm | tcp: 'tcp' forces TCP even between "
         "ranks of one host"),
    Knob("COLLX_HOSTNAME", str, None, "host identity override: ranks with the same name are "
         "one host (shared memory), different names different hosts (tcp); default: "
         "detected from boot id, hostname and namespaces"),
    Knob("COLLX_HOST_ADDR", str, None, "address peers reach this rank's data listener on "
         "(default: the local address of the route to the store)"),
    Knob("COLLX_CHUNK_BYTES", int, 1 << 20, "pipelining chunk of ring schedules, bytes"),
    Knob("COLLX_ALGO", str, None, "force algorithms: one name (every op that has it; the "
         "others keep their default) or 'op:name,op:name' (e.g. allreduce:ring,"
         "broadcast:binomial), with optional byte ranges 'allreduce:tree:0-64K,hd:64K-4M,"
         "ring:4M-'; names as in collx.algos.registry.ALGORITHMS; unforced cases are chosen "
         "by collx.topo (cost model, tune table)"),
    Knob("COLLX_SPIN", int, None, "idle passes a waiting rank spins before yielding its core "
         "(default: 4096, or 0 when this host runs more ranks than it has cores)"),
    Knob("COLLX_YIELD_US", float, 50.0, "when ranks outnumber cores (no spinning): "
         "microseconds a waiting rank yields its core before it sleeps on the doorbells"),
    Knob("COLLX_SHM_EAGER_BYTES", int, 16384, "messages up to this size are copied through "
         "the shared-memory queue; larger ones are read directly from the sender's memory"),
    Knob("COLLX_REDUCE_VARIANT", str, "auto", "scalar | avx2 | avx512 | auto: cap the "
         "reduction kernel variant (read once by the C core; for debugging)"),
    Knob("COLLX_DEBUG_C", str, None, "set to print every C error with file:line as it "
         "propagates (the CX_CHECK trace)"),
    Knob("COLLX_BOOTSTRAP", str, "auto", "auto | env | mpi: where init() reads rank/size"),
    Knob("COLLX_IFACE", str, None, "network interface (name) data connections use "
         "(default: the one whose subnet holds the peers' addresses)"),
    Knob("COLLX_TOPO_FILE", str, None, "load the job's topology from this JSON file instead "
         "of detecting it (to test algorithm selection for machines one does not have)"),
    Knob("COLLX_TOPO_DUMP", str, None, "rank 0 writes the job's topology (JSON, loadable by "
         "COLLX_TOPO_FILE) to this path"),
    Knob("COLLX_PROBE", bool, True, "measure latency and bandwidth per link class at init "
         "(<= 200 ms, cached on disk per topology); 0: use the built-in defaults"),
    Knob("COLLX_PROBE_CACHE", str, None, "directory of the probe cache (default "
         "$XDG_CACHE_HOME/collx or ~/.cache/collx)"),
    Knob("COLLX_TUNE_FILE", str, None, "table written by collx-bench --tune; selection "
         "prefers its measurements over the cost model where it has data"),
    Knob("COLLX_LOG", str, "warning", "debug | info | warning: debug logs every algorithm "
         "decision with its reason"),
    # engines (collx/runtime/engine.py: ordered; collx/runtime/negotiated_engine.py)
    Knob("COLLX_ENGINE", str, "ordered", "ordered | negotiated: the engine collx.init() "
         "starts when init(negotiate=) is not given. ordered: every rank calls collectives "
         "in the same program order (MPI); negotiated: ranks may submit in different orders, "
         "a background worker agrees on what is ready and fuses small allreduces (Horovod; "
         "collx.torch uses it)"),
    Knob("COLLX_CYCLE_TIME", float, 1.0, "negotiated engine: milliseconds between "
         "coordination cycles while idle (a local submit starts a cycle at once)"),
    Knob("COLLX_FUSION_THRESHOLD", int, 64 << 20, "negotiated engine: bytes of ready "
         "allreduces (same process set, dtype, op and scale factors) fused into one "
         "collective; 0 = no fusion"),
    Knob("COLLX_CACHE_CAPACITY", int, 1024, "negotiated engine: entries of the response "
         "cache (a request seen before is announced by one bit instead of its description; "
         "least recently used entries are evicted)"),
    Knob("COLLX_STALL_WARNING", float, 60.0, "negotiated engine: seconds a tensor may wait "
         "for other ranks before rank 0 warns (logging and stderr), naming the tensors and "
         "the missing ranks; repeated every as many seconds; the handles fail with "
         "CollxTimeout after COLLX_TIMEOUT (or the call's timeout=)"),
    Knob("COLLX_FREEZE_AFTER", int, 3, "negotiated engine: after this many identical periods "
         "(a training step's allreduces: same tensors, same groups; >= 2) run them in that "
         "frozen order without negotiation until something does not fit "
         "(collx/runtime/frozen.py), like DDP fixing its buckets after the first steps; "
         "0 = never freeze"),
    Knob("COLLX_TIMELINE", str, None, "negotiated engine: rank 0 writes a Chrome trace (JSON, "
         "opens in Perfetto / chrome://tracing) of every tensor's NEGOTIATE, QUEUE, FUSE, "
         "collective and UNFUSE phases to this path"),
    Knob("COLLX_TIMELINE_MARK_CYCLES", bool, False, "with COLLX_TIMELINE: also mark every "
         "coordination cycle that produced work"),
    # launcher (collxrun)
    Knob("COLLX_GRACE", float, 5.0, "seconds collxrun waits after SIGTERM before it "
         "SIGKILLs the ranks' process groups (collxrun --grace overrides)"),
]}


def get(name: str) -> Any:
    """Value of knob ``name`` from the environment, or its default."""
    knob = KNOBS[name]
    text = os.environ.get(name)
    if text is None or text == "":
        return knob.default
    if knob.type is bool:
        return _bool(text)
    try:
        return knob.type(text)
    except ValueError as exc:
        from .errors import InvalidUsage
        raise InvalidUsage(f"{name}={text!r} is not a valid {knob.type.__name__}; "
                           f"{knob.doc}") from exc


def describe() -> str:
    rows = []
    for knob in KNOBS.values():
        value = os.environ.get(knob.name)
        shown = "<set>" if knob.name == "COLLX_SECRET" and value else value
        rows.append(f"{knob.name:24} {knob.type.__name__:6} default={knob.default!s:10} "
                    f"now={shown!s:10} {knob.doc}")
    return "\n".join(rows)


if __name__ == "__main__":
    print(describe())
