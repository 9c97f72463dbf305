"""InProcessStore: the Store for threads-as-ranks (tier-2 tests) and the state behind
TCPStoreServer. One dict guarded by one Condition; every set/add wakes all waiters, who
re-check their keys (waiter counts are small, so the simplicity wins)."""
from __future__ import annotations

import threading
import time

from ..errors import CollxError, CollxTimeout, InvalidUsage
from .store import (Store, check_key, check_keys, check_value, parse_counter,
                    resolve_timeout)


class InProcessStore(Store):
    """Thread-safe in-memory Store shared by the threads of one process."""

    def __init__(self, name: str = "InProcessStore") -> None:
        self._data: dict[str, bytes] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._name = name

    def describe(self) -> str:
        return self._name

    def _check_open(self) -> None:
        if self._closed:
            raise CollxError(f"{self._name} is closed")

    def set(self, key: str, value: bytes) -> None:
        key, value = check_key(key), check_value(value)
        with self._cond:
            self._check_open()
            self._data[key] = value
            self._cond.notify_all()

    def get(self, key: str, timeout: float | None = None) -> bytes:
        key = check_key(key)
        self._wait_for([key], resolve_timeout(timeout), "get")
        with self._cond:
            return self._data[key]

    def add(self, key: str, amount: int) -> int:
        key = check_key(key)
        with self._cond:
            self._check_open()
            new = parse_counter(key, self._data.get(key)) + int(amount)
            if not -(1 << 63) <= new < (1 << 63):
                raise InvalidUsage(f"add({key!r}, {amount}): counters are int64; the result "
                                   f"{new} does not fit")
            self._data[key] = str(new).encode("ascii")
            self._cond.notify_all()
            return new

    def wait(self, keys: list[str], timeout: float | None = None) -> None:
        self._wait_for(check_keys(keys), resolve_timeout(timeout), "wait")

    def _wait_for(self, keys: list[str], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._check_open()
                missing = [k for k in keys if k not in self._data]
                if not missing:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CollxTimeout(
                        f"{what}: key(s) {missing!r} did not appear in {self._name} within "
                        f"{timeout:g} s; a rank that should set them may have failed or be "
                        f"slow (raise COLLX_TIMEOUT or pass timeout=)")
                self._cond.wait(min(left, 3600.0))

    def delete(self, key: str) -> bool:
        key = check_key(key)
        with self._cond:
            self._check_open()
            return self._data.pop(key, None) is not None

    def close(self) -> None:
        """Close the store and wake every blocked get/wait with CollxError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def missing(self, keys: list[str]) -> list[str]:
        """Those of ``keys`` not (yet) stored."""
        with self._cond:
            return [k for k in keys if k not in self._data]

    def keys(self) -> list[str]:
        """Snapshot of the stored keys (tests and debugging)."""
        with self._cond:
            return list(self._data)
