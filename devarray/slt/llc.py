"""The LLC estimator (paper §4, eq. 3) and its online traces (appendix A.4.4, eqs. 9–12).

    λ̂(w*) = nβ [ E^β_{w|w*,γ}[ℓ_n(w)] − ℓ_n(w*) ]                                    (3)

The expectation is the average over the kept SGLD draws (eq. 5), with the minibatch losses
ℓ_m(w_τ) that the sampler already computed recycled in place of ℓ_n(w_τ) (A.2). ℓ_n(w*) is
evaluated once, exactly, on a fixed evaluation set: by default the whole dataset (n/m forward
passes, under 1 % of the sampling cost at the paper's settings); ``init_loss_rows`` caps it at
the first rows for very large datasets.

:func:`estimate_llc` takes tensors and returns an ``xarray.Dataset`` that follows ArviZ's
conventions (dimensions ``chain`` and ``draw``), so ``arviz.rhat``/``arviz.ess`` apply to
``loss`` and ``llc_trace`` directly.

Weight-refined LLCs (``restrictions=``, :mod:`devarray.slt.restrictions`) put the same eq. (3) for
each restriction V along a leading ``restriction`` dimension: the posterior is over V alone, the
other weights frozen at w*, and ℓ_n(w*) is shared. A data-refined LLC is eq. (3) with another
dataset in place of the training distribution's: pass that dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from torch import nn

from devarray import schemas

from .diagnostics import (
    DRIFT_THRESHOLD,
    DRIFT_Z,
    MIN_ESS,
    chain_diagnostics,
    default_divergence_threshold,
    warn_unhealthy,
)
from .restrictions import Restriction, resolve
from .sgld import LossFn, SGLDSettings, StackFactory, check_dataset, run_chains, sgld_settings


@torch.no_grad()
def init_loss(
    model: nn.Module, loss_fn: LossFn, dataset: Sequence[torch.Tensor], rows: int | None = None, chunk: int = 1024
) -> float:
    """ℓ_n(w*) on the first ``rows`` rows (all by default), in chunks, weighted by chunk size.

    Exact when ``loss_fn`` is a mean over rows, as every loss here is.
    """
    n = check_dataset(dataset, 1)
    rows = n if rows is None else rows
    if not 1 <= rows <= n:
        raise ValueError(f"init_loss_rows must be between 1 and the dataset's {n} rows, got {rows}")
    device = next(model.parameters()).device
    total = 0.0
    for start in range(0, rows, chunk):
        part = tuple(x[start : min(start + chunk, rows)].to(device) for x in dataset)
        total += float(loss_fn(model, *part)) * len(part[0])
    return total / rows


def llc_per_chain(loss: np.ndarray, init: float, nbeta: float) -> np.ndarray:
    """Eq. (3) per chain: nβ (mean over draws of ℓ_m(w_τ) − ℓ_n(w*)); ``loss`` is (chain, draw)."""
    return nbeta * (loss.mean(axis=-1) - init)


def llc_trace(loss: np.ndarray, init: float, nbeta: float) -> np.ndarray:
    """Online LLC λ̂_τ after each draw τ = 1..T of each chain (eqs. 9–12).

    λ̂_τ = nβ ((1/τ) Σ_{τ'≤τ} ℓ(w_τ') − ℓ(w*))                                        (9)
        = (1/τ) ((τ − 1) λ̂_{τ−1} + nβ (ℓ(w_τ) − ℓ(w*))),   λ̂_0 = 0                   (12)

    computed in the closed form (9) as a cumulative mean; the last entry equals eq. (3).
    """
    tau = np.arange(1, loss.shape[-1] + 1)
    return nbeta * (np.cumsum(loss, axis=-1) / tau - init)


_CHAIN = ("chain",)
_CD = ("chain", "draw")


def _var(name: str, dims: tuple[str, ...], values) -> xr.Variable:
    """A variable of the llc group, its CF attrs from schemas/llc.yaml (the one source)."""
    return xr.Variable(dims, values, schemas.attrs("llc", name))


def llc_dataset(
    loss: np.ndarray,
    init: float,
    settings: SGLDSettings,
    diverged_step: np.ndarray,
    *,
    drift_threshold: float = DRIFT_THRESHOLD,
    drift_z: float = DRIFT_Z,
    min_ess: float = MIN_ESS,
) -> xr.Dataset:
    """Estimates, traces and diagnostics from the kept draws' losses ``loss`` (chain, draw)."""
    nb = settings.nbeta
    per_chain = llc_per_chain(loss, init, nb)
    trace = llc_trace(loss, init, nb)
    d = chain_diagnostics(
        nb * (loss - init), per_chain, diverged_step, drift_threshold=drift_threshold, drift_z=drift_z, min_ess=min_ess
    )
    ok = ~d["diverged"]
    mean = float(per_chain[ok].mean()) if ok.any() else np.nan
    std = float(per_chain[ok].std()) if ok.any() else np.nan
    trace_mean = trace[ok].mean(axis=0) if ok.any() else np.full(loss.shape[1], np.nan)
    C, T = loss.shape
    data = {
        "loss": _var("loss", _CD, loss),
        "llc_trace": _var("llc_trace", _CD, trace),
        "llc_trace_mean": _var("llc_trace_mean", ("draw",), trace_mean),
        "init_loss": _var("init_loss", (), init),
        "llc_mean": _var("llc_mean", (), mean),
        "llc_std": _var("llc_std", (), std),
        "llc_per_chain": _var("llc_per_chain", _CHAIN, per_chain),
        "diverged": _var("diverged", _CHAIN, d["diverged"]),
        "diverged_step": _var("diverged_step", _CHAIN, diverged_step.astype(np.int64)),
        "not_converged": _var("not_converged", _CHAIN, d["not_converged"]),
        "llc_ess": _var("llc_ess", _CHAIN, d["llc_ess"]),
        "escaped": _var("escaped", _CHAIN, d["escaped"]),
        "llc_drift": _var("llc_drift", _CHAIN, d["llc_drift"]),
        "llc_drift_z": _var("llc_drift_z", _CHAIN, d["llc_drift_z"]),
        "all_diverged": _var("all_diverged", (), bool(d["diverged"].all())),
    }
    coords = {"chain": _var("chain", _CHAIN, np.arange(C)), "draw": _var("draw", ("draw",), np.arange(T))}
    attrs = settings.to_dict() | {
        "gamma": settings.localization,
        "num_steps": settings.num_steps,
        "drift_threshold": drift_threshold,
        "drift_z": drift_z,
        "min_ess": min_ess,
    }
    return xr.Dataset(data, coords, attrs)


def estimate_llc(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Sequence[torch.Tensor],
    settings: SGLDSettings | None = None,
    *,
    seed: int = 0,
    method: str = "auto",
    init_loss_rows: int | None = None,
    label: str | None = None,
    warn: bool = True,
    compile: bool = False,
    progress: bool = False,
    divergence_threshold: float | None = None,
    drift_threshold: float = DRIFT_THRESHOLD,
    drift_z: float = DRIFT_Z,
    min_ess: float = MIN_ESS,
    restrictions: Sequence[Restriction | str] | None = None,
    stack: StackFactory | None = None,
    **sampler_kwargs,
) -> xr.Dataset:
    """Estimate the LLC of ``model`` at its current parameters w* (eq. 3) with SGLD.

    ``loss_fn(model, *batch)`` is the mean loss over a batch of rows of ``dataset``, a tuple of
    tensors sharing their first dimension n (for the regression transformer:
    ``devarray.tasks.regression.mse_loss`` with ``(x, y)``). Sampler settings come as an
    :class:`SGLDSettings` or as keywords of :func:`sgld_settings` (``epsilon``/``lr``,
    ``nbeta``/``beta_tilde``, ``localization``/``gamma``/``gamma_tilde``, ``batch_size``,
    ``num_chains``, ``num_draws``, ``num_burnin_steps``). ``method`` picks the chain path
    ("auto", "batched", "loop"; see :func:`devarray.slt.sgld.choose_method`). With ``warn``,
    flagged chains raise one :class:`LLCDiagnosticWarning` mentioning ``label``.

    Returns a Dataset over ``chain`` and ``draw`` holding ``loss``, ``llc_trace``,
    ``llc_trace_mean``, ``init_loss``, ``llc_mean``, ``llc_std``, ``llc_per_chain`` and the
    diagnostics of :mod:`devarray.slt.diagnostics`; every setting is in its attrs.

    ``restrictions`` (Restrictions, parameter-name lists, boolean-mask dicts or ``"all"``; see
    :func:`devarray.slt.restrictions.resolve`) gives every variable a leading ``restriction``
    dimension labelled by the restrictions' names: C chains per restriction, all run together
    (row r·C + c; chain c of each restriction shares chain c's batches and noise). Each
    restriction's divergence threshold defaults to max(d_V, 100); attr ``restriction_size``
    lists d_V. ``stack`` (a setting's :meth:`~devarray.settings.Setting.restriction_stack`) lets
    the sampler compute all restrictions of a chain in one call where it can (``method`` "shared").
    """
    if settings is None:
        settings = sgld_settings(**sampler_kwargs)
    elif sampler_kwargs:
        raise ValueError(
            f"give sampler settings either as an SGLDSettings or as keywords, not both: {sorted(sampler_kwargs)}"
        )
    n = check_dataset(dataset, settings.batch_size)
    rows = n if init_loss_rows is None else init_loss_rows
    init = init_loss(model, loss_fn, dataset, rows, chunk=max(settings.batch_size, 1024))
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if restrictions is not None:
        return _refined(
            model,
            loss_fn,
            dataset,
            settings,
            [resolve(model, r) for r in restrictions],
            init,
            seed=seed,
            method=method,
            compile=compile,
            progress=progress,
            stack=stack,
            divergence_threshold=divergence_threshold,
            diagnostics=dict(drift_threshold=drift_threshold, drift_z=drift_z, min_ess=min_ess),
            attrs={"num_params": num_params, "dataset_size": n, "init_loss_rows": rows, "seed": seed},
            label=label,
            warn=warn,
        )
    limit = default_divergence_threshold(num_params) if divergence_threshold is None else divergence_threshold
    samples = run_chains(
        model,
        loss_fn,
        dataset,
        settings,
        seed=seed,
        method=method,
        compile=compile,
        progress=progress,
        loss_limit=init + limit / settings.nbeta,
    )
    kept = samples.loss[:, settings.num_burnin_steps :].numpy()
    ds = llc_dataset(
        kept,
        init,
        settings,
        samples.diverged_step.numpy(),
        drift_threshold=drift_threshold,
        drift_z=drift_z,
        min_ess=min_ess,
    )
    ds.attrs |= {
        "num_params": num_params,
        "divergence_threshold": limit,
        "dataset_size": n,
        "init_loss_rows": rows,
        "seed": seed,
        "method": samples.method,
    }
    if label is not None:
        ds.attrs["label"] = label
    if warn:
        warn_unhealthy(ds, label)
    return ds


def _refined(
    model,
    loss_fn,
    dataset,
    settings,
    restrictions,
    init,
    *,
    divergence_threshold,
    diagnostics,
    attrs,
    label,
    warn,
    **run,
) -> xr.Dataset:
    """:func:`estimate_llc` for several restrictions at once, stacked along ``restriction``."""
    names = [r.name for r in restrictions]
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"restrictions need distinct names, got {names}")
    sizes = [r.size(model) for r in restrictions]
    limits = [default_divergence_threshold(d) if divergence_threshold is None else divergence_threshold for d in sizes]
    samples = run_chains(
        model,
        loss_fn,
        dataset,
        settings,
        loss_limit=[init + lim / settings.nbeta for lim in limits],
        restrictions=restrictions,
        **run,
    )
    R, C = len(restrictions), settings.num_chains
    loss = samples.loss.reshape(R, C, -1)[:, :, settings.num_burnin_steps :].numpy()
    dstep = samples.diverged_step.reshape(R, C).numpy()
    parts = [llc_dataset(loss[r], init, settings, dstep[r], **diagnostics) for r in range(R)]
    ds = xr.concat(parts, dim="restriction", data_vars="all", coords="minimal", compat="override")
    ds = ds.assign_coords(restriction=_var("restriction", ("restriction",), np.array(names, dtype=object)))
    ds.attrs = parts[0].attrs | attrs
    ds.attrs |= {
        "method": samples.method,
        "restriction_size": sizes,
        "divergence_threshold": limits,
    }
    if label is not None:
        ds.attrs["label"] = label
    if warn:
        for r, name in enumerate(names):
            warn_unhealthy(ds.isel(restriction=r), f"{label}, {name}" if label else name)
    return ds
