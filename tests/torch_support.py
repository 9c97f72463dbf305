"""The torch tests' one prerequisite check: torch installed, or the module is skipped with
the reason — unless COLLX_REQUIRE_TORCH=1 (CI), where a missing torch is a failure."""
from __future__ import annotations

import os
from typing import Any

import pytest


def require_torch() -> Any:
    """``import torch``, or skip the calling test module (fail under COLLX_REQUIRE_TORCH=1)."""
    try:
        import torch
    except ImportError:
        if os.environ.get("COLLX_REQUIRE_TORCH") == "1":
            raise
        pytest.skip("torch is not installed (pip install collx[torch]); COLLX_REQUIRE_TORCH=1 "
                    "turns this skip into a failure", allow_module_level=True)
    return torch
