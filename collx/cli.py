"""``collx``: the command-line face of collx. ``collx info`` prints what collx sees and
would do here: version, transports, topology, link parameters and the algorithm chosen
per op and size.

    collx info                       this process's machine (one rank; --np N pretends N)
    collxrun -np 4 collx info        inside a job: the job's real hosts, transports and
                                     probed links (rank 0 prints)
    collx info --topo FILE           a saved topology (COLLX_TOPO_DUMP, tests/fixtures/topo)
    collx info --links FILE          link parameters from perf/calibrate_links.py's JSON

COLLX_ALGO and COLLX_TUNE_FILE apply as in a job. ``render_info`` builds the text from its
arguments only, so that a running job can print the same report for its real topology.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Mapping, Optional, Sequence

from .algos.costmodel import LinkParams, load_params
from .errors import CollxError
from .topo.select import (EXPLAIN_OPS, EXPLAIN_SIZES, Selector, configure_logging,
                          default_links, format_time, load_tune, parse_algo_spec)
from .topo.topology import HostInfo, Topology

__all__ = ["main", "render_info", "available_transports", "local_topology"]


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("collx")
    except Exception:
        from . import __version__
        return __version__


def available_transports() -> list[str]:
    """Transports usable here: shm and tcp always (built into collx._C); "ucx" when ucxx
    imports; "cuda" when cupy imports and sees at least one device."""
    out = ["shm", "tcp"]
    try:
        importlib.import_module("ucxx")
        out.append("ucx")
    except Exception:
        pass
    try:
        cupy = importlib.import_module("cupy")
        if cupy.cuda.runtime.getDeviceCount() > 0:
            out.append("cuda")
    except Exception:
        pass
    return out


def _ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 3, 8, 10, 11] -> '0-3,8,10-11'."""
    vals = sorted(set(values))
    parts, i = [], 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(parts) or "-"


def _speed(mbps: Optional[int]) -> str:
    if not mbps:
        return "speed ?"
    return f"{mbps / 1000:g} Gb/s" if mbps >= 1000 else f"{mbps} Mb/s"


def _host_lines(topology: Topology, h: int, host: HostInfo, max_ranks: int = 16) -> list[str]:
    ranks = [r for r, info in enumerate(topology.ranks) if info.host == h]
    out = [f"  host {h}: {host.hostname} (host_id {host.host_id}, kernel {host.kernel_id}): "
           f"{len(ranks)} rank{'s' if len(ranks) != 1 else ''} {_ranges(ranks)}"]
    out.append(f"    cpus: {len(host.cpus)} online ({_ranges(host.cpus)})")
    for n in host.numa:
        out.append(f"    numa {n.id}: cpus {_ranges(n.cpus)}")
    for r in ranks[:max_ranks]:
        numa = topology.numa_of(r)
        out.append(f"    rank {r}: pid {topology.ranks[r].pid}, cpus "
                   f"{_ranges(topology.ranks[r].cpus)}"
                   + (f", numa {_ranges(numa)}" if numa else ""))
    if len(ranks) > max_ranks:
        out.append(f"    ... {len(ranks) - max_ranks} more ranks")
    for nic in host.nics:
        addrs = ", ".join(f"{a.address}/{a.prefix}" for a in nic.addresses) or "no IPv4"
        flags = [w for w, on in (("loopback", nic.loopback), ("virtual", nic.virtual),
                                 ("down", not nic.up)) if on]
        out.append(f"    nic {nic.name}: {addrs}, {_speed(nic.speed_mbps)}, mtu "
                   f"{nic.mtu if nic.mtu is not None else '?'}"
                   + (f" ({', '.join(flags)})" if flags else ""))
    for dev in host.rdma:
        ports = "; ".join(f"port {p.port} {p.state or '?'} {p.rate or '?'} "
                          f"{p.link_layer or ''}".rstrip() for p in dev.ports) or "no ports"
        extra = []
        if dev.netdevs:
            extra.append("netdev " + ",".join(dev.netdevs))
        if dev.numa_node is not None:
            extra.append(f"numa {dev.numa_node}")
        out.append(f"    rdma {dev.name}: {ports}" + (f" ({', '.join(extra)})" if extra else ""))
    if not host.rdma:
        out.append("    rdma: none")
    for g in host.gpus:
        mem = f", {g.memory_bytes / (1 << 30):.0f} GiB" if g.memory_bytes else ""
        links = [n for j, n in enumerate(g.nvlink) if j != g.index and n > 0]
        nvl = (f", nvlink {max(links)}x to {len(links)} GPU{'s' if len(links) != 1 else ''}"
               if links else "")
        numa = f", numa {g.numa_node}" if g.numa_node is not None else ""
        out.append(f"    gpu {g.index}: {g.name or '?'} ({g.pci_bus_id or '?'}{mem}{numa}"
                   f"{nvl})")
    if not host.gpus:
        out.append("    gpus: none")
    return out


def _link_lines(links: Mapping[str, LinkParams]) -> list[str]:
    out = []
    for name in sorted(links):
        p = links[name]
        shared = f", shared {p.shared_Bps / 1e9:.3g} GB/s" if p.shared_Bps else ""
        out.append(f"  {name:5} alpha {format_time(p.alpha_s)}, beta "
                   f"{p.beta_Bps / 1e9:.3g} GB/s, gamma {p.gamma_s_per_B:.2g} s/B{shared}")
    return out


def render_info(topology: Topology, links: Mapping[str, LinkParams], selector: Selector,
                links_source: str, *, transports: Optional[Sequence[str]] = None,
                ops: Sequence[str] = EXPLAIN_OPS,
                sizes: Sequence[int] = EXPLAIN_SIZES) -> str:
    """The ``collx info`` report, from its arguments alone (nothing is detected here,
    except the transports when ``transports`` is None). ``links_source`` says where
    ``links`` came from ("defaults (no probe ran)", "probed at init", a file name)."""
    if transports is None:
        transports = available_transports()
    lines = [f"collx {_version()}",
             f"transports: {', '.join(transports)}",
             f"topology: {topology.size} rank{'s' if topology.size != 1 else ''} on "
             f"{topology.hosts_count} host{'s' if topology.hosts_count != 1 else ''}"]
    for h, host in enumerate(topology.hosts):
        lines += _host_lines(topology, h, host)
    lines.append(f"links ({links_source}):")
    lines += _link_lines(links)
    spec = selector.spec.text if selector.spec else ""
    tune = selector.tune.path if selector.tune is not None else ""
    lines.append("algorithm selection (float32, out of place"
                 + (f"; COLLX_ALGO={spec}" if spec else "")
                 + (f"; tune table {tune}" if tune else "") + "):")
    lines.append(selector.explain(ops, sizes))
    return "\n".join(lines) + "\n"


def local_topology(np: int = 1) -> Topology:
    """This process's view as a job of ``np`` ranks on this host (detection plus the store
    exchange with size 1; the record is repeated for the pretended ranks)."""
    from .rendezvous import InProcessStore
    from .topo import detect
    from .topo.exchange import gather_topology
    record = detect.detect()
    topo = gather_topology(InProcessStore(), "collx-info", 0, 1, local=record)
    if np == 1:
        return topo
    return Topology.from_rank_records([record] * np)


def in_job() -> bool:
    """Started by a launcher (collxrun, python -m collx.runner.netns, mpirun)?"""
    import os
    from .runtime.bootstrap import _MPI_RANK_VARS
    return os.environ.get("COLLX_RANK") is not None or any(
        os.environ.get(v) is not None for v in _MPI_RANK_VARS)


def _info_in_job(args: argparse.Namespace) -> int:
    """Every rank joins the job, the ranks gather their topology and probe their links
    (both collective), rank 0 prints the report for the job as it really is."""
    import collx
    from . import config
    from .topo.exchange import gather_topology
    from .topo.probe import probe_links
    collx.init()
    try:
        comm = collx.communicator()
        rank, size = comm.rank, comm.size
        if size > 1:
            topology = gather_topology(comm.store, "collx/info", rank, size)
        else:
            topology = local_topology(1)
        probe = probe_links(comm.ccomm, rank, size, topology)
        tune_path = args.tune or config.get("COLLX_TUNE_FILE")
        selector = Selector(topology, probe.links, servers=comm.servers, world_size=size,
                            spec=parse_algo_spec(config.get("COLLX_ALGO")),
                            tune=load_tune(tune_path) if tune_path else None,
                            chunk_bytes=config.get("COLLX_CHUNK_BYTES"))
        if rank == 0:
            used = sorted(set(comm.transports.values())) or ["local"]
            source = (f"{probe.source} at init in {probe.seconds * 1e3:.1f} ms"
                      if probe.source != "defaults" else "built-in defaults (COLLX_PROBE=0 "
                      "or a one-rank job)")
            sys.stdout.write(render_info(topology, probe.links, selector, source,
                                         transports=used))
            sys.stdout.flush()
    finally:
        collx.shutdown()
    return 0


def _info(args: argparse.Namespace) -> int:
    from . import config
    configure_logging()                 # COLLX_LOG=debug: every decision with its reason
    if not args.topo and args.np is None and not args.links and in_job():
        return _info_in_job(args)
    if args.topo:
        topology = Topology.load(args.topo)
        if args.np is not None:
            raise SystemExit("collx info: --np applies to this machine's topology, not to "
                             "--topo FILE (the file already says how many ranks)")
    else:
        topology = local_topology(args.np or 1)
    if args.links:
        links, source = load_params(args.links), f"from {args.links}"
    else:
        links, source = default_links(), "built-in defaults: no probe ran"
    tune_path = args.tune or config.get("COLLX_TUNE_FILE")
    selector = Selector(topology, links, servers=args.servers,
                        spec=parse_algo_spec(config.get("COLLX_ALGO")),
                        tune=load_tune(tune_path) if tune_path else None,
                        chunk_bytes=config.get("COLLX_CHUNK_BYTES"))
    sys.stdout.write(render_info(topology, links, selector, source))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="collx", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    info = sub.add_parser("info", help="version, transports, topology, link parameters and "
                          "the algorithm chosen per op and size")
    info.add_argument("--topo", metavar="FILE", help="topology JSON (e.g. COLLX_TOPO_DUMP's "
                      "output or tests/fixtures/topo/*.json) instead of this machine")
    info.add_argument("--np", type=int, default=None, metavar="N",
                      help="pretend N ranks on this host (default 1)")
    info.add_argument("--links", metavar="FILE", help="link parameters JSON "
                      "(perf/calibrate_links.py) instead of the built-in defaults")
    info.add_argument("--tune", metavar="FILE", help="tune table (default COLLX_TUNE_FILE)")
    info.add_argument("--servers", type=int, default=0, metavar="K",
                      help="pretend K dedicated summation servers, each on its own host")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.np is not None and args.np < 1:
        parser.error("--np must be >= 1")
    if args.servers < 0:
        parser.error("--servers must be >= 0")
    try:
        return _info(args)
    except (CollxError, OSError, KeyError, ValueError) as exc:
        print(f"collx info: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
