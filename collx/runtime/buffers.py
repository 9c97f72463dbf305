"""Buffer acquisition and dtype mapping: every collective goes through ``as_array``.

Any C-contiguous object numpy can view without a copy is accepted (numpy arrays,
memoryview, bytearray, array.array, objects with the buffer protocol). Reductions need a
dtype with a C kernel; moves (broadcast, gather, alltoall ...) accept any dtype and travel
as bytes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .. import _C
from ..errors import InvalidUsage

BYTE_CODE = _C.UINT8


def _dtype_table() -> dict[np.dtype, int]:
    table = {}
    for code, name in enumerate(_C.DTYPE_NAMES):
        try:
            dt = np.dtype(name)
        except TypeError:
            try:   # bfloat16 comes from ml_dtypes where installed
                import ml_dtypes  # type: ignore[import-not-found]
                dt = np.dtype(getattr(ml_dtypes, name))
            except (ImportError, AttributeError, TypeError):
                continue
        if dt.isnative:
            table[dt] = code
    return table


# keyed by dtype object: hashing a dtype is cheap, dtype.name is not (hot path)
_CODES: dict[np.dtype, int] = _dtype_table()


def dtype_code(dtype: np.dtype) -> int | None:
    """The C dtype code for a numpy dtype (native byte order only), or None."""
    return _CODES.get(dtype)


def as_array(x: Any, op: str, what: str = "input", writable: bool = False) -> np.ndarray:
    """View x as a numpy array without copying; refuse what the C side cannot take."""
    if type(x) is np.ndarray:
        arr = x
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(memoryview(x))
        except TypeError:
            raise InvalidUsage(f"collx.{op}: {what} of type {type(x).__name__} does not expose "
                               f"a buffer; pass a numpy array (or a torch tensor through "
                               f"collx.torch)") from None
    if not arr.flags.c_contiguous:
        raise InvalidUsage(f"collx.{op}: {what} is not C-contiguous (shape {arr.shape}, strides "
                           f"{arr.strides}); pass np.ascontiguousarray(x)")
    if writable and not arr.flags.writeable:
        raise InvalidUsage(f"collx.{op}: {what} is read-only; pass a writable array as out=")
    if arr.dtype.hasobject:
        raise InvalidUsage(f"collx.{op}: {what} has dtype object; collx moves raw buffers only")
    return arr


def reduce_code(arr: np.ndarray, op: str) -> int:
    code = dtype_code(arr.dtype)
    if code is None:
        raise InvalidUsage(f"collx.{op}: no reduction kernel for dtype {arr.dtype}; supported: "
                           f"{', '.join(_C.DTYPE_NAMES)} (native byte order)")
    return code


def check_out(out: Any, op: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Validate a caller's out= (or allocate one)."""
    if out is None:
        return np.empty(shape, dtype)
    if type(out) is np.ndarray and out.shape == shape and out.dtype == dtype:
        flags = out.flags        # hot path: one flags object, no re-wrapping
        if flags.c_contiguous and flags.writeable:
            return out
    arr = as_array(out, op, "out", writable=True)
    if arr.shape != tuple(shape) or arr.dtype != dtype:
        raise InvalidUsage(f"collx.{op}: out has shape {arr.shape} and dtype {arr.dtype}; "
                           f"this call needs shape {tuple(shape)} and dtype {dtype}")
    return arr
