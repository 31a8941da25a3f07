"""A model's loss as a function of one flat parameter vector, for SGLD (A.2) and Hessians (B.5).

Both samplers and curvature statistics work in the space of the model's trainable parameters
flattened in ``named_parameters`` order; :class:`FlatLoss` binds ``loss_fn(model, *batch)`` to
that space through ``torch.func.functional_call``, so ``torch.func`` transforms (``grad``,
``vmap``, ``vjp``) apply to it directly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

LossFn = Callable[..., torch.Tensor]
"""``loss_fn(model, *batch) -> scalar``: the mean loss of ``model`` on a batch of rows."""


class _Bound(nn.Module):
    """``loss_fn(model, *batch)`` as a module, so ``functional_call`` can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, *batch):
        return self.loss_fn(self.model, *batch)


class FlatLoss:
    """The loss as a function of one flat vector ``w`` of the model's trainable parameters.

    Parameters with ``requires_grad=False`` stay fixed at their values (and are not counted in
    the dimension d); buffers are read from the model. ``w0`` is the model's current point.
    ``names`` keeps only those trainable parameters in ``w`` (a restricted LLC's tensors, see
    :mod:`devarray.slt.restrictions`): the others are read from the model, frozen at w*, and no
    gradient is taken for them. ``index`` is where ``w``'s entries sit in the vector of all
    trainable parameters (so a restricted chain can draw the same noise as a full one).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, names: list[str] | None = None):
        trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("the model has no trainable parameters")
        offsets, start = {}, 0
        for k, p in trainable:
            offsets[k], start = (start, start + p.numel()), start + p.numel()
        self.full_dim = start
        if names is None:
            named = trainable
        else:
            unknown = sorted(set(names) - set(offsets))
            if unknown:
                raise ValueError(f"no trainable parameter {unknown[0]!r} in the model")
            named = [(k, p) for k, p in trainable if k in set(names)]
        self.param_names = [k for k, _ in named]
        self.index = (
            None if names is None else torch.cat([torch.arange(*offsets[k]) for k, _ in named]).to(named[0][1].device)
        )
        self.names = ["model." + k for k, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.w0 = torch.cat([p.detach().reshape(-1) for _, p in named])
        self.module = _Bound(model, loss_fn)

    @property
    def dim(self) -> int:
        return self.w0.numel()

    def __call__(self, w: torch.Tensor, *batch: torch.Tensor) -> torch.Tensor:
        params = {k: c.view(s) for k, c, s in zip(self.names, torch.split(w, self.numels), self.shapes)}
        return functional_call(self.module, params, batch)
