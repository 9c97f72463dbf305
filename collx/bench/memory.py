"""Peak resident memory one call adds beyond its (already touched) input and output.

Method, Linux: the caller allocates and touches every buffer first; then we read VmRSS,
reset the high-water mark by writing ``5`` to ``/proc/self/clear_refs`` (VmHWM becomes the
current RSS), make exactly one call, and read VmHWM. ``VmHWM - VmRSS_before`` is what the
call needed on top of the buffers the caller owns: staging copies, scratch, mapped peer
segments (shared pages count once they are touched), allocator growth. Where the reset is
not allowed we fall back to a thread sampling VmRSS every 0.5 ms during the call (the C
executor releases the GIL), which can miss very short peaks; the result says which method
measured it.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

MiB = float(1 << 20)


def status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM, RssShmem ...), None if absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sampled_peak(call: Callable[[], object]) -> int:
    """Peak VmRSS (KiB) seen by a sampling thread while call() runs."""
    peak = [status_kib("VmRSS") or 0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], status_kib("VmRSS") or 0)
            time.sleep(0.0005)
    t = threading.Thread(target=sample, name="collx-bench-rss", daemon=True)
    t.start()
    try:
        call()
    finally:
        stop.set()
        t.join()
    return max(peak[0], status_kib("VmRSS") or 0)


def extra_rss(call: Callable[[], object]) -> tuple[float, str]:
    """(MiB of resident memory the call added at its peak, method name)."""
    before = status_kib("VmRSS")
    if before is None:
        return float("nan"), "unavailable"
    if reset_hwm():
        before = status_kib("VmRSS") or before
        call()
        hwm = status_kib("VmHWM") or before
        return max(0, hwm - before) * 1024 / MiB, "VmHWM"
    return max(0, _sampled_peak(call) - before) * 1024 / MiB, "sampled-VmRSS"
