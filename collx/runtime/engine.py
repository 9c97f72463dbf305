"""The engine: runs prepared jobs in call order, inline or on the one background worker.

Every rank must run its collectives in the same order. Async calls queue their job; a
synchronous call runs inline on the caller's thread when nothing is queued or running (no
thread hand-off for a small synchronous message) and otherwise queues behind the pending
work and waits, so program order is kept either way. The worker is a plain Python thread;
the C executor it calls releases the GIL.
"""
from __future__ import annotations

import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections import deque
from typing import Any, Callable

from ..errors import CollxTimeout, InvalidUsage


class Handle:
    """The future of an async collective: poll() it or synchronize() on it.

    Completion is signalled by releasing a lock taken at creation (cheaper to make than a
    threading.Event: the negotiated engine makes one per tensor, as the base class of its
    requests)."""

    __slots__ = ("name", "_lock", "_done", "_result", "_error")

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = lock = _allocate_lock()
        lock.acquire()
        self._done = False
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._done

    def wait(self, timeout: float | None = None) -> Any:
        if not self._done:
            if timeout is None:
                got = self._lock.acquire()
            elif timeout > 0:
                got = self._lock.acquire(True, timeout)
            else:
                got = self._lock.acquire(False)
            if not got:
                raise CollxTimeout(f"collx.synchronize: {self.name} not done after {timeout} s")
            self._lock.release()          # let other waiters through
        if self._error is not None:
            raise self._error
        return self._result

    def _finish(self, result: Any, error: BaseException | None) -> None:
        if self._done:
            return
        self._result, self._error = result, error
        self._done = True
        self._lock.release()


def finish_all(handles: list, results: list) -> None:
    """``h._finish(r, None)`` for each pair (the negotiated engine's hot path)."""
    for h, res in zip(handles, results):
        if h is not None and not h._done:
            h._result = res
            h._done = True
            h._lock.release()


class GroupHandle:
    """Several handles as one: wait() returns the list of their results (the first error
    raises, after every member finished or failed)."""

    __slots__ = ("name", "handles")

    def __init__(self, handles: list, name: str) -> None:
        self.name = name
        self.handles = handles

    def done(self) -> bool:
        return all(h.done() for h in self.handles)

    def wait(self, timeout: float | None = None) -> list:
        results, error = [], None
        deadline = None if timeout is None else time.monotonic() + timeout
        for h in self.handles:
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                results.append(h.wait(left))
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if isinstance(exc, CollxTimeout) and timeout is not None:
                    raise
                error = error or exc
                results.append(None)
        if error is not None:
            raise error
        return results


class Engine:
    """Call-order execution. ``_exec`` makes the executor single-entry (inline calls and the
    worker both hold it while a job runs); ``_cv`` guards the queue and ``_busy``, which
    keep program order between sync and async calls."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._exec = threading.Lock()
        self._queue: deque[tuple[Callable[[], Any], Handle]] = deque()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], Any], name: str) -> Handle:
        handle = Handle(name)
        with self._cv:
            if self._closed:
                raise InvalidUsage(f"collx: {name} after shutdown(); call collx.init() first")
            self._queue.append((job, handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="collx-worker", daemon=True)
                self._thread.start()
            self._cv.notify_all()
        return handle

    def idle_sync(self) -> bool:
        """True while no async call was ever made: a synchronous call may run inline."""
        return self._thread is None

    def run(self, job: Callable[[], Any], name: str) -> Any:
        """Run synchronously, in call order: inline when nothing is pending."""
        if self._thread is None:          # no async call yet: nothing can be pending
            with self._exec:
                return job()
        with self._cv:
            inline = not self._queue and not self._busy
            if inline:
                self._busy = True
        if not inline:
            return self.submit(job, name).wait()
        try:
            with self._exec:
                return job()
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (not self._queue or self._busy):
                    self._cv.wait()
                if self._closed and not self._queue:
                    return
                job, handle = self._queue.popleft()
                self._busy = True
            try:
                with self._exec:
                    result, error = job(), None
            except BaseException as exc:  # noqa: BLE001 - handed to the caller via the handle
                result, error = None, exc
            with self._cv:
                self._busy = False
                self._cv.notify_all()
            handle._finish(result, error)

    def drain(self, timeout: float | None = None) -> None:
        with self._cv:
            self._cv.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
