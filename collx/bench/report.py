"""nccl-tests-style text output of collx-bench: the header and one row per (op, size).

Columns as nccl-tests prints them (size, count, type, redop, root; then time, algbw, busbw,
#wrong for out-of-place and for in-place), then what nccl-tests cannot show: the p50/p99 of
single out-of-place calls, and the algorithm and transport collx actually used.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TextIO

from .measure import busbw_factor

_W = (12, 12, 8, 7, 5)          # size count type redop root
_T = (9, 8, 8, 7)               # time algbw busbw #wrong


@dataclass
class Timing:
    """One measured variant (out-of-place or in-place) of one row."""
    us: float
    nbytes: int
    op: str
    n: int
    wrong: int | None           # None: not checked (-c 0)

    @property
    def algbw(self) -> float:
        return self.nbytes / self.us / 1e3 if self.us > 0 else 0.0

    @property
    def busbw(self) -> float:
        return self.algbw * busbw_factor(self.op, self.n)


@dataclass
class Row:
    nbytes: int
    count: int
    type_name: str
    redop: str
    root: int
    oop: Timing
    inplace: Timing | None
    p50_us: float
    p99_us: float
    algo: str
    transport: str


def _time(us: float) -> str:
    return f"{us:.2f}" if us < 1e5 else f"{us:.0f}"


def _variant(t: Timing | None) -> str:
    if t is None:
        return "".join(f"{'-':>{w}}" for w in _T)
    wrong = "N/A" if t.wrong is None else str(t.wrong)
    return (f"{_time(t.us):>{_T[0]}}{t.algbw:>{_T[1]}.2f}{t.busbw:>{_T[2]}.2f}"
            f"{wrong:>{_T[3]}}")


def header(version: str, n: int, transport: str, variant: str, dtype: str, timing: str,
           pct: str, load: float | None) -> str:
    """The block printed once before any table."""
    host = socket.gethostname()
    lines = [
        f"# collx-bench: {version}, np {n}, transport {transport}, host {host}, "
        f"load1 {load}",
        f"# reduce kernel variant ({dtype}): {variant}",
        f"# timing: {timing}",
        f"# p50/p99: {pct}",
        "# busbw = algbw x 2(n-1)/n allreduce, (n-1)/n allgather/reducescatter/alltoall, "
        "1 broadcast; GB = 1e9 B; #wrong summed over ranks",
    ]
    return "\n".join(lines)


def table_header(op: str) -> str:
    """Three comment lines naming the columns, like nccl-tests (one block per op)."""
    lead = sum(_W)
    var = sum(_T)
    tail = f"{'p50':>9}{'p99':>9}  {'algo':<12}{'transport':<9}"
    return "\n".join([
        f"#\n# collective: {op}",
        "#" + " " * (lead - 1) + f"{'out-of-place':>{var}}{'in-place':>{var}}"
        + f"{'per call (oop)':>18}",
        f"#{'size':>{_W[0] - 1}}{'count':>{_W[1]}}{'type':>{_W[2]}}{'redop':>{_W[3]}}"
        f"{'root':>{_W[4]}}"
        + (f"{'time':>{_T[0]}}{'algbw':>{_T[1]}}{'busbw':>{_T[2]}}{'#wrong':>{_T[3]}}") * 2
        + tail,
        f"#{'(B)':>{_W[0] - 1}}{'(elements)':>{_W[1]}}{'':>{_W[2] + _W[3] + _W[4]}}"
        + (f"{'(us)':>{_T[0]}}{'(GB/s)':>{_T[1]}}{'(GB/s)':>{_T[2]}}{'':>{_T[3]}}") * 2
        + f"{'(us)':>9}{'(us)':>9}",
    ])


def format_row(row: Row) -> str:
    """One data line of the table."""
    return (f"{row.nbytes:>{_W[0]}}{row.count:>{_W[1]}}{row.type_name:>{_W[2]}}"
            f"{row.redop:>{_W[3]}}{row.root:>{_W[4]}}"
            f"{_variant(row.oop)}{_variant(row.inplace)}"
            f"{_time(row.p50_us):>9}{_time(row.p99_us):>9}  {row.algo:<11} {row.transport}")


def footer(rows: list[Row]) -> str:
    """nccl-tests' closing lines: out-of-bounds count and the average bus bandwidth."""
    wrong = sum((r.oop.wrong or 0) + ((r.inplace.wrong or 0) if r.inplace else 0)
                for r in rows)
    bws = [r.oop.busbw for r in rows]
    avg = sum(bws) / len(bws) if bws else 0.0
    return (f"# Out of bounds values : {wrong} {'OK' if wrong == 0 else 'FAILED'}\n"
            f"# Avg bus bandwidth    : {avg:.4g}\n#")


def emit(text: str, stream: TextIO) -> None:
    stream.write(text + "\n")
    stream.flush()
