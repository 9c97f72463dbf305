"""The timeline: a Chrome trace (JSON array of trace events) of what the negotiated engine
did with every tensor, written by rank 0; it opens in Perfetto (ui.perfetto.dev) and
chrome://tracing.

Each tensor is one trace "process" (``pid``; its name in a ``process_name`` metadata event),
so its phases line up on one row:

    NEGOTIATE   submit → the cycle in which every rank of its process set had announced it
    QUEUE       ready → its response starts executing (responses run one after another)
    FUSE        copying into the fusion buffer (fused allreduces only)
    ALLREDUCE…  the collective itself; args: algorithm, transport, bytes, fused tensors
    UNFUSE      copying out of the fusion buffer

``COLLX_TIMELINE=path`` starts it at init; ``collx.start_timeline(path, mark_cycles)`` /
``collx.stop_timeline()`` at run time. ``mark_cycles`` adds an instant event per coordination
cycle that produced work. Other layers add their own spans through the module functions
(``span``, ``begin``, ``end``, ``instant``) — collx.torch marks BACKWARD this way; they are
no-ops (one attribute read) while no timeline is active, and on every rank but 0.

Events are appended as ``{...},\\n`` lines after an opening ``[``; ``stop`` writes the closing
``]``, so a stopped file is valid JSON (an unstopped one is still readable by the viewers,
which accept a missing ``]``). Writes are buffered and guarded by one lock: the worker and
user threads may both record.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Iterator

_current: "Timeline | None" = None
_rank = 0
_lock = threading.Lock()


class Timeline:
    def __init__(self, path: str, mark_cycles: bool = False) -> None:
        self.path = path
        self.mark_cycles = mark_cycles
        self._file = open(path, "w", buffering=1 << 16)
        self._file.write("[\n")
        self._pids: dict[str, int] = {}
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._closed = False
        self._emit({"name": "process_name", "ph": "M", "pid": 0,
                    "args": {"name": "collx engine"}})

    def _us(self, t: float | None) -> float:
        return round(((time.perf_counter() if t is None else t) - self._t0) * 1e6, 3)

    def _emit(self, event: dict) -> None:
        if not self._closed:
            self._file.write(json.dumps(event, separators=(",", ":")) + ",\n")

    def _pid(self, tensor: str) -> int:
        pid = self._pids.get(tensor)
        if pid is None:
            pid = self._pids[tensor] = len(self._pids) + 1
            self._emit({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": tensor}})
            self._emit({"name": "process_sort_index", "ph": "M", "pid": pid,
                        "args": {"sort_index": pid}})
        return pid

    def complete(self, tensor: str, phase: str, start: float, end: float | None = None,
                 args: dict | None = None) -> None:
        """One finished phase (perf_counter() times) of ``tensor``: an ``X`` event."""
        with self._lock:
            ev = {"name": phase, "ph": "X", "pid": self._pid(tensor), "tid": 0,
                  "ts": self._us(start), "dur": max(0.0, round(self._us(end) - self._us(start), 3))}
            if args:
                ev["args"] = args
            self._emit(ev)

    def begin(self, tensor: str, phase: str, args: dict | None = None) -> None:
        with self._lock:
            ev = {"name": phase, "ph": "B", "pid": self._pid(tensor), "tid": 0, "ts": self._us(None)}
            if args:
                ev["args"] = args
            self._emit(ev)

    def end(self, tensor: str, phase: str) -> None:
        with self._lock:
            self._emit({"name": phase, "ph": "E", "pid": self._pid(tensor), "tid": 0,
                        "ts": self._us(None)})

    def instant(self, name: str, args: dict | None = None) -> None:
        with self._lock:
            ev = {"name": name, "ph": "i", "s": "g", "pid": 0, "tid": 0, "ts": self._us(None)}
            if args:
                ev["args"] = args
            self._emit(ev)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            # a last event without the trailing comma, then the closing bracket
            self._file.write(json.dumps({"name": "timeline_end", "ph": "i", "s": "g", "pid": 0,
                                         "tid": 0, "ts": self._us(None)}) + "\n]\n")
            self._closed = True
            self._file.close()


def set_rank(rank: int) -> None:
    """Which rank this process is (only rank 0 records); set by collx.init()."""
    global _rank
    _rank = rank


def start(path: str, mark_cycles: bool = False) -> None:
    """Start writing ``path`` (rank 0 only; elsewhere a no-op). Replaces a running timeline."""
    global _current
    if _rank != 0:
        return
    with _lock:
        old, _current = _current, None
        if old is not None:
            old.close()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _current = Timeline(path, mark_cycles)


def stop() -> None:
    global _current
    with _lock:
        old, _current = _current, None
    if old is not None:
        old.close()


def active() -> "Timeline | None":
    """The running timeline, or None (the cheap check before building event arguments)."""
    return _current


def begin(tensor: str, phase: str, args: dict | None = None) -> None:
    tl = _current
    if tl is not None:
        tl.begin(tensor, phase, args)


def end(tensor: str, phase: str) -> None:
    tl = _current
    if tl is not None:
        tl.end(tensor, phase)


def instant(name: str, args: dict | None = None) -> None:
    tl = _current
    if tl is not None:
        tl.instant(name, args)


@contextlib.contextmanager
def span(tensor: str, phase: str, args: dict | None = None) -> Iterator[None]:
    """``with timeline.span("model", "BACKWARD"): ...`` — a phase on ``tensor``'s row."""
    tl = _current
    if tl is None:
        yield
        return
    t0 = time.perf_counter()
    try:
        yield
    finally:
        tl.complete(tensor, phase, t0, None, args)


def complete(tensor: str, phase: str, start_t: float, end_t: float | None = None,
             args: dict | None = None) -> None:
    tl = _current
    if tl is not None:
        tl.complete(tensor, phase, start_t, end_t, args)


def mark_cycles() -> bool:
    tl = _current
    return tl is not None and tl.mark_cycles


__all__ = ["Timeline", "active", "begin", "complete", "end", "instant", "mark_cycles",
           "set_rank", "span", "start", "stop"]

