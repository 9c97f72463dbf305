"""DistributedOptimizer: gradients are averaged over the ranks while backward still runs.

Each parameter gets a post-accumulate-grad hook; the moment autograd has accumulated a
parameter's gradient (the last of ``backward_passes_per_step`` passes), the hook starts an
in-place async allreduce of it, so communication of the last layers overlaps the backward
of the first ones. ``step()`` waits only for what is still pending (``synchronize()``),
writes the reduced gradients back and runs the wrapped optimizer's step.

The returned object is an instance of a class made on the fly as a subclass of the
wrapped optimizer's class (``isinstance(opt, torch.optim.SGD)`` holds), sharing its
param_groups, defaults and state.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Iterable

import numpy as np
import torch

from collx.runtime import timeline as _timeline

from . import mpi_ops as _ops
from .compression import Compression, int8_roundtrip


class _DistributedOptimizer(torch.optim.Optimizer):
    """Methods copied into the dynamic subclass; never instantiated itself."""

    def _collx_setup(self, named_parameters: Any, compression: Any,
                     backward_passes_per_step: int, op: int, gradient_predivide_factor: float,
                     groups: Any, sparse_as_dense: bool, process_set: Any) -> None:
        self._compression = compression
        if named_parameters is not None:
            named_parameters = list(named_parameters)
        else:
            # stable names the response cache keeps (auto-named "*.noname.*" are never cached)
            named_parameters = [(f"DistributedOptimizer.param.{i}.{j}", p)
                                for i, group in enumerate(self.param_groups)
                                for j, p in enumerate(group["params"])]
        if any(not isinstance(p, tuple) for p in named_parameters):
            raise ValueError("named_parameters must be a sequence of (name, parameter) "
                             "tuples, as model.named_parameters() yields")
        names = [k for k, _ in named_parameters]
        dups = sorted({k for k in names if names.count(k) > 1})
        if dups:
            raise ValueError(f"parameter names in named_parameters must be unique; "
                             f"duplicates: {', '.join(dups)}")
        named_ids = {id(p) for _, p in named_parameters}
        unnamed = [p for g in self.param_groups for p in g["params"] if id(p) not in named_ids]
        if unnamed:
            raise ValueError(f"named_parameters was given, but {len(unnamed)} parameter(s) of "
                             f"the optimizer are not in it (shapes "
                             f"{[tuple(p.shape) for p in unnamed][:5]})")
        self._parameter_names = {p: k for k, p in named_parameters}
        self.backward_passes_per_step = backward_passes_per_step
        self._allreduce_delay = {p: backward_passes_per_step for _, p in named_parameters}
        self.op = op
        self.gradient_predivide_factor = gradient_predivide_factor
        self.sparse_as_dense = sparse_as_dense
        self.process_set = process_set
        self._handles: dict[Any, tuple[Any, Any]] = {}
        self._hook_handles: list[Any] = []
        self._requires_update: list[torch.Tensor] = []     # param_groups order
        self._residuals: dict[torch.Tensor, np.ndarray] = {}  # int8 error feedback
        self._synchronized = False
        self._should_synchronize = True
        self._fired = 0                 # hooks fired since the last synchronize (timeline)
        self._groups = groups
        self._p_to_group: dict[torch.Tensor, tuple] = {}
        self._group_counts: dict[tuple, int] = {}
        included = process_set is None or process_set.included()
        if included and _ops._set_size(process_set) > 1:
            self._register_hooks()

    # ---- hooks ----------------------------------------------------------------------

    def _register_hooks(self) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        if self._groups is not None:
            self._form_groups(params)
        for p in params:
            self._requires_update.append(p)
            self._hook_handles.append(p.register_post_accumulate_grad_hook(self._make_hook(p)))

    def _form_groups(self, params: list) -> None:
        groups = self._groups
        if isinstance(groups, list):
            seen: set[int] = set()
            p_groups = []
            ids = {id(p) for p in params}
            for group in groups:
                members = []
                for p in group:
                    if not isinstance(p, torch.Tensor):
                        raise ValueError("groups must be lists of torch.Tensor parameters")
                    if id(p) in seen:
                        raise ValueError("a parameter can only appear once in groups")
                    seen.add(id(p))
                    if id(p) in ids:
                        members.append(p)
                if members:
                    p_groups.append(members)
            p_groups += [[p] for p in params if id(p) not in seen]
        elif isinstance(groups, int) and groups > 0:
            k = min(groups, len(params)) or 1
            q, r = divmod(len(params), k)
            bounds = [i * q + min(i, r) for i in range(k + 1)]
            p_groups = [params[bounds[i]:bounds[i + 1]] for i in range(k)]
        else:
            raise ValueError(f"groups must be a positive integer or a list of lists of "
                             f"parameters, not {groups!r}")
        for group in p_groups:
            key = tuple(group)
            for p in group:
                self._p_to_group[p] = key
            self._group_counts[key] = 0

    def _make_hook(self, p: torch.Tensor):
        def hook(param: torch.Tensor) -> None:
            # timeline: BACKWARD spans the first to the last gradient of each pass
            self._fired += 1
            k = self._fired % len(self._requires_update)
            if k == 1 or len(self._requires_update) == 1:
                _timeline.begin("backward", "BACKWARD")
            if k == 0:
                _timeline.end("backward", "BACKWARD")
            if self._allreduce_delay[p] <= 0:
                raise AssertionError(
                    f"gradient of {self._parameter_names.get(p)!r} was computed more than "
                    f"backward_passes_per_step={self.backward_passes_per_step} times before "
                    f"step(); raise backward_passes_per_step to accumulate locally")
            self._allreduce_delay[p] -= 1
            if self._allreduce_delay[p] > 0:
                self._handles.setdefault(p, (None, None))
                return
            if self._groups is not None:
                group = self._p_to_group[p]
                self._group_counts[group] += 1
                if self._group_counts[group] == len(group):
                    for gp in group:
                        self._handles.pop(gp, None)
                    self._handles[group] = self._grouped_allreduce_grad_async(group)
                    self._group_counts[group] = 0
                else:
                    self._handles[p] = (None, None)
                return
            self._handles[p] = self._allreduce_grad_async(p)
        return hook

    # ---- one gradient ---------------------------------------------------------------

    def _scales(self) -> tuple[float, float]:
        if self.op == _ops.Average and self.gradient_predivide_factor != 1.0:
            return 1.0 / self.gradient_predivide_factor, self.gradient_predivide_factor
        return 1.0, 1.0

    def _allreduce_grad_async(self, p: torch.Tensor) -> tuple[Any, Any]:
        if p.grad is None:
            # this rank computed no gradient, another may have: contribute zeros
            p.grad = torch.zeros_like(p)
        name = self._parameter_names.get(p)
        tensor = p.grad
        if tensor.is_sparse:
            if not self.sparse_as_dense:
                return _ops.sparse_allreduce_async(tensor, name, self.op, self.process_set), None
            tensor = tensor.to_dense()
        if not tensor.is_contiguous():
            tensor = tensor.contiguous()
        prescale, postscale = self._scales()
        if self._compression.quantized and tensor.is_floating_point():
            return self._int8_grad_async(p, tensor, name, prescale, postscale), None
        compressed, ctx = self._compression.compress(tensor)
        handle = _ops.allreduce_async_(compressed, name=name, op=self.op,
                                       prescale_factor=prescale, postscale_factor=postscale,
                                       process_set=self.process_set)
        return handle, ctx

    def _int8_grad_async(self, p: torch.Tensor, tensor: torch.Tensor, name: str,
                         prescale: float, postscale: float) -> Any:
        """Error feedback: send g + residual, keep what quantization lost for next time.
        (gradient_predivide_factor guards float16 sums against overflow; the int8 path
        accumulates in float32, where 1/f before and f after the sum change nothing, so
        it is not applied.)"""
        work = tensor if tensor.dtype in (torch.float32, torch.float64) else tensor.float()
        arr = work.detach().numpy()
        residual = self._residuals.get(p)
        if residual is not None:
            arr += residual
        block = self._compression.block
        self._residuals[p] = arr - int8_roundtrip(arr, block)
        return _ops._allreduce_start(work, None, name, self.op, 1.0, 1.0, self.process_set,
                                     True, block=block)

    def _grouped_allreduce_grad_async(self, group: tuple) -> tuple[Any, Any]:
        name = self._parameter_names.get(group[0])
        for gp in group:
            if gp.grad is None:
                gp.grad = torch.zeros_like(gp)
        if self._compression.quantized:
            return tuple(self._allreduce_grad_async(gp)[0] for gp in group), None
        pairs = [self._compression.compress(gp.grad) for gp in group]
        prescale, postscale = self._scales()
        handle = _ops.grouped_allreduce_async_([c for c, _ in pairs], name=name, op=self.op,
                                               prescale_factor=prescale,
                                               postscale_factor=postscale,
                                               process_set=self.process_set)
        return handle, [c for _, c in pairs]

    def _write_back(self, p: torch.Tensor, output: torch.Tensor, ctx: Any) -> None:
        self._allreduce_delay[p] = self.backward_passes_per_step
        grad = p.grad
        if grad.is_sparse:
            result = self._compression.decompress(output, ctx)
            p.grad = result if result.is_sparse else result.to_sparse()
            return
        if output is grad:
            return
        grad.copy_(self._compression.decompress(output, ctx))

    # ---- synchronize / step ---------------------------------------------------------

    def synchronize(self) -> None:
        """Finish every gradient's allreduce (starting those no hook started, in
        param_groups order) and write the results into the .grad tensors."""
        if self.process_set is not None and not self.process_set.included():
            self._synchronized = True
            return
        if self._requires_update and self._fired % len(self._requires_update):
            _timeline.end("backward", "BACKWARD")
        self._fired = 0
        done: set[Any] = set()
        for key, (handle, _) in self._handles.items():
            if handle is not None:
                done.update(key) if isinstance(key, tuple) else done.add(key)
        for p in self._requires_update:
            if p not in done:
                self._handles.pop(p, None)
                if self._groups is not None:
                    self._group_counts[self._p_to_group[p]] = 0
                self._handles[p] = self._allreduce_grad_async(p)
        for key, (handle, ctx) in self._handles.items():
            if isinstance(key, tuple):            # a group
                if isinstance(handle, tuple):     # int8: one handle per member
                    for gp, h in zip(key, handle):
                        self._write_back(gp, _ops.synchronize(h), None)
                    continue
                outputs = _ops.synchronize(handle)
                for gp, out, c in zip(key, outputs, ctx):
                    self._write_back(gp, out, c)
            else:
                self._write_back(key, _ops.synchronize(handle), ctx)
        self._handles.clear()
        self._synchronized = True

    @contextmanager
    def skip_synchronize(self):
        """step() inside this context does not synchronize (call synchronize() before it,
        e.g. to clip the reduced gradients)."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure: Any = None) -> Any:
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called after optimizer.synchronize() without "
                              "optimizer.skip_synchronize(): the gradients are reduced twice "
                              "in time; wrap step() in skip_synchronize()")
            self.synchronize()
        self._synchronized = False
        return super(self.__class__, self).step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._handles:
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but "
                                 "before optimizer.step() or optimizer.synchronize(); the "
                                 "pending allreduces would race with it")
        return super(self.__class__, self).zero_grad(set_to_none)

    def set_backward_passes_per_step(self, passes: int) -> None:
        self.backward_passes_per_step = passes
        for p in self._allreduce_delay:
            self._allreduce_delay[p] = passes

    def load_state_dict(self, state_dict: dict) -> None:
        self._handles = {}
        self._synchronized = False
        self._should_synchronize = True
        for p in self._allreduce_delay:
            self._allreduce_delay[p] = self.backward_passes_per_step
        super(self.__class__, self).load_state_dict(state_dict)


_METHODS = {k: v for k, v in _DistributedOptimizer.__dict__.items()
            if k not in ("__dict__", "__weakref__", "__init__")}


def DistributedOptimizer(optimizer: torch.optim.Optimizer,
                         named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
                         compression: Any = Compression.none,
                         backward_passes_per_step: int = 1, op: int = _ops.Average,
                         gradient_predivide_factor: float = 1.0, num_groups: int = 0,
                         groups: Any = None, sparse_as_dense: bool = False,
                         process_set: Any = None) -> torch.optim.Optimizer:
    """Wrap ``optimizer`` so that step() applies gradients averaged (op) over the ranks.

    ``named_parameters`` names each gradient's allreduce (the names must agree across
    ranks); ``backward_passes_per_step`` passes accumulate locally before one allreduce;
    ``gradient_predivide_factor`` f scales by 1/f before the sum and f/size after it
    (op=Average only); ``groups`` (int or list of lists of parameters) reduces those
    gradients together as one grouped allreduce; ``sparse_as_dense`` reduces sparse
    gradients as dense ones; ``process_set`` limits the reduction to a subset of ranks.
    """
    _ops._check_op(op, "DistributedOptimizer")
    if gradient_predivide_factor != 1.0 and op != _ops.Average:
        raise ValueError("gradient_predivide_factor is supported with op=Average only")
    if backward_passes_per_step < 1:
        raise ValueError(f"backward_passes_per_step must be >= 1, not "
                         f"{backward_passes_per_step}")
    if num_groups:
        warnings.warn("num_groups is deprecated; use groups=", DeprecationWarning, stacklevel=2)
        if groups is None:
            groups = num_groups
    base = optimizer.__class__
    cls = type(base.__name__, (base,), dict(_METHODS))
    opt = cls.__new__(cls)
    # the base Optimizer.__init__ (the wrapped class's own __init__ only validates its
    # hyper-parameters into defaults, which we take as they are)
    torch.optim.Optimizer.__init__(opt, optimizer.param_groups, optimizer.defaults)
    for k, v in vars(optimizer).items():     # e.g. LBFGS's private caches
        if k not in vars(opt):
            setattr(opt, k, v)
    opt.state = optimizer.state
    opt._collx_setup(named_parameters, compression, backward_passes_per_step, op,
                     gradient_predivide_factor, groups, sparse_as_dense, process_set)
    return opt
