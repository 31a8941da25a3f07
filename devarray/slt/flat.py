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
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters")
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
