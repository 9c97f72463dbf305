"""Start-up: find out who we are (collxrun's environment, mpirun's, or nothing = one
process), meet the others through the store, and connect the mesh."""
from __future__ import annotations

import os
import secrets
import socket
from typing import Any

from .. import _C, config
from ..errors import InvalidUsage
from ..rendezvous import TCPStore, TCPStoreServer, auth
from ..transports.mesh import connect_mesh
from .communicator import Communicator

_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
_MPI_LOCAL_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PALS_LOCAL_RANKID")


def _mode() -> str:
    mode = config.get("COLLX_BOOTSTRAP")
    if mode not in ("auto", "env", "mpi"):
        raise InvalidUsage(f"COLLX_BOOTSTRAP={mode!r}: use auto, env or mpi")
    if mode != "auto":
        return mode
    if os.environ.get("COLLX_RANK") is not None:
        return "env"
    if any(os.environ.get(v) is not None for v in _MPI_RANK_VARS):
        return "mpi"
    return "single"


def _env_int(name: str) -> int:
    value = config.get(name)
    if value is None:
        raise InvalidUsage(f"collx.init: {name} is not set; start the job with collxrun (or set "
                           f"COLLX_RANK, COLLX_SIZE, COLLX_STORE_ADDR and COLLX_SECRET)")
    return value


def _from_env(timeout: float) -> tuple[int, int, Any, bytes, Any]:
    rank, size = _env_int("COLLX_RANK"), _env_int("COLLX_SIZE")
    if not 0 <= rank < size:
        raise InvalidUsage(f"collx.init: COLLX_RANK={rank} is outside COLLX_SIZE={size}")
    secret = auth.secret_from_env()
    if size == 1:
        return rank, size, None, secret, None
    addr = config.get("COLLX_STORE_ADDR")
    if not addr:
        raise InvalidUsage("collx.init: COLLX_STORE_ADDR is not set; start the job with collxrun")
    if not secret:
        raise InvalidUsage("collx.init: COLLX_SECRET is not set; every rank must hold the job "
                           "secret (collxrun sets it)")
    return rank, size, TCPStore(addr, secret, timeout=timeout), secret, None


_MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE")


def _first_env_int(names: tuple[str, ...]) -> int | None:
    for var in names:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def _from_mpi(timeout: float) -> tuple[int, int, Any, bytes, Any]:
    """Under mpirun: rank and size from the MPI. With mpi4py, rank 0 starts the store and
    MPI (the trusted channel) hands its address and a fresh secret to everyone; without
    mpi4py, COLLX_STORE_ADDR and COLLX_SECRET must be passed in (mpirun -x ...)."""
    try:
        from mpi4py import MPI
    except ImportError:
        rank, size = _first_env_int(_MPI_RANK_VARS), _first_env_int(_MPI_SIZE_VARS)
        addr, secret = config.get("COLLX_STORE_ADDR"), auth.secret_from_env()
        if rank is None or size is None or (size > 1 and not (addr and secret)):
            raise InvalidUsage("collx.init: under mpirun collx bootstraps through mpi4py (pip "
                               "install mpi4py, built against that MPI); without it pass "
                               "COLLX_STORE_ADDR and COLLX_SECRET (e.g. mpirun -x) for a store "
                               "started with python -m collx.rendezvous.serve, or use collxrun")
        store = TCPStore(addr, secret, timeout=timeout) if size > 1 else None
        return rank, size, store, secret, None
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    server = None
    if size == 1:
        return rank, size, None, b"", None
    if rank == 0:
        host = config.get("COLLX_HOST_ADDR") or _routable_address()
        secret_text = secrets.token_hex(32)
        server = TCPStoreServer(host="0.0.0.0", port=0, secret=secret_text.encode()).start()
        port = int(server.address.rsplit(":", 1)[1])
        info = (f"{host}:{port}", secret_text)
    else:
        info = None
    addr, secret_text = world.bcast(info, root=0)   # MPI is the trusted channel here
    secret = secret_text.encode()
    return rank, size, TCPStore(addr, secret, timeout=timeout), secret, server


def _routable_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def host_groups(records: list) -> list[list[int]]:
    """Ranks of each host, hosts in order of their lowest rank."""
    groups: dict[str, list[int]] = {}
    for rec in records:
        groups.setdefault(rec.host_id, []).append(rec.rank)
    return list(groups.values())


def job_servers() -> int:
    """COLLX_SERVERS: dedicated summation servers beside the workers (collxrun --servers)."""
    k = config.get("COLLX_SERVERS") or 0
    if k < 0:
        raise InvalidUsage(f"COLLX_SERVERS={k} must be >= 0")
    return k


def spin_for(records: list, rank: int) -> int:
    """COLLX_SPIN, else: busy-poll (4096 spins before yielding) only when the processes of
    this job on this kernel — namespace "hosts" of one machine and servers included — fit
    the cores; otherwise 0 (yield briefly, then sleep on the doorbells), so that waiting
    ranks do not take the cores from the ranks that have work."""
    spin = config.get("COLLX_SPIN")
    if spin is not None:
        return spin
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mine = records[rank].kernel
    sharing = sum(1 for rec in records if rec.kernel == mine)
    return 0 if sharing > (cores or 1) else 4096


def yield_us() -> float:
    """COLLX_YIELD_US: how long a waiting rank that does not spin yields before sleeping."""
    us = config.get("COLLX_YIELD_US")
    if us < 0:
        raise InvalidUsage(f"COLLX_YIELD_US={us} must be >= 0 (microseconds)")
    return us


def _locality(rank: int, records: list) -> tuple[int, int, int, int]:
    hosts: list[str] = []
    for rec in records:
        if rec.host_id not in hosts:
            hosts.append(rec.host_id)
    mine = records[rank].host_id
    local = [r.rank for r in records if r.host_id == mine]
    return local.index(rank), len(local), hosts.index(mine), len(hosts)


def _override(name: str, value: int, alternatives: tuple[str, ...] = ()) -> int:
    if config.get("COLLX_HOSTNAME"):
        return value    # hosts named by the user: the launcher's local view does not apply
    env = config.get(name)
    if env is not None:
        return env
    for var in alternatives:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return value


def init_communicator(timeout: float | None = None) -> Communicator:
    """Build this process's world communicator."""
    timeout = config.get("COLLX_TIMEOUT") if timeout is None else float(timeout)
    mode = _mode()
    if mode == "single":
        return Communicator(0, 1, timeout=timeout)
    rank, size, store, secret, server = (_from_env if mode == "env" else _from_mpi)(timeout)
    servers = job_servers() if mode == "env" else 0
    if servers and store is None:
        store = _server_store(timeout)
    comm = Communicator(rank, size, timeout=timeout, store=store, servers=servers)
    comm.store_server = server  # type: ignore[attr-defined]  # kept alive with the comm
    if size + servers == 1:
        return comm
    _C.shm_allow_cma()
    generation = store.add(f"collx/generation/{rank}", 1)
    records, comm.transports = connect_mesh(comm.ccomm, store, rank, size + servers, secret,
                                            timeout, prefix=f"collx/g{generation}")
    all_records, records = records, records[:size]   # servers are not in the user's world
    comm.store_prefix = f"collx/g{generation}"
    comm.host_addr = records[rank].host
    comm.host_groups = host_groups(records)
    lr, ls, cr, cs = _locality(rank, records)
    comm.local_rank = _override("COLLX_LOCAL_RANK", lr, _MPI_LOCAL_VARS if mode == "mpi" else ())
    comm.local_size = _override("COLLX_LOCAL_SIZE", ls)
    comm.cross_rank = _override("COLLX_CROSS_RANK", cr)
    comm.cross_size = _override("COLLX_CROSS_SIZE", cs)
    comm.ccomm.set_spin(spin_for(all_records, rank), yield_us())
    attach_selection(comm, store, f"collx/g{generation}", timeout)
    return comm


def attach_selection(comm: Communicator, store: Any, prefix: str, timeout: float) -> None:
    """collx/topo for this job, collectively on every worker right after the mesh is up
    (before any collective): the Topology (gathered through the store, or COLLX_TOPO_FILE),
    the link parameters (probed, from the probe cache, or defaults: COLLX_PROBE=0, or a
    topology from a file, which describes machines this one is not), and the Selector."""
    from ..topo.exchange import topology_from_env_or_detect
    from ..topo.probe import ProbeResult, default_links, probe_links
    from ..topo.select import Selector, configure_logging
    configure_logging()
    comm.topology = topology_from_env_or_detect(store, prefix, comm.rank, comm.size, timeout)
    if config.get("COLLX_TOPO_FILE"):
        comm.probe = ProbeResult(default_links(), "defaults", 0.0)
    else:
        comm.probe = probe_links(comm.ccomm, comm.rank, comm.size, comm.topology,
                                 timeout=min(timeout, 10.0))
    tune = shared_tune_table(store, prefix, comm.rank, comm.size, timeout)
    # cores=0: no CPU term — on this project's 2-core machines it made the model rank worse
    # (perf/RESULTS.md, "Algorithm family")
    comm.selector = Selector(comm.topology, comm.probe.links, servers=comm.servers,
                             spec=comm.spec, tune=tune,
                             chunk_bytes=config.get("COLLX_CHUNK_BYTES"), cores=0,
                             world_size=comm.size)


def _server_store(timeout: float) -> Any:
    addr, secret = config.get("COLLX_STORE_ADDR"), auth.secret_from_env()
    if not addr or not secret:
        raise InvalidUsage("collx: a job with COLLX_SERVERS needs COLLX_STORE_ADDR and "
                           "COLLX_SECRET (start it with collxrun --servers K)")
    return TCPStore(addr, secret, timeout=timeout)


def init_server_communicator(index: int, timeout: float | None = None,
                             wait: float | None = None) -> Communicator:
    """The communicator of dedicated summation server ``index`` (collx.server): rank
    COLLX_SIZE + index among COLLX_SIZE workers and COLLX_SERVERS servers. Joins the next
    generation of the job's mesh (one per collx.init of the workers), waiting up to
    ``wait`` seconds (default: ``timeout``) for the workers to start it."""
    timeout = config.get("COLLX_TIMEOUT") if timeout is None else float(timeout)
    wait = timeout if wait is None else max(float(wait), timeout)
    workers, servers = _env_int("COLLX_SIZE"), job_servers()
    if not 0 <= index < servers:
        raise InvalidUsage(f"collx-server: COLLX_SERVER_INDEX={index} is outside "
                           f"COLLX_SERVERS={servers}")
    rank = workers + index
    store = _server_store(timeout)
    comm = Communicator(rank, workers, timeout=timeout, store=store, servers=servers)
    _C.shm_allow_cma()
    generation = store.add(f"collx/generation/{rank}", 1)
    records, comm.transports = connect_mesh(comm.ccomm, store, rank, workers + servers,
                                            auth.secret_from_env(), wait,
                                            prefix=f"collx/g{generation}")
    comm.host_groups = host_groups(records[:workers])
    comm.ccomm.set_spin(spin_for(records, rank), yield_us())
    return comm


def shared_tune_table(store: Any, prefix: str, rank: int, size: int, timeout: float) -> Any:
    """COLLX_TUNE_FILE as rank 0 reads it, handed to every rank through the store: ranks on
    hosts without the file (or with another copy) must still choose alike. An unreadable
    file is an InvalidUsage on every rank."""
    from ..errors import InvalidUsage
    from ..topo.select import load_tune, tune_from_text
    path = config.get("COLLX_TUNE_FILE")
    if not path:
        return None
    if size == 1 or store is None:
        return load_tune(path)
    key = f"{prefix}/tune"
    if rank == 0:
        try:
            with open(path) as f:
                blob = b"T" + f.read().encode()
        except OSError as exc:
            blob = b"E" + f"tune table {path} (COLLX_TUNE_FILE) on rank 0: {exc}".encode()
        store.set(key, blob)
    blob = store.get(key, timeout=timeout)
    if blob[:1] == b"E":
        raise InvalidUsage(blob[1:].decode())
    return tune_from_text(blob[1:].decode(), f"{path} (rank 0's copy)")
