"""Gradient compression, Horovod's ``Compression`` plus block-quantized int8.

``compress(tensor) -> (tensor_to_send, ctx)`` and ``decompress(tensor, ctx)`` bracket the
allreduce. fp16/bf16 halve the bytes on the wire (non-float tensors pass unchanged); the
reduction itself runs in the compressed dtype, as in Horovod.

``Compression.int8`` is not a cast: it makes the allreduce itself quantized
(``collx.quantized_allreduce``: per-block float32 scales of ``block`` elements, int8 on the
wire, contributions dequantized and accumulated in float32 at the shard's owner, the sum
requantized once for the allgather). Each element of the result is off by at most
``(1 + 2^-6) * sum_i max|block_i| / 127`` (Sum; divided by n for Average), from
rounding each contribution and the reduced sum once each (derivation in
collx/runtime/quantize.py). Inside ``DistributedOptimizer`` it also keeps *error
feedback*: the part of each gradient that this rank's quantization lost is added to its
next gradient, so the error does not accumulate over steps.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Compressor:
    """Interface: compress before the allreduce, decompress after."""

    quantized = False

    @staticmethod
    def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        raise NotImplementedError


class NoneCompressor(Compressor):
    """No compression."""

    @staticmethod
    def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return tensor, None

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor


class _CastCompressor(Compressor):
    wire: torch.dtype = torch.float16

    @classmethod
    def compress(cls, tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if tensor.dtype.is_floating_point and tensor.dtype != cls.wire:
            return tensor.to(cls.wire), tensor.dtype
        return tensor, None

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor if ctx is None else tensor.to(ctx)


class FP16Compressor(_CastCompressor):
    """Floating-point tensors travel (and are summed) as float16."""
    wire = torch.float16


class BF16Compressor(_CastCompressor):
    """Floating-point tensors travel (and are summed) as bfloat16: float32's range, 8 bits
    of mantissa."""
    wire = torch.bfloat16


class Int8Compressor(Compressor):
    """Marks the allreduce as int8 block-quantized (see the module docstring); compress
    and decompress are the identity."""

    quantized = True
    block = 64

    @staticmethod
    def compress(tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return tensor, None

    @staticmethod
    def decompress(tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor


def int8_roundtrip(x: np.ndarray, block: int) -> np.ndarray:
    """What this rank's contribution becomes after int8 block quantization (the same
    functions quantized_allreduce uses), for error feedback."""
    from collx.runtime.quantize import dequantize_blocks, quantize_blocks
    scales, q = quantize_blocks(x, block)
    return dequantize_blocks(scales, q, block, x.dtype).reshape(x.shape)


class Compression:
    """The compression choices: none, fp16, bf16, int8."""

    none = NoneCompressor
    fp16 = FP16Compressor
    bf16 = BF16Compressor
    int8 = Int8Compressor
