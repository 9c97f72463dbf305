"""``tree`` for broadcast and reduce: the binomial trees of binomial.py under the name the
allreduce family uses for its tree, so that ``COLLX_ALGO=tree`` (or ``broadcast:tree``,
``reduce:tree``) selects a tree for every op that has one. The schedules are the binomial
ones step for step; only ``Schedule.algo`` says "tree".

Cost (binomial.py): ceil(log2 n) rounds; broadcast: N per tree edge, the root sends
ceil(log2 n) N; reduce: the mirror. With ``chunk_count`` C the chunks pipeline down (up) the
tree: about log2 n + N / C - 1 chunk times.
When it wins: small and latency-bound broadcasts and reductions (log n rounds instead of the
chain's n - 1); for large vectors dbtree spreads the root's load over two trees.
"""
from __future__ import annotations

from .binomial import binomial_broadcast, binomial_reduce
from .ir import Schedule


def tree_broadcast(n: int, count: int, root: int = 0, chunk_count: int = 0) -> Schedule:
    """``binomial_broadcast`` named "tree"."""
    s = binomial_broadcast(n, count, root, chunk_count)
    s.algo = "tree"
    return s


def tree_reduce(n: int, count: int, root: int = 0, chunk_count: int = 0) -> Schedule:
    """``binomial_reduce`` named "tree"."""
    s = binomial_reduce(n, count, root, chunk_count)
    s.algo = "tree"
    return s
