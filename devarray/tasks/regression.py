"""In-context linear regression data (paper §3, appendix F.2.2) and its Bayes-optimal predictor.

A context draws one task t ~ N(0, I_D), then K inputs x_k ~ N(0, I_D) and outputs
y_k = tᵀx_k + N(0, σ²). With a finite task set of size M (Raventós et al., 2023) the task is
drawn uniformly from M tasks fixed by the seed. Every draw is made from a ``torch.Generator``
seeded from named streams (:func:`devarray.seeding.derive_seed`), so a (seed, stream) pair always gives the
same numbers, whatever else was drawn before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..seeding import derive_seed, generator

__all__ = [
    "Batch",
    "RegressionTask",
    "derive_seed",
    "generator",
    "mse_loss",
    "per_position_mse",
    "ridge_predict",
    "tokenize",
]


@dataclass(frozen=True)
class Batch:
    """A batch of contexts: tasks ``t`` (n, D), inputs ``x`` (n, K, D), outputs ``y`` (n, K)."""

    t: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor

    @property
    def tokens(self) -> torch.Tensor:
        return tokenize(self.x, self.y)

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True)
class RegressionTask:
    """The data distribution of the regression setting (Table 4 defaults)."""

    D: int = 4
    K: int = 8
    noise_var: float = 0.125
    num_tasks: int | None = None  # M; None means a fresh task per context (M = ∞)
    seed: int = 0

    def __post_init__(self):
        if self.num_tasks is not None and self.num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive integer or None (M = ∞), got {self.num_tasks}")

    def to_dict(self) -> dict:
        return asdict(self)

    def task_set(self) -> torch.Tensor | None:
        """The M fixed tasks (M, D), or None when tasks are fresh."""
        if self.num_tasks is None:
            return None
        return torch.randn(self.num_tasks, self.D, generator=generator(self.seed, "task-set"))

    def sample(
        self,
        n: int,
        gen: torch.Generator,
        *,
        x_scale: float = 1.0,
        t_scale: float = 1.0,
        tasks: torch.Tensor | None = None,
    ) -> Batch:
        """``n`` contexts. ``x_scale``/``t_scale`` are the gains g of the OOD sets (eqs. 18–19):
        x ~ N(0, g I) means a standard deviation of sqrt(g). ``tasks`` overrides the task set."""
        tasks = self.task_set() if tasks is None else tasks
        if tasks is None:
            t = torch.randn(n, self.D, generator=gen) * t_scale**0.5
        else:
            t = tasks[torch.randint(len(tasks), (n,), generator=gen)] * t_scale**0.5
        x = torch.randn(n, self.K, self.D, generator=gen) * x_scale**0.5
        noise = torch.randn(n, self.K, generator=gen) * self.noise_var**0.5
        y = torch.einsum("nkd,nd->nk", x, t) + noise
        return Batch(t, x, y)

    def batch_for_step(self, step: int, batch_size: int) -> Batch:
        """The training batch of one step: seeded by (seed, step), so resuming needs no RNG state."""
        return self.sample(batch_size, generator(self.seed, "train", step))

    def dataset(self, n: int, stream: str) -> Batch:
        """A fixed dataset of n contexts from a named stream ('test', 'sgld', ...)."""
        return self.sample(n, generator(self.seed, stream))


def tokenize(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Tokens of F.2.2: x-tokens (0, x_k) at even positions, y-tokens (y_k, 0, …, 0) at odd ones.

    ``x`` (..., K, D), ``y`` (..., K) -> (..., 2K, D+1).
    """
    # built by concatenation, not slice assignment, so that it works under torch.func.vmap
    x_tok = torch.cat([torch.zeros_like(x[..., :1]), x], dim=-1)
    y_tok = torch.cat([y[..., None], torch.zeros_like(x)], dim=-1)
    return torch.stack([x_tok, y_tok], dim=-2).flatten(-3, -2)


def mse_loss(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The regression loss ℓ_n of eq. (2) on a batch of contexts given as (x, y): tokenised here,
    so a dataset of 2²⁰ contexts is held as x and y, 3/5 of the size of its tokens."""
    return ((model.predict(tokenize(x, y)) - y) ** 2).mean()


def ridge_predict(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """ŷ_k = t̂_kᵀ x_k with t̂_k = (X_{<k}ᵀX_{<k} + λI)⁻¹ X_{<k}ᵀ y_{<k}, for every k at once.

    With λ = σ² and t ~ N(0, I) this is the posterior mean of the task, i.e. the Bayes-optimal
    in-context predictor for M = ∞. ``x`` (n, K, D), ``y`` (n, K) -> (n, K); ŷ_1 = 0.
    """
    n, K, D = x.shape
    outer = torch.einsum("nki,nkj->nkij", x, x)
    xy = x * y[..., None]
    # exclusive prefix sums: position k sees pairs j < k
    A = torch.cumsum(outer, dim=1) - outer + lam * torch.eye(D, dtype=x.dtype)
    b = torch.cumsum(xy, dim=1) - xy
    t_hat = torch.linalg.solve(A, b[..., None])[..., 0]
    return (t_hat * x).sum(-1)


def per_position_mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ℓ_{n,k} of eq. (2): mean over contexts of (ŷ_k − y_k)², shape (K,)."""
    return ((pred - y) ** 2).mean(0)
