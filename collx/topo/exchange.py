"""Build the job's Topology: every rank detects itself and publishes that in the rendezvous
Store; every rank reads every other rank's record. Or, for testing selection on machines we
do not have, load it from COLLX_TOPO_FILE instead. COLLX_TOPO_DUMP makes rank 0 write it.
"""
from __future__ import annotations

import json
import time
from typing import Any

from .. import config
from ..errors import CollxTimeout, InvalidUsage
from ..rendezvous.store import Store, resolve_timeout
from . import detect
from .topology import Topology


def _key(prefix: str, rank: int) -> str:
    return f"{prefix}/topo/{rank}"


def gather_topology(store: Store, prefix: str, rank: int, size: int,
                    timeout: float | None = None,
                    local: dict[str, Any] | None = None) -> Topology:
    """Publish this rank's ``detect.detect()`` record under ``{prefix}/topo/{rank}`` and
    collect every rank's, within ``timeout`` seconds in all (default COLLX_TIMEOUT).
    ``local`` replaces the detection (threads-as-ranks tests, emulated hosts). Returns the
    same Topology on every rank."""
    if not isinstance(size, int) or size < 1:
        raise InvalidUsage(f"gather_topology: size must be a positive int, got {size!r}")
    if not isinstance(rank, int) or not 0 <= rank < size:
        raise InvalidUsage(f"gather_topology: rank {rank!r} is not in 0..{size - 1}")
    deadline = time.monotonic() + resolve_timeout(timeout)
    record = local if local is not None else detect.detect()
    store.set(_key(prefix, rank), json.dumps(record, sort_keys=True).encode())
    records = []
    for r in range(size):
        if r == rank:
            records.append(json.loads(json.dumps(record)))  # same normalization as peers'
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            raise CollxTimeout(f"gather_topology: rank {r} did not publish its topology "
                               f"({_key(prefix, r)}) in {store.describe()} before the "
                               f"deadline; is it started? (COLLX_TIMEOUT)")
        records.append(json.loads(store.get(_key(prefix, r), timeout=left)))
    return Topology.from_rank_records(records)


def topology_from_env_or_detect(store: Store | None, prefix: str, rank: int, size: int,
                                timeout: float | None = None,
                                local: dict[str, Any] | None = None) -> Topology:
    """The job's Topology: loaded from COLLX_TOPO_FILE when set (no detection, no store
    traffic; the file must describe ``size`` ranks), else gathered through ``store``.
    With COLLX_TOPO_DUMP set, rank 0 writes the result there."""
    path = config.get("COLLX_TOPO_FILE")
    if path:
        topo = Topology.load(path)
        if topo.size != size:
            raise InvalidUsage(f"COLLX_TOPO_FILE={path} describes {topo.size} ranks but the "
                               f"job has {size}")
    else:
        if store is None:
            raise InvalidUsage("topology_from_env_or_detect: a store is needed unless "
                               "COLLX_TOPO_FILE is set")
        topo = gather_topology(store, prefix, rank, size, timeout, local=local)
    dump = config.get("COLLX_TOPO_DUMP")
    if dump and rank == 0:
        topo.dump(dump)
    return topo
