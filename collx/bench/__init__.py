"""collx-bench: collx's collective microbenchmark (nccl-tests columns, peers' JSON lines).

``main`` is the console script ``collx-bench``; ``python -m collx.bench`` runs it too.
Modules: measure (the peers' timing contract, re-implemented), cases (buffers, calls,
checks), memory (peak extra RSS of one call), report (the table), cli (the loop).
"""
from __future__ import annotations

from .cli import main

__all__ = ["main"]
