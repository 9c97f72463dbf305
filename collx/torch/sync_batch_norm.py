"""SyncBatchNorm: batch normalization whose statistics cover the batch of every rank.

In training mode the per-channel mean and variance are those of the concatenation of all
ranks' batches: one allreduce (Sum) of [per-channel sums | element count], then one of the
per-channel sums of squared deviations from that mean (two passes: no cancellation in
E[x^2] - E[x]^2). Both allreduces are differentiable (collx.torch.allreduce: the gradient
of a Sum is the Sum of the gradients), so autograd gives every rank the gradient of the
sum of all ranks' losses, as torch's and Horovod's SyncBatchNorm do. Running statistics
are updated from the global mean and the unbiased global variance. In eval mode, or on a
single rank, it is plain batch normalization.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from . import mpi_ops as _ops
from .autograd import allreduce


class SyncBatchNorm(_BatchNorm):
    """Drop-in for torch.nn.BatchNorm{1,2,3}d (Horovod's hvd.SyncBatchNorm).

    Its allreduces are named after the order in which modules first run in training mode
    (the same on every rank, as for any un-named collective), so that later steps hit the
    negotiated engine's response cache instead of being described anew every step."""

    _collx_count = 0

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_set: Any = None, device: Any = None, dtype: Any = None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats,
                         device=device, dtype=dtype)
        self.process_set = process_set
        self._collx_name: str | None = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm: expected at least 2D input (got {input.dim()}D)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or _ops._set_size(self.process_set) == 1:
            return super().forward(input)
        if self._collx_name is None:
            self._collx_name = f"sync_batch_norm.{SyncBatchNorm._collx_count}"
            SyncBatchNorm._collx_count += 1
        name = self._collx_name
        dtype = input.dtype
        if dtype in (torch.float16, torch.bfloat16):   # exact counts, stable sums
            input = input.float()
        c = input.size(1)
        dims = [0] + list(range(2, input.dim()))
        shape = [1, c] + [1] * (input.dim() - 2)
        count = torch.tensor([float(input.numel() // c)], dtype=input.dtype)
        sums = allreduce(torch.cat([input.sum(dims), count]), op=_ops.Sum,
                         name=f"{name}.sums", process_set=self.process_set)
        n = sums[c]
        mean = sums[:c] / n
        centred = input - mean.reshape(shape)
        var = allreduce((centred * centred).sum(dims), op=_ops.Sum,
                        name=f"{name}.var", process_set=self.process_set) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * (n / (n - 1)) if float(n) > 1 else var
                self.running_mean.mul_(1 - f).add_(mean.detach(), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased.detach(), alpha=f)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out.to(dtype)
