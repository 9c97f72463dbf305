"""Rank-side helpers shared by the worker scripts (imported as ``worker``: the script's own
folder is first on sys.path).

``start()`` arms a watchdog first — past ``COLLX_TEST_WATCHDOG`` seconds the process dumps
every thread's stack to stderr and exits 1, so a hang turns into a failure with a trace —
then initializes collx. ``Checker`` compares results with an exact numpy reference and
reports the first bad element; ``finish()`` prints the final OK line the pytest side
requires of every rank.
"""
from __future__ import annotations

import faulthandler
import json
import os
import sys
from collections import Counter
from typing import Any

import numpy as np

MAX_FAILURES = 10


def arm_watchdog() -> None:
    seconds = float(os.environ.get("COLLX_TEST_WATCHDOG", "120"))
    faulthandler.dump_traceback_later(seconds, exit=True)


def start(timeout: float | None = None):
    """Watchdog, then collx.init(); returns the collx module."""
    arm_watchdog()
    import collx
    collx.init(timeout)
    return collx


def say(*parts: Any) -> None:
    print(*parts, flush=True)


class Checker:
    """Exact comparison against a reference; counts what was checked per collective."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.checks = 0
        self.failures = 0
        self.covered: Counter[str] = Counter()

    def fail(self, what: str, detail: str) -> None:
        self.failures += 1
        say(f"FAIL rank={self.rank} {what}: {detail}")
        if self.failures >= MAX_FAILURES:
            say(f"FAIL rank={self.rank}: stopping after {self.failures} failures")
            sys.stdout.flush()
            os._exit(1)

    def equal(self, what: str, got: Any, want: np.ndarray) -> bool:
        """got must be an ndarray of want's dtype and shape, equal element by element."""
        self.checks += 1
        if not isinstance(got, np.ndarray):
            self.fail(what, f"result is {type(got).__name__}, not an ndarray")
            return False
        if got.dtype != want.dtype or got.shape != want.shape:
            self.fail(what, f"result has dtype {got.dtype} shape {got.shape}; want dtype "
                            f"{want.dtype} shape {want.shape}")
            return False
        eq = got == want
        if not eq.all():
            flat = np.flatnonzero(~eq.reshape(-1))
            i = int(flat[0])
            self.fail(what, f"{flat.size} of {want.size} elements differ; first bad index {i}: "
                            f"got {got.reshape(-1)[i]!r} want {want.reshape(-1)[i]!r}")
            return False
        return True

    def true(self, what: str, cond: bool, detail: str = "") -> bool:
        self.checks += 1
        if not cond:
            self.fail(what, detail or "condition is false")
        return bool(cond)

    def cover(self, name: str) -> None:
        self.covered[name] += 1

    def finish(self, **extra: Any) -> None:
        """Exit 1 after any failure; otherwise print the final OK line."""
        if self.failures:
            say(f"FAIL rank={self.rank}: {self.failures} failure(s) in {self.checks} checks")
            sys.exit(1)
        info = {"rank": self.rank, "checks": self.checks, "covered": dict(self.covered), **extra}
        say("OK " + json.dumps(info, sort_keys=True))
