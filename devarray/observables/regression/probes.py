"""Probe data: the fixed inputs on which every checkpoint of a run is measured.

A :class:`Probe` is drawn once from seeded named streams (``generator("observables", seed,
...)``), so the same (task, seed) gives the same inputs in the training loop, in a pipeline
worker and in a rerun, and observables of different checkpoints differ only through the weights.

It holds an in-distribution batch (the size of the paper's test set, N_test = 2048, Table 4)
with the ridge predictions on it, out-of-distribution batches over a grid of gains g (appendix
D.1.3, eqs. 18–19), and the task prior mean t̄ (D.1.1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from devarray.observables.registry import cached
from devarray.tasks.regression import RegressionTask, generator, ridge_predict, tokenize

OOD_KINDS = ("inputs", "tasks")
DEFAULT_GAINS = np.logspace(-1, 2, 13)


@dataclass(frozen=True, eq=False)
class Probe:
    """Fixed probe data of the regression task. Shapes: n contexts in distribution, ``n_ood``
    per gain; ``ood_*`` arrays lead with (kind, g) for kind in :data:`OOD_KINDS`."""

    task: RegressionTask
    seed: int
    x: torch.Tensor  # (n, K, D)
    y: torch.Tensor  # (n, K)
    t: torch.Tensor  # (n, D)
    tokens: torch.Tensor  # (n, 2K, D+1)
    ridge: torch.Tensor  # (n, K) ridge predictions with λ = σ², float64
    gains: np.ndarray  # (g,)
    ood_t: torch.Tensor  # (kind, g, n_ood, D)
    ood_x: torch.Tensor  # (kind, g, n_ood, K, D)
    ood_y: torch.Tensor  # (kind, g, n_ood, K)
    ood_tokens: torch.Tensor  # (kind, g, n_ood, 2K, D+1)
    task_mean: torch.Tensor  # (D,) float64 t̄: mean of the finite task set, zero for M = ∞

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def n_ood(self) -> int:
        return self.ood_x.shape[2]

    def attrs(self) -> dict:
        """What identifies the probe, to store with the observables it measured."""
        return {"probe_seed": self.seed, "probe_n": self.n, "probe_n_ood": self.n_ood}


def make_probe(
    task: RegressionTask, seed: int, n: int = 2048, n_ood: int = 256, gains: np.ndarray | None = None
) -> Probe:
    """The probe of ``task`` for probe seed ``seed``.

    OOD inputs (eq. 18) scale x to N(0, gI) and keep the run's task distribution (its task set
    when M is finite); OOD tasks (eq. 19) draw t ~ N(0, gI) afresh, which at g = 1 is the "true"
    distribution of Raventós et al. for finite M. Each kind draws its standard normals once from
    its own stream and scales them by √g, so curves over g are free of resampling noise.
    """
    gains = DEFAULT_GAINS if gains is None else np.asarray(gains, dtype=float)
    if n < 1 or n_ood < 1 or gains.ndim != 1 or not (gains > 0).all():
        raise ValueError(
            f"make_probe needs n, n_ood >= 1 and a 1-d array of positive gains; got n={n}, "
            f"n_ood={n_ood}, gains={gains.tolist()}"
        )
    batch = task.sample(n, generator("observables", seed, "in-distribution"))
    fresh_tasks = dataclasses.replace(task, num_tasks=None)
    ood = [
        [task.sample(n_ood, generator("observables", seed, "ood-inputs"), x_scale=g) for g in gains],
        [fresh_tasks.sample(n_ood, generator("observables", seed, "ood-tasks"), t_scale=g) for g in gains],
    ]
    ood_t, ood_x, ood_y = (torch.stack([torch.stack([getattr(b, a) for b in kind]) for kind in ood]) for a in "txy")
    task_set = task.task_set()
    return Probe(
        task=task,
        seed=seed,
        x=batch.x,
        y=batch.y,
        t=batch.t,
        tokens=batch.tokens,
        ridge=ridge_predict(batch.x.double(), batch.y.double(), task.noise_var),
        gains=gains,
        ood_t=ood_t,
        ood_x=ood_x,
        ood_y=ood_y,
        ood_tokens=tokenize(ood_x.flatten(0, 2), ood_y.flatten(0, 2)).view(*ood_y.shape[:3], 2 * task.K, task.D + 1),
        task_mean=torch.zeros(task.D, dtype=torch.float64) if task_set is None else task_set.double().mean(0),
    )


@dataclass(frozen=True)
class Forward:
    """One forward pass over the in-distribution batch: predictions ŷ (n, K) in float64 on the CPU
    and the attention patterns of every block, stacked (L, n, H, 2K, 2K), on the model's device."""

    pred: torch.Tensor
    attention: torch.Tensor


def forward(model: torch.nn.Module, probe: Probe) -> Forward:
    """The model on the in-distribution batch, run once per :func:`compute` call and shared by
    every behavioural and attention observable."""

    def run() -> Forward:
        outs, patterns = zip(*(model(chunk, return_attention=True) for chunk in _chunks(model, probe.tokens)))
        out = torch.cat(outs)
        attention = torch.stack([torch.cat(block) for block in zip(*patterns)]) if patterns[0] else out.new_zeros(0)
        return Forward(out[:, 0::2, 0].double().cpu(), attention)

    return cached(("forward", id(model), id(probe)), run)


def ood_predictions(model: torch.nn.Module, probe: Probe) -> torch.Tensor:
    """ŷ on every OOD batch in one pass, float64 (kind, g, n_ood, K)."""

    def run() -> torch.Tensor:
        out = torch.cat([model(chunk) for chunk in _chunks(model, probe.ood_tokens.flatten(0, 2))])
        return out[:, 0::2, 0].double().cpu().view(probe.ood_y.shape)

    return cached(("ood", id(model), id(probe)), run)


# Contexts per model call: on a CPU the activations of a few hundred contexts stay in cache,
# which made the paper-size forward pass 3x faster than one call over thousands of contexts.
CHUNK = 512


def _chunks(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``tokens`` on the model's device and in its dtype (a parameter-free model takes them as
    they are), split into :data:`CHUNK`-context pieces."""
    param = next(model.parameters(), None)
    tokens = tokens if param is None else tokens.to(device=param.device, dtype=param.dtype)
    return tokens.split(CHUNK)
