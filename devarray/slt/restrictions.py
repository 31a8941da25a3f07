"""Weight restrictions for the refined LLC: SGLD over a subset of the parameters, the rest frozen at w*.

The weight-refined LLC (Wang et al., ICLR 2025, "Differentiation and specialization of attention
heads via the refined local learning coefficient"; devinterp 2.0's weight restrictions) is eq. (3)
with the posterior over a subset V of the coordinates of w and the others held at w*:

    λ̂_V(w*) = nβ [ E^β_{w_V | w*, γ}[ℓ_n(w_V, w*_{¬V})] − ℓ_n(w*) ]

A :class:`Restriction` names V as a boolean mask per parameter tensor (``None``: the whole
tensor). Build one from parameter names (:func:`from_names`), from boolean masks
(:func:`from_masks`), or from a setting's vocabulary (``"head 0.3"``, ``"layer 1 attn"``, …;
:meth:`devarray.settings.Setting.restrictions`). :func:`resolve` turns any of those into a
Restriction of a given model, refusing names and shapes the model does not have.

For a model that is a sum of parts depending on disjoint blocks of parameters, the refined LLC
of a block is that block's own learning coefficient and the blocks' LLCs add up to the whole
(tested with the A.1 potentials); a part the loss does not depend on has refined LLC 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

ALL = "all"


@dataclass(frozen=True, eq=False)
class Restriction:
    """The sampled coordinates V: parameter name (``model.named_parameters()``) -> boolean mask of
    that tensor's shape, or ``None`` for the whole tensor. Every other parameter is frozen at w*."""

    name: str
    masks: Mapping[str, torch.Tensor | None]

    def size(self, model: nn.Module) -> int:
        """d_V, the number of sampled coordinates."""
        params = dict(model.named_parameters())
        return sum(params[k].numel() if m is None else int(m.sum()) for k, m in self.masks.items())

    def is_everything(self, model: nn.Module) -> bool:
        trainable = {k for k, p in model.named_parameters() if p.requires_grad}
        return set(self.masks) == trainable and all(m is None or bool(m.all()) for m in self.masks.values())

    def describe(self) -> str:
        """The parameter tensors it touches, ``[sliced]`` where only part of a tensor is sampled."""
        return ", ".join(k + ("" if m is None or bool(m.all()) else " [sliced]") for k, m in self.masks.items())


def everything(model: nn.Module) -> Restriction:
    """V = every trainable parameter: the ordinary LLC."""
    return Restriction(ALL, {k: None for k, p in model.named_parameters() if p.requires_grad})


def _check_names(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Parameter]:
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    unknown = [k for k in names if k not in params]
    if unknown:
        shown = ", ".join(list(params)[:8]) + (", …" if len(params) > 8 else "")
        raise ValueError(f"the model has no trainable parameter {unknown[0]!r}; its parameters are {shown}")
    return params


def from_names(model: nn.Module, names: Iterable[str], name: str | None = None) -> Restriction:
    """V = the whole of each named parameter tensor."""
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("a restriction needs at least one parameter name")
    _check_names(model, names)
    return Restriction(name or "+".join(names), {k: None for k in names})


def from_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], name: str | None = None) -> Restriction:
    """V = the True entries of boolean masks, one per named parameter (same shape)."""
    params = _check_names(model, masks)
    out = {}
    for k, m in masks.items():
        m = torch.as_tensor(m)
        if m.dtype != torch.bool:
            raise ValueError(f"the mask of {k!r} must be boolean, got {m.dtype}")
        if tuple(m.shape) != tuple(params[k].shape):
            raise ValueError(f"the mask of {k!r} has shape {tuple(m.shape)}, the parameter {tuple(params[k].shape)}")
        if m.any():
            out[k] = m.to(params[k].device)
    if not out:
        raise ValueError("the masks select no parameter; a restriction needs at least one coordinate")
    return Restriction(name or "mask", out)


def resolve(model: nn.Module, spec, vocabulary: Mapping[str, Restriction] | None = None) -> Restriction:
    """A Restriction of ``model`` from a Restriction, a name of ``vocabulary``, an iterable of
    parameter names or a mapping of boolean masks."""
    if isinstance(spec, Restriction):
        _check_names(model, spec.masks)
        return spec
    if isinstance(spec, str):
        if spec == ALL:
            return everything(model)
        if vocabulary is not None and spec in vocabulary:
            return vocabulary[spec]
        if vocabulary is None and spec in dict(model.named_parameters()):
            return from_names(model, [spec], spec)
        known = ", ".join(vocabulary) if vocabulary else "all, or parameter names"
        raise ValueError(f"unknown restriction {spec!r}; choose one of {known}")
    if isinstance(spec, Mapping):
        return from_masks(model, spec)
    return from_names(model, spec)


def head_masks(model: nn.Module, slices: Mapping[str, tuple[int, slice | int]], name: str) -> Restriction:
    """A head's coordinates: per parameter name, (axis, index) selecting the head's rows or columns."""
    params = _check_names(model, slices)
    masks = {}
    for k, (axis, index) in slices.items():
        m = torch.zeros_like(params[k], dtype=torch.bool)
        where = [slice(None)] * m.ndim
        where[axis] = index
        m[tuple(where)] = True
        masks[k] = m
    return Restriction(name, masks)
