"""One entry point from (op, sizes, root, algorithm name) to a Schedule.

``ALGORITHMS[op][name]`` holds a builder taking the uniform keyword arguments of
``build_schedule`` (``n, count, counts, send_counts, root, chunk_count, groups, servers``);
builders ignore the ones they do not use (``**_``). ``groups`` is the host partition (a list
of rank lists, None: unknown) for hierarchical algorithms; ``servers`` is the number of
dedicated summation servers of the job (ranks n .. n + servers - 1 of the schedule); a new algorithm
registers one more name with ``register``. ``DEFAULT[op]`` is the name used when ``algo`` is
None (collx/topo's selection passes a name explicitly). Nothing is cached here: the runtime
caches schedules per (op, sizes, root, algorithm).

Buffer conventions (elements; the Schedule's in/out/scratch counts say the same per rank):
  allreduce      count        IN = OUT = count on every rank
  allgather      counts[r]    IN = counts[r], OUT = sum(counts), rank order
  reducescatter  counts[r]    IN = sum(counts) (rank order), OUT = counts[r]
  alltoall       send_counts  IN = sum(row r) by dst, OUT = sum(column r) by src
  broadcast      count, root  IN = count on root (0 elsewhere), OUT = count everywhere
  reduce         count, root  IN = count everywhere, OUT = count on root (0 elsewhere)
  gather         counts, root IN = counts[r], OUT = sum(counts) on root (0 elsewhere)
  scatter        counts, root IN = sum(counts) on root (0 elsewhere), OUT = counts[r]
  barrier        -            no buffers
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

from .binomial import (binomial_barrier, binomial_broadcast, binomial_gather, binomial_reduce,
                       binomial_scatter)
from .common import check_chunk, check_count, check_counts, check_n, check_root, even_split
from .ir import Schedule
from .hd import hd_allreduce
from .pair import pair_allreduce
from .pairwise import pairwise_alltoall
from .ring import ring_allgather, ring_allreduce, ring_reducescatter
from .tree import tree_allreduce

__all__ = ["ALGORITHMS", "DEFAULT", "OPS", "build_schedule", "even_split", "register"]

Builder = Callable[..., Schedule]
ALGORITHMS: dict[str, dict[str, Builder]] = {}
DEFAULT: dict[str, str] = {}

# which size argument each op takes
_BY_COUNT = ("allreduce", "broadcast", "reduce")
_BY_COUNTS = ("allgather", "reducescatter", "gather", "scatter")
_ROOTED = ("broadcast", "reduce", "gather", "scatter")
OPS = _BY_COUNT + _BY_COUNTS + ("alltoall", "barrier")


def register(op: str, name: str, fn: Builder, default: bool = False) -> None:
    """Add algorithm ``name`` for ``op``; ``fn(n, *, count, counts, send_counts, root,
    chunk_count, groups, servers) -> Schedule`` receives already validated arguments."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; ops are {', '.join(OPS)}")
    ALGORITHMS.setdefault(op, {})[name] = fn
    if default or op not in DEFAULT:
        DEFAULT[op] = name


register("allreduce", "ring",
         lambda n, count, chunk_count, **_: ring_allreduce(n, count, chunk_count))
register("allreduce", "pair", lambda n, count, **_: pair_allreduce(n, count))
register("allreduce", "tree",
         lambda n, count, chunk_count, **_: tree_allreduce(n, count, chunk_count))
register("allreduce", "hd", lambda n, count, **_: hd_allreduce(n, count))
register("allgather", "ring",
         lambda n, counts, chunk_count, **_: ring_allgather(counts, chunk_count))
register("reducescatter", "ring",
         lambda n, counts, chunk_count, **_: ring_reducescatter(counts, chunk_count))
register("alltoall", "pairwise", lambda n, send_counts, **_: pairwise_alltoall(send_counts))
# out-of-place only (IN and OUT never alias): no scratch detours
register("alltoall", "pairwise_direct",
         lambda n, send_counts, **_: pairwise_alltoall(send_counts, aliasable=False))
register("broadcast", "binomial",
         lambda n, count, root, chunk_count, **_: binomial_broadcast(n, count, root,
                                                                     chunk_count))
register("reduce", "binomial",
         lambda n, count, root, chunk_count, **_: binomial_reduce(n, count, root, chunk_count))
register("gather", "binomial", lambda n, counts, root, **_: binomial_gather(counts, root))
register("scatter", "binomial", lambda n, counts, root, **_: binomial_scatter(counts, root))
register("barrier", "binomial", lambda n, **_: binomial_barrier(n))


def build_schedule(op: str, world_size: int, *, count: int = 0,
                   counts: Optional[Sequence[int]] = None,
                   send_counts: Optional[Sequence[Sequence[int]]] = None, root: int = 0,
                   chunk_count: int = 0, algo: Optional[str] = None,
                   groups: Optional[Sequence[Sequence[int]]] = None,
                   servers: int = 0) -> Schedule:
    """Build the schedule of ``op`` for ``world_size`` ranks with algorithm ``algo`` (None:
    ``DEFAULT[op]``). Sizes: ``count`` for allreduce/broadcast/reduce, ``counts`` (one entry
    per rank) for allgather/reducescatter/gather/scatter, ``send_counts`` (n x n) for
    alltoall. ``groups``: the ranks of each host (None: unknown; hierarchical algorithms then
    assume hosts of consecutive ranks). ``servers``: dedicated summation servers in the job
    (only ``star`` uses them; its schedule then has world_size + servers ranks). Raises
    ValueError naming the bad argument."""
    if op not in ALGORITHMS:
        raise ValueError(f"unknown op {op!r}; ops are {', '.join(OPS)}")
    n = check_n(world_size)
    name = DEFAULT[op] if algo is None else algo
    fn = ALGORITHMS[op].get(name)
    if fn is None:
        raise ValueError(f"no algorithm {name!r} for {op}; known: "
                         f"{', '.join(sorted(ALGORITHMS[op]))}")
    count = check_count(count)
    chunk_count = check_chunk(chunk_count)
    root = check_root(root, n) if op in _ROOTED else 0
    if op in _BY_COUNTS:
        if counts is None:
            raise ValueError(f"{op} needs counts= (elements per rank, {n} entries); use "
                             "even_split(total, n) to split a total evenly")
        counts = check_counts(counts, n)
    if op == "alltoall":
        if send_counts is None:
            raise ValueError("alltoall needs send_counts= (n x n, send_counts[src][dst])")
        if len(send_counts) != n:
            raise ValueError(f"send_counts has {len(send_counts)} rows for world size {n}")
        send_counts = [check_counts(row, n, what=f"send_counts[{i}]")
                       for i, row in enumerate(send_counts)]
    if groups is not None:
        groups = check_groups(groups, n)
    if isinstance(servers, bool) or not isinstance(servers, int) or servers < 0:
        raise ValueError(f"servers={servers!r} must be a non-negative int")
    return fn(n, count=count, counts=counts, send_counts=send_counts, root=root,
              chunk_count=chunk_count, groups=groups, servers=servers)


def check_groups(groups: Sequence[Sequence[int]], n: int) -> list[list[int]]:
    """A host partition of ranks 0..n-1: non-empty lists, every rank exactly once."""
    out = [[int(r) for r in g] for g in groups]
    flat = sorted(r for g in out for r in g)
    if any(not g for g in out) or flat != list(range(n)):
        raise ValueError(f"groups={groups!r} must partition ranks 0..{n - 1} into non-empty "
                         "host groups, each rank exactly once")
    return out


# hierarchical allreduce: without real host groups (groups None) hosts are assumed to be
# consecutive ranks, hier.DEFAULT_HOST_SIZE per host. With one level only (one host, or one
# rank per host) a hierarchy has nothing to exploit: the flat algorithm IS the hierarchical
# one there, so ``hier`` builds it (named hier) instead of a slower two-level imitation.
from .hier import default_groups as _hier_groups  # noqa: E402
from .hier import hier_allreduce, hier_leader_allreduce  # noqa: E402


def _one_level(groups) -> bool:
    return len(groups) == 1 or all(len(g) == 1 for g in groups)


def _hier_or_flat(name: str, groups, n: int, two_level, flat) -> Schedule:
    groups = groups or _hier_groups(n)
    if _one_level(groups):
        return dataclasses.replace(flat(), algo=name)
    return two_level(groups)


register("allreduce", "hier",
         lambda n, count, chunk_count, groups=None, **_: _hier_or_flat(
             "hier", groups, n, lambda g: hier_allreduce(g, count, chunk_count),
             lambda: ring_allreduce(n, count, chunk_count)))
register("allreduce", "hier_leader",
         lambda n, count, chunk_count, groups=None, **_: _hier_or_flat(
             "hier_leader", groups, n, lambda g: hier_leader_allreduce(g, count, chunk_count),
             lambda: ring_allreduce(n, count, chunk_count)))

from .dbtree import dbtree_allreduce, dbtree_broadcast, dbtree_reduce  # noqa: E402

register("allreduce", "dbtree",
         lambda n, count, chunk_count, **_: dbtree_allreduce(n, count, chunk_count))
register("broadcast", "dbtree",
         lambda n, count, root, chunk_count, **_: dbtree_broadcast(n, count, root, chunk_count))
register("reduce", "dbtree",
         lambda n, count, root, chunk_count, **_: dbtree_reduce(n, count, root, chunk_count))

from .star import star_allreduce, star_servers_allreduce  # noqa: E402

# star: co-located (every rank owns a shard) when the job has no servers, else the
# dedicated summation servers (ranks n .. n + servers - 1) own the shards.
register("allreduce", "star",
         lambda n, count, chunk_count, servers=0, **_:
         star_servers_allreduce(n, servers, count, chunk_count) if servers
         else star_allreduce(n, count))

# beyond allreduce: recursive doubling / halving, tree aliases of the binomial trees, and the
# hierarchical broadcast / allgather / reducescatter (groups None: hier.default_groups(n))
from .hd_allgather import hd_allgather  # noqa: E402
from .hd_reducescatter import hd_reducescatter  # noqa: E402
from .hier_collectives import hier_allgather, hier_broadcast, hier_reducescatter  # noqa: E402
from .tree_rooted import tree_broadcast, tree_reduce  # noqa: E402

register("allgather", "hd", lambda n, counts, **_: hd_allgather(counts))
register("reducescatter", "hd", lambda n, counts, **_: hd_reducescatter(counts))
register("broadcast", "tree",
         lambda n, count, root, chunk_count, **_: tree_broadcast(n, count, root, chunk_count))
register("reduce", "tree",
         lambda n, count, root, chunk_count, **_: tree_reduce(n, count, root, chunk_count))
register("broadcast", "hier",
         lambda n, count, root, chunk_count, groups=None, **_: _hier_or_flat(
             "hier", groups, n, lambda g: hier_broadcast(g, count, root, chunk_count),
             lambda: binomial_broadcast(n, count, root, chunk_count)))
register("allgather", "hier",
         lambda n, counts, chunk_count, groups=None, **_: _hier_or_flat(
             "hier", groups, n, lambda g: hier_allgather(g, counts, chunk_count),
             lambda: ring_allgather(counts, chunk_count)))
register("reducescatter", "hier",
         lambda n, counts, chunk_count, groups=None, **_: _hier_or_flat(
             "hier", groups, n, lambda g: hier_reducescatter(g, counts, chunk_count),
             lambda: ring_reducescatter(counts, chunk_count)))

from .rd import rd_allreduce  # noqa: E402

register("allreduce", "rd", lambda n, count, **_: rd_allreduce(n, count))
