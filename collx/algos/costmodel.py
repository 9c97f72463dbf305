"""Link-class cost model: predicted time of a schedule on links of different speeds.

Each message between ranks a -> b belongs to the link class ``link_class(a, b)`` (e.g.
"intra" for two ranks on one host, "inter" across hosts) with ``LinkParams``: latency
``alpha_s``, bandwidth ``beta_Bps`` (bytes per second) and ``gamma_s_per_B``, the cost of
reducing one byte on the receiver (charged to RECV_REDUCE steps only).

``predict`` extends ``simulator.cost``'s critical path (same event order: deps, FIFO posting
order per direction, send/recv matching through the simulator's plan) with per-class
weights: a step starts when its deps are complete and the previous message in its direction
was posted; a matched pair completes at max(both starts) + alpha + bytes / beta (+ gamma x
bytes for a RECV_REDUCE); local COPYs cost nothing. It models latency, bandwidth and
reduction cost along dependency chains, not contention (two messages sharing a NIC at once
are not slowed down).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from .ir import Kind, Schedule
from .simulator import _Plan

__all__ = ["LinkParams", "predict", "bytes_per_link_class", "two_level"]

LinkClass = Callable[[int, int], str]


@dataclass(frozen=True)
class LinkParams:
    alpha_s: float
    beta_Bps: float
    gamma_s_per_B: float = 0.0

    def msg_time(self, nbytes: int) -> float:
        return self.alpha_s + (nbytes / self.beta_Bps if self.beta_Bps > 0 else 0.0)


def two_level(groups) -> LinkClass:
    """``link_class`` for a host partition: "intra" inside a group, "inter" across."""
    host = {r: h for h, g in enumerate(groups) for r in g}
    return lambda a, b: "intra" if host[a] == host[b] else "inter"


def predict(schedule: Schedule, itemsize: int, link_class: LinkClass,
            params: Mapping[str, LinkParams]) -> float:
    """Critical-path time in seconds (module docstring). Raises KeyError naming a link class
    missing from ``params``."""
    plan = _Plan(schedule)
    step_of, base, rank_of, prev_dir = plan.step_of, plan.base, plan.rank_of, plan.prev_dir
    start = [0.0] * plan.total
    end = [0.0] * plan.total
    cache: dict[tuple[int, int], LinkParams] = {}

    def link(a: int, b: int) -> LinkParams:
        p = cache.get((a, b))
        if p is None:
            cls = link_class(a, b)
            if cls not in params:
                raise KeyError(f"no LinkParams for link class {cls!r} (ranks {a} -> {b})")
            p = cache[(a, b)] = params[cls]
        return p

    def on_post(g: int) -> None:
        b = base[rank_of[g]]
        t = 0.0
        for d in step_of[g].deps:
            if end[b + d] > t:
                t = end[b + d]
        pd = prev_dir[g]
        if pd != -1 and start[pd] > t:
            t = start[pd]
        start[g] = t

    def on_complete(g: int, p: int) -> None:
        if p == -1:
            end[g] = start[g]
            return
        snd, rcv = step_of[g], step_of[p]
        nbytes = snd.count * itemsize
        lp = link(rank_of[g], rank_of[p])
        t = max(start[g], start[p]) + lp.msg_time(nbytes)
        if rcv.kind == Kind.RECV_REDUCE:
            t += lp.gamma_s_per_B * nbytes
        end[g] = end[p] = t

    plan.run(None, on_post, on_complete)
    return max(end, default=0.0)


def bytes_per_link_class(schedule: Schedule, itemsize: int,
                         link_class: LinkClass) -> dict[str, int]:
    """Total bytes sent over each link class (summed over all SENDs of all ranks)."""
    out: dict[str, int] = {}
    for r, steps in enumerate(schedule.steps):
        for st in steps:
            if st.kind == Kind.SEND:
                cls = link_class(r, st.peer)
                out[cls] = out.get(cls, 0) + st.count * itemsize
    return out
