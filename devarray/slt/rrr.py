"""Reduced-rank regression (RRR): a singular model whose learning coefficient is known exactly.

The model is the linear network f_w(x) = B A x with A ∈ ℝ^{H×M}, B ∈ ℝ^{N×H} and no biases,
in the Gaussian regression p(y | x, w) = N(y; B A x, σ² I_N) with σ known. The truth is
q(y | x) = N(y; W₀ x, σ² I_N) with rank W₀ = r ≤ H, realised at w₀ = (A₀, B₀) (:func:`rrr_truth`).
The loss is the per-sample negative log-likelihood without its constant (N/2) log 2πσ²:

    ℓ_n(w) = (1/n) Σ_i |y_i − B A x_i|² / (2σ²)                                 (:func:`rrr_loss`)

so K(w) = E[ℓ(w)] − E[ℓ(w₀)] = E_x |(BA − W₀) x|² / (2σ²) is the Kullback–Leibler divergence
and nβ in eq. (3) is n times the inverse temperature of the Bayesian posterior. λ does not
depend on the scale of K (nor on the input covariance, a linear change of A), only the
estimator's finite-nβ behaviour does. Its value is Aoyagi & Watanabe's (:func:`rrr_learning_coefficient`).

The local learning coefficient at a point of the true set {BA = W₀} can exceed the global λ;
it equals λ at the most singular point, where the H − r surplus hidden units have zero incoming
and outgoing weights. :func:`rrr_truth` returns that point.

:class:`BlockRRR` puts independent RRR blocks side by side (inputs and outputs split), each in
its own parameter tensors: the loss is the sum of the blocks' losses, so λ is the sum of the
blocks' λ and each block's weight-refined LLC is its own (:mod:`devarray.slt.restrictions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import nn


def rrr_learning_coefficient(M: int, N: int, H: int, r: int) -> Fraction:
    """λ of reduced-rank regression: M inputs, N outputs, H hidden units, true rank r ≤ H.

    Aoyagi & Watanabe (2005), "Stochastic complexities of reduced rank regression in Bayesian
    estimation", Neural Networks 18(7), 924–933, main theorem (also Lau et al., "The local
    learning coefficient: a singularity-aware complexity measure", the deep-linear-network
    experiments, for L = 2 layers):

    1. N + r ≤ M + H, M + r ≤ N + H and H + r ≤ M + N:
         λ = [2(H + r)(M + N) − (M − N)² − (H + r)²] / 8        if M + N + H + r is even (m = 1),
         λ = [2(H + r)(M + N) − (M − N)² − (H + r)² + 1] / 8    if it is odd (multiplicity m = 2);
    2. M + H < N + r:  λ = [H M − H r + N r] / 2;
    3. N + H < M + r:  λ = [H N − H r + M r] / 2;
    4. M + N < H + r:  λ = M N / 2.

    The cases are exclusive (two strict inequalities of 2–4 cannot hold together with r ≤ H).
    Returned exactly, as a Fraction. Regular case r = H ≤ min(M, N): λ = H(M + N − H)/2, half the
    dimension of the rank-H matrices (the GL(H) orbit A → GA, B → BG⁻¹ is flat).
    """
    for name, v in dict(M=M, N=N, H=H, r=r).items():
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v}")
    if r > min(H, M, N):
        raise ValueError(f"the true rank r={r} cannot exceed H={H}, M={M} or N={N}")
    if M + H < N + r:
        return Fraction(H * M - H * r + N * r, 2)
    if N + H < M + r:
        return Fraction(H * N - H * r + M * r, 2)
    if M + N < H + r:
        return Fraction(M * N, 2)
    s = H + r
    odd = (M + N + H + r) % 2
    return Fraction(2 * s * (M + N) - (M - N) ** 2 - s**2 + odd, 8)


def rrr_multiplicity(M: int, N: int, H: int, r: int) -> int:
    """m of the same theorem: 2 in case 1 with M + N + H + r odd, else 1.

    With m = 2 the free energy has a −log log n term and E[nβ K] approaches λ only as
    λ − 1/log(nβ) (slowly): known-answer tests use cases with m = 1."""
    rrr_learning_coefficient(M, N, H, r)  # validates
    central = N + r <= M + H and M + r <= N + H and H + r <= M + N
    return 2 if central and (M + N + H + r) % 2 else 1


class ReducedRankRegression(nn.Module):
    """f(x) = B A x, A: H×M (``A``), B: N×H (``B``), no biases; ``sigma`` is the known noise level."""

    def __init__(self, M: int, N: int, H: int, sigma: float = 1.0, dtype: torch.dtype = torch.float64):
        super().__init__()
        if min(M, N, H) < 1 or not sigma > 0:
            raise ValueError(f"need M, N, H >= 1 and sigma > 0, got M={M}, N={N}, H={H}, sigma={sigma}")
        self.M, self.N, self.H, self.sigma = M, N, H, float(sigma)
        self.A = nn.Parameter(torch.zeros(H, M, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(N, H, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T @ self.B.T


class BlockRRR(nn.Module):
    """Independent RRR blocks: block k reads its own slice of the inputs and writes its own slice
    of the outputs; parameters ``blocks.<k>.A`` and ``blocks.<k>.B``. All share one σ."""

    def __init__(self, *blocks: ReducedRankRegression):
        super().__init__()
        if not blocks or len({b.sigma for b in blocks}) != 1:
            raise ValueError("BlockRRR needs at least one block, all with the same sigma")
        self.blocks = nn.ModuleList(blocks)
        self.M, self.N, self.sigma = sum(b.M for b in blocks), sum(b.N for b in blocks), blocks[0].sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, [b.M for b in self.blocks], dim=-1)
        return torch.cat([b(p) for b, p in zip(self.blocks, parts)], dim=-1)


def rrr_loss(model: ReducedRankRegression | BlockRRR, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ℓ(w) = mean over rows of |y − f_w(x)|² / (2σ²): the negative log-likelihood per sample of
    N(y; f_w(x), σ² I) up to its constant, so that K is the KL divergence (module docstring)."""
    return ((y - model(x)) ** 2).sum(-1).mean() / (2 * model.sigma**2)


def rrr_truth(
    M: int,
    N: int,
    H: int,
    r: int,
    *,
    sigma: float = 1.0,
    seed: int = 0,
    singular_values: Sequence[float] | None = None,
) -> ReducedRankRegression:
    """A model at the most singular point of the true set of a rank-r W₀ = U S Vᵀ.

    A₀ = [√S Vᵀ; 0], B₀ = [U √S, 0]: the first r hidden units carry W₀ balanced (|A₀| = |B₀| per
    unit), the other H − r have zero weights in and out. U, V are random orthonormal (``seed``);
    S defaults to 1, …, r spread evenly over [1, 2] (bounded away from 0, so that the truth is
    rank r at the posterior's scale)."""
    model = ReducedRankRegression(M, N, H, sigma)
    rrr_learning_coefficient(M, N, H, r)  # validates r
    if r == 0:
        return model
    g = torch.Generator().manual_seed(seed)
    s = torch.linspace(2.0, 1.0, r, dtype=torch.float64) if singular_values is None else None
    if singular_values is not None:
        if len(singular_values) != r or min(singular_values) <= 0:
            raise ValueError(f"need r={r} positive singular values, got {singular_values}")
        s = torch.tensor(singular_values, dtype=torch.float64)
    U = torch.linalg.qr(torch.randn(N, r, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(M, r, generator=g, dtype=torch.float64))[0]
    with torch.no_grad():
        model.A[:r] = s.sqrt()[:, None] * V.T
        model.B[:, :r] = U * s.sqrt()
    return model


@torch.no_grad()
def rrr_dataset(
    truth: ReducedRankRegression | BlockRRR,
    n: int,
    *,
    seed: int = 0,
    input_scales: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), n rows: x ~ N(0, diag(input_scales)²) (default the identity), y = f₀(x) + σ ξ with
    ξ ~ N(0, I_N) and f₀ the ``truth`` model at its current parameters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, truth.M, generator=g, dtype=torch.float64)
    if input_scales is not None:
        if len(input_scales) != truth.M:
            raise ValueError(f"need {truth.M} input scales, got {len(input_scales)}")
        x = x * torch.tensor(input_scales, dtype=torch.float64)
    y = truth(x) + truth.sigma * torch.randn(n, truth.N, generator=g, dtype=torch.float64)
    return x, y
