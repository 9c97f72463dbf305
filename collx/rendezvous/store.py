"""The rendezvous Store: a tiny key-value service every rank of a job can reach.

Ranks use it to find each other before any data connection exists: they publish opaque
address blobs under agreed keys, count arrivals with ``add`` and block on each other's keys
with ``get``/``wait``. The interface is the one Gloo's ``rendezvous/store.h`` and torch's
``Store`` converged on, so implementations are interchangeable:

- :class:`collx.rendezvous.memory.InProcessStore` — threads-as-ranks tests;
- :class:`collx.rendezvous.tcp.TCPStore` — a client of the launcher's
  :class:`~collx.rendezvous.tcp.TCPStoreServer`.

Every blocking call has a deadline (``timeout=`` or ``COLLX_TIMEOUT``) and raises
:class:`collx.errors.CollxTimeout` naming the key(s) and the store when it passes.
"""
from __future__ import annotations

import abc
from typing import Iterable

from .. import config
from ..errors import InvalidUsage


class Store(abc.ABC):
    """Abstract key-value rendezvous store. Keys are ``str``, values ``bytes``."""

    @abc.abstractmethod
    def set(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` (overwriting) and wake every waiter on it."""

    @abc.abstractmethod
    def get(self, key: str, timeout: float | None = None) -> bytes:
        """Value of ``key``; blocks until it exists. CollxTimeout after ``timeout`` s."""

    @abc.abstractmethod
    def add(self, key: str, amount: int) -> int:
        """Atomically add ``amount`` to the counter ``key`` (missing = 0); return the new
        value. Counters are stored as decimal ASCII so ``get`` reads them (b"12")."""

    @abc.abstractmethod
    def wait(self, keys: list[str], timeout: float | None = None) -> None:
        """Block until every key in ``keys`` exists. CollxTimeout names the missing ones."""

    @abc.abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; True when it existed."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release resources; later calls raise CollxError. Idempotent."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        """Short name used in error messages, e.g. ``TCPStore(127.0.0.1:29500)``."""
        return type(self).__name__


def resolve_timeout(timeout: float | None, default: float | None = None) -> float:
    """The deadline in seconds a blocking call uses: ``timeout``, else ``default``, else the
    COLLX_TIMEOUT knob. Negative values are refused."""
    if timeout is None:
        timeout = default if default is not None else config.get("COLLX_TIMEOUT")
    timeout = float(timeout)
    if timeout < 0:
        raise InvalidUsage(f"timeout must be >= 0 seconds, got {timeout}")
    return timeout


def check_key(key: object) -> str:
    """Refuse non-str or empty keys before anything is stored or sent."""
    if not isinstance(key, str) or not key:
        raise InvalidUsage(f"store keys are non-empty str, got {key!r}")
    return key


def check_keys(keys: Iterable[str]) -> list[str]:
    if isinstance(keys, (str, bytes)):
        raise InvalidUsage(f"wait() takes a list of keys, got the single key {keys!r}")
    return [check_key(k) for k in keys]


def check_value(value: object) -> bytes:
    """Values are bytes-like; anything else (str, int) is a programmer error."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidUsage(f"store values are bytes, got {type(value).__name__}; "
                       f"encode it first (e.g. str.encode())")


def parse_counter(key: str, raw: bytes | None) -> int:
    """Current integer value of counter ``key`` (missing = 0)."""
    if raw is None:
        return 0
    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidUsage(f"add({key!r}): the key holds {raw[:32]!r}, not a decimal "
                           f"counter; use a separate key for counters") from exc
