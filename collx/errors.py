"""The exceptions collx raises. C status codes become these in exactly one place
(collx/_status.py); Python code raises them directly with messages that name the op, the
ranks involved and the fix."""
from __future__ import annotations


class CollxError(RuntimeError):
    """Base of every collx error."""


class TransportError(CollxError):
    """A peer vanished or a connection broke. The communicator is unusable afterwards:
    shut down and re-initialize."""


class CollxTimeout(CollxError, TimeoutError):
    """A blocking call passed its deadline (COLLX_TIMEOUT or the call's timeout=)."""


class MismatchError(CollxError):
    """Ranks disagree about a collective: different op, size, dtype, root or tag."""


class InvalidUsage(CollxError, ValueError):
    """Programmer error, refused before anything was sent."""
