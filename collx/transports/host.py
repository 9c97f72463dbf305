"""Host identity: which ranks share memory. The detection lives in collx.topo.detect (the
only code that reads the machine); this module re-exports it for existing imports."""
from __future__ import annotations

from ..topo.detect import host_identity, kernel_identity

__all__ = ["host_identity", "kernel_identity"]
