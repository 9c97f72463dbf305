"""Schedule IR: what a collective does, as data.

A ``Schedule`` holds, for every rank, an ordered list of ``Step``s from a small vocabulary:

    SEND(peer, buf[off:off+count])                 send a range to a peer
    RECV(peer, buf[off:off+count])                 receive a peer's bytes into a range
    RECV_REDUCE(peer, buf[off..], src_buf[src_off..])
                                                   buf = src (op) incoming, elementwise
    COPY(buf[off..], src_buf[src_off..])           local copy

Offsets and counts are in ELEMENTS (algorithms are dtype-agnostic); ``pack.py`` turns them
into bytes for the C executor. Buffers are ``IN`` (the caller's input, never written),
``OUT`` (the result) and ``SCRATCH`` (per-rank temporary of ``scratch_counts[rank]``
elements). In-place calls pass the same memory as IN and OUT, so every schedule must also be
correct when IN and OUT alias (the simulator checks both).

Rules the executor relies on (and the simulator enforces):
  * Messages between two ranks match in FIFO order per direction: the k-th SEND from a to b
    meets the k-th RECV/RECV_REDUCE on b from a, with the same count.
  * ``deps`` name earlier steps of the same rank that must be *complete* before this step
    starts. Steps to the same peer in the same direction are *posted* in list order, but
    posting order is not completion order: only deps order completions.
  * A SEND's source range may be read at any moment until the step completes (a peer may
    pull it), so nothing may write that range unless ordered by deps. Zero-count messages
    are real messages (used by barrier).

The step-kind numbers equal the C enum ``cx_step_kind`` in csrc/include/cx.h;
tests/test_constants.py checks them against ``collx._C`` (this package imports nothing
else from collx, so it cannot read them at import time).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class Kind(IntEnum):
    SEND = 0
    RECV = 1
    RECV_REDUCE = 2
    COPY = 3


class Buf(IntEnum):
    IN = 0
    OUT = 1
    SCRATCH = 2


@dataclass(frozen=True)
class Step:
    kind: Kind
    buf: Buf
    off: int
    count: int
    peer: int = -1
    src_buf: Buf = Buf.IN
    src_off: int = 0
    deps: tuple[int, ...] = ()


def send(peer: int, buf: Buf, off: int, count: int, deps: tuple[int, ...] = ()) -> Step:
    return Step(Kind.SEND, buf, off, count, peer=peer, deps=tuple(deps))


def recv(peer: int, buf: Buf, off: int, count: int, deps: tuple[int, ...] = ()) -> Step:
    return Step(Kind.RECV, buf, off, count, peer=peer, deps=tuple(deps))


def recv_reduce(peer: int, buf: Buf, off: int, count: int, src_buf: Buf, src_off: int,
                deps: tuple[int, ...] = ()) -> Step:
    return Step(Kind.RECV_REDUCE, buf, off, count, peer=peer, src_buf=src_buf,
                src_off=src_off, deps=tuple(deps))


def copy(buf: Buf, off: int, count: int, src_buf: Buf, src_off: int,
         deps: tuple[int, ...] = ()) -> Step:
    return Step(Kind.COPY, buf, off, count, src_buf=src_buf, src_off=src_off, deps=tuple(deps))


@dataclass
class Schedule:
    """A collective for all ranks of a group of ``world_size``.

    ``in_counts[r]`` / ``out_counts[r]`` / ``scratch_counts[r]``: elements of rank r's
    buffers the steps may touch (0 = the rank passes no such buffer). ``reduces`` says
    whether RECV_REDUCE steps appear (the caller must supply an op).
    """
    op: str
    algo: str
    world_size: int
    steps: list[list[Step]]
    in_counts: list[int]
    out_counts: list[int]
    scratch_counts: list[int] = field(default_factory=list)
    reduces: bool = False

    def __post_init__(self) -> None:
        if not self.scratch_counts:
            self.scratch_counts = [0] * self.world_size

    def rank_steps(self, rank: int) -> list[Step]:
        return self.steps[rank]


_new = object.__new__


def make_step(kind: Kind, buf: Buf, off: int, count: int, peer: int, src_buf: Buf,
              src_off: int, deps: tuple[int, ...]) -> Step:
    """``Step(kind, buf, off, count, peer, src_buf, src_off, deps)`` without the frozen
    dataclass's per-field ``object.__setattr__`` (about 4x faster); for generators that
    build tens of thousands of steps. The result equals the ``Step(...)`` one."""
    s = _new(Step)
    d = s.__dict__
    d["kind"] = kind
    d["buf"] = buf
    d["off"] = off
    d["count"] = count
    d["peer"] = peer
    d["src_buf"] = src_buf
    d["src_off"] = src_off
    d["deps"] = deps
    return s
