"""Frozen order: after a training loop has repeated the same allreduces a few times, skip the
negotiation and run them in the order and groups it settled on (COLLX_FREEZE_AFTER, default 3;
0 = off).

**When it freezes.** ``PeriodTracker.observe`` is fed every cycle's responses — identical
data on every rank, so every rank freezes at the same cycle boundary. A *period* is the run
of responses until a tensor name repeats (one training step: every gradient once). When
COLLX_FREEZE_AFTER consecutive periods held the same tensors (same names and cache keys)
in the same fused groups, and the period ended exactly at a cycle boundary with nothing
else in flight (no payload-announced request, no joined rank, no eviction), the last
period's groups become the schedule. Only allreduces of the global set with op Sum,
Average or Max can be frozen; any other response resets the tracker.

**Frozen execution** (``Frozen`` + the engine's ``_frozen_step``): no coordination cycles.
For group k of the schedule, in order, the worker waits until every tensor of the group has
been submitted on this rank, then runs one fused allreduce of the group plus one *control*
element, which every rank sets to 0 (go on) or n (leave frozen mode; n so that Average still
gives a positive value for integers). A rank sets it when something does not fit the
schedule: a request it does not list (or with another key), shutdown(), join(), or a wait
longer than half of COLLX_STALL_WARNING (a tensor some rank may never submit). It then
enters group k's collective at once, with zeros for what it lacks. After the collective
every rank sees the same control sum: 0 → unfuse and finish the handles, go to group k+1;
> 0 → every rank discards the result (inputs are untouched) and returns to negotiation,
where the requests still pending are announced again (their cache entries are unchanged).
Costs: no coordination collective and no cycle wait per group; one element more per group.
What it gives up: stall reports while frozen (a missing tensor is found by the grace
timeout, which unfreezes, and then reported by negotiation as usual).
"""
from __future__ import annotations

from typing import Any

from .negotiation import ALLREDUCE_KINDS, Item, Outcome, Response

FREEZABLE_OPS = ("Sum", "Average", "Max")
# dtypes whose control element holds a sum of up to n*n exactly (int8/uint8/int16 would wrap)
FREEZABLE_DTYPES = ("float16", "bfloat16", "float32", "float64", "int32", "int64")


def _eligible(resp: Response) -> bool:
    it = resp.items[0]
    return (resp.error is None and not resp.joined and it.kind in ALLREDUCE_KINDS
            and it.psid == 0 and it.fuse_key is not None and it.fuse_key[2] in FREEZABLE_OPS
            and it.fuse_key[1] in FREEZABLE_DTYPES)


class PeriodTracker:
    """Detects a repeating period of fused allreduce groups (identical on every rank)."""

    def __init__(self, need: int) -> None:
        self.need = max(1, need)
        self.reset()

    def reset(self) -> None:
        self.prev: frozenset | None = None       # cache keys of the last complete period
        self.cur: list[list[Item]] = []          # this period's groups so far
        self.names: set[str] = set()
        self.count = 0                           # consecutive equal periods seen

    def observe(self, outcome: Outcome, table_empty: bool, joined: bool
                ) -> list[list[Item]] | None:
        """Feed one cycle; returns the schedule (groups of Items) when it is time to freeze."""
        if not outcome.responses:
            return None
        if outcome.reset_slots or joined or outcome.shutdown:
            self.reset()
            return None
        for resp in outcome.responses:
            if not _eligible(resp):
                self.reset()
                continue
            names = {it.name for it in resp.items}
            if names & self.names:               # a name repeats: a period just ended
                keys = self._keys(self.cur)
                self.count = self.count + 1 if keys == self.prev else 1
                self.prev, self.cur, self.names = keys, [], set()
            self.cur.append(list(resp.items))
            self.names |= names
        # a period ending exactly here (the same tensors as the previous one) completes the
        # count: freeze with this period's order and groups
        if self.prev is not None and table_empty and self.count + 1 >= self.need \
                and len(self.names) == len(self.prev) and self._keys(self.cur) == self.prev:
            schedule = self.cur
            self.reset()
            return schedule
        return None

    @staticmethod
    def _keys(groups: list[list[Item]]) -> frozenset:
        return frozenset(it.ckey for g in groups for it in g)


class Frozen:
    """The frozen schedule and where this rank is in it."""

    def __init__(self, groups: list[list[Item]]) -> None:
        self.groups = groups
        self.k = 0
        self.keys = {it.name: it.ckey for g in groups for it in g}

    @property
    def group(self) -> list[Item]:
        return self.groups[self.k]

    def advance(self) -> None:
        self.k = (self.k + 1) % len(self.groups)

    def fits(self, req: Any) -> bool:
        return self.keys.get(req.name) == req.ckey
