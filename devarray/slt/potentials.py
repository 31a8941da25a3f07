"""Potentials with known learning coefficients (paper appendix A.1, figure 2).

Each potential is a tiny ``nn.Module`` whose parameter ``w`` starts at the minimum w* = 0 and
whose ``forward()`` returns the population loss L(w); ``true_llc`` is λ(0). Use them with
:func:`potential_loss` and any dataset (it is ignored, e.g. :func:`dummy_dataset`), so the
"minibatch loss" is the exact population loss and eq. (3) estimates λ with no data noise.

For these potentials the localized posterior exp(−nβ L(w) − γ/2 |w|²) gives
E[nβ (L(w) − L(0))] → λ as γ/nβ → 0 (for pure monomials exactly λ at γ = 0), which is what
the known-answer tests check.
"""

from __future__ import annotations

import torch
from torch import nn


class Potential(nn.Module):
    """L(w) on ℝ^d with minimum 0 at w = 0."""

    true_llc: float

    def __init__(self, d: int, dtype: torch.dtype = torch.float64):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=dtype))


class Quadratic(Potential):
    """Σ a_i w_i²: nondegenerate, λ = d/2 whatever the coefficients a_i > 0 (A.1)."""

    def __init__(self, coefficients: tuple[float, ...] = (1.0, 1.0, 1.0)):
        if not coefficients or min(coefficients) <= 0:
            raise ValueError(f"quadratic coefficients must be positive, got {coefficients}")
        super().__init__(len(coefficients))
        self.register_buffer("a", torch.tensor(coefficients, dtype=self.w.dtype))
        self.true_llc = len(coefficients) / 2

    def forward(self) -> torch.Tensor:
        return (self.a * self.w**2).sum()


class Quartic(Potential):
    """w₁⁴ + w₂⁴: λ = 1/4 + 1/4 = 1/2 (figure 2, second panel)."""

    true_llc = 0.5

    def __init__(self):
        super().__init__(2)

    def forward(self) -> torch.Tensor:
        return (self.w**4).sum()


class Mixed(Potential):
    """w₁² + w₂⁴ + w₃⁴: λ = 1/2 + 1/4 + 1/4 = 1 (A.1)."""

    true_llc = 1.0

    def __init__(self):
        super().__init__(3)

    def forward(self) -> torch.Tensor:
        w = self.w
        return w[0] ** 2 + w[1] ** 4 + w[2] ** 4


class NormalCrossing(Potential):
    """w₁² w₂⁴: λ = min(1/2, 1/4) = 1/4 (figure 2, third panel); not separable, and only
    localization keeps the posterior normalisable along the two axes."""

    true_llc = 0.25

    def __init__(self):
        super().__init__(2)

    def forward(self) -> torch.Tensor:
        return self.w[0] ** 2 * self.w[1] ** 4


class PotentialSum(nn.Module):
    """L(w) = Σ_i L_i(w_i): potentials on separate parameter blocks (named ``parts.<name>.w``).

    The learning coefficient of a sum over disjoint variables is the sum of theirs, and the
    refined LLC of block i (the others frozen at their minimum 0) is λ_i (the known answer of the
    weight-refined LLC, :mod:`devarray.slt.restrictions`)."""

    def __init__(self, **parts: Potential):
        super().__init__()
        if not parts:
            raise ValueError("PotentialSum needs at least one part")
        self.parts = nn.ModuleDict(parts)
        self.true_llc = sum(p.true_llc for p in parts.values())

    def forward(self) -> torch.Tensor:
        return sum(p() for p in self.parts.values())


def potential_loss(model: Potential, *batch: torch.Tensor) -> torch.Tensor:
    """The population loss itself; the batch is ignored."""
    return model()


def dummy_dataset(n: int = 1) -> tuple[torch.Tensor]:
    """A dataset of n empty rows, for samplers that want one."""
    return (torch.zeros(n, 0),)
