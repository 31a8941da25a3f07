"""Behavioural observables of the regression transformer (paper §7, appendix D.1).

All are measured on the probe (:mod:`devarray.observables.regression.probes`). Positions ``k`` are the
paper's 1-based example indices: ``k = 1`` is the prediction of y_1 from x_1 alone. Losses are
the squared error of eq. (2), averaged over the probe's contexts.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from devarray.observables.registry import observable
from devarray.observables.regression.probes import OOD_KINDS, Probe, forward, ood_predictions


def _loss_k(model, probe: Probe) -> torch.Tensor:
    """ℓ_k of eq. (2) on the probe, (K,) float64."""
    return (forward(model, probe).pred - probe.y.double()).square().mean(0)


def _per_k(values: torch.Tensor, probe: Probe) -> xr.DataArray:
    return xr.DataArray(values.numpy(), dims=("k",), coords={"k": np.arange(1, probe.task.K + 1)})


@observable(
    name="prediction_scale",
    task="regression",
    variables={
        "pred_sq_k": dict(dims=("k",), long_name="mean square prediction at position k"),
        "pred_sq": dict(dims=(), long_name="mean square prediction"),
    },
)
def prediction_scale(model, probe: Probe) -> xr.Dataset:
    """Mean square prediction E[ŷ_k²] over probe contexts, per position and averaged over k: the
    mean square distance to the zero predictor (figure 5a; figure D.1a). It falls in stage LR1 as
    the model learns the context-independent prediction."""
    sq = forward(model, probe).pred.square().mean(0)
    return xr.Dataset({"pred_sq_k": _per_k(sq, probe), "pred_sq": sq.mean().item()})


@observable(
    name="task_prior_distance",
    task="regression",
    variables={
        "task_prior_dist_k": dict(dims=("k",), long_name="distance to task prior prediction at position k"),
        "task_prior_dist": dict(dims=(), long_name="distance to task prior prediction"),
    },
)
def task_prior_distance(model, probe: Probe) -> xr.Dataset:
    """Task prior score (D.1.1, figure D.1b): mean square distance E[(ŷ_k − t̄ᵀx_k)²] between the
    model's predictions and the context-free prediction with the task prior mean t̄ (the mean of
    the finite task set; zero for M = ∞, where it equals the mean square prediction)."""
    prior = probe.x.double() @ probe.task_mean
    d = (forward(model, probe).pred - prior).square().mean(0)
    return xr.Dataset({"task_prior_dist_k": _per_k(d, probe), "task_prior_dist": d.mean().item()})


@observable(
    name="position_loss",
    task="regression",
    variables={
        "loss_k": dict(dims=("k",), long_name="loss at position k", description="Model loss ℓ_k (eq. 2) on the probe."),
        "ridge_loss_k": dict(
            dims=("k",),
            long_name="ridge loss at position k",
            description="Loss ℓ_k of ridge regression with λ = σ² (Bayes-optimal for M = ∞) on the probe.",
        ),
        "ridge_gap_k": dict(
            dims=("k",),
            long_name="loss above ridge at position k",
            description="Model loss minus ridge loss at position k: how far the model is from Bayes-optimal ICL.",
        ),
    },
)
def position_loss(model, probe: Probe) -> xr.Dataset:
    """Per-position loss of the model and of the ridge predictor on the probe, and their difference."""
    loss = _loss_k(model, probe)
    ridge = (probe.ridge - probe.y.double()).square().mean(0)
    return xr.Dataset(
        {
            "loss_k": _per_k(loss, probe),
            "ridge_loss_k": _per_k(ridge, probe),
            "ridge_gap_k": _per_k(loss - ridge, probe),
        }
    )


@observable(
    name="icl_scores",
    task="regression",
    variables={
        "icl_1_D": dict(dims=(), long_name="ICL score 1:D", description="ICL_{1:D} = ℓ_D − ℓ_1 (D.1.2)."),
        "icl_D_K": dict(dims=(), long_name="ICL score D:K", description="ICL_{D:K} = ℓ_K − ℓ_D (D.1.2)."),
    },
)
def icl_scores(model, probe: Probe) -> xr.Dataset:
    """ICL scores of D.1.2 (figure D.2): ICL_{1:D} = ℓ_D − ℓ_1, the loss at position D minus the
    loss at position 1 (how well the model locates the task from its first examples), and
    ICL_{D:K} = ℓ_K − ℓ_D (how well it refines the estimate with further examples). Positions are
    1-based and losses are those of eq. (2) on the probe; as for the language model's ICL score
    (C.1.3), more negative is better in-context learning. With D = 4, K = 8 these are the paper's
    "ICL scores between inputs 1 and 4 and inputs 4 and 8"."""
    D, K = probe.task.D, probe.task.K
    if D > K:
        raise ValueError(f"ICL_{{1:D}} needs D <= K, got D={D}, K={K}")
    loss = _loss_k(model, probe)
    return xr.Dataset({"icl_1_D": (loss[D - 1] - loss[0]).item(), "icl_D_K": (loss[K - 1] - loss[D - 1]).item()})


@observable(
    name="ood",
    task="regression",
    variables={
        "ood_nmse": dict(
            dims=("kind", "g"),
            long_name="normalised OOD loss",
            description="Loss on OOD inputs x ~ N(0, gI) (eq. 18) or tasks t ~ N(0, gI) (eq. 19), divided by g² "
            "(figure D.3 top); averaged over positions and contexts.",
        ),
        "ood_abs_pred": dict(
            dims=("kind", "g"),
            long_name="mean |ŷ| on OOD data",
            description="Mean absolute prediction |ŷ_k| on OOD inputs or tasks (figure D.3 bottom).",
        ),
    },
)
def ood(model, probe: Probe) -> xr.Dataset:
    """Out-of-distribution behaviour (D.1.3, figures 5b and D.3) over the probe's gains g, for
    kind = "inputs" (eq. 18) and kind = "tasks" (eq. 19). g is a variance gain, as in the
    equations: x ~ N(0, gI) has standard deviation √g."""
    pred = ood_predictions(model, probe)
    mse = (pred - probe.ood_y.double()).square().mean((2, 3))
    g2 = torch.as_tensor(probe.gains, dtype=torch.float64) ** 2
    coords = {"kind": list(OOD_KINDS), "g": probe.gains}
    return xr.Dataset(
        {
            "ood_nmse": xr.DataArray((mse / g2).numpy(), dims=("kind", "g"), coords=coords),
            "ood_abs_pred": xr.DataArray(pred.abs().mean((2, 3)).numpy(), dims=("kind", "g"), coords=coords),
        }
    )
