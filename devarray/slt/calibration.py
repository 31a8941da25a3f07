"""Grid sweeps over the SGLD hyperparameters and the rule of thumb of appendix A.4.3.

    "ε should be large enough that the λ̂ estimate converges within the T_SGLD steps of each
    chain but not too large that you run into issues with numerical stability and divergent
    estimates. Subject to this constraint, γ should be as small as possible to encourage
    exploration without enabling the chains to 'escape' to nearby better optima, and β should
    be as large as possible (but no greater than 1/log n)."

:func:`calibrate` runs :func:`~devarray.slt.llc.estimate_llc` at every point of a grid over ε,
nβ (or β̃) and γ (or γ̃) with the same seeds, and returns one Dataset with those dimensions plus
``chain`` and ``draw``. A grid point is *acceptable* when none of its chains diverged, failed to
converge or escaped. The recommendation applies the rule in order: the largest ε at which some
point converges without divergence; at that ε, the smallest γ with an acceptable point; there,
the largest β whose nβ is at most the default m / log m (A.4.1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import product

import numpy as np
import torch
import xarray as xr
from torch import nn

from .diagnostics import LLCDiagnosticWarning
from .llc import estimate_llc
from .sgld import LossFn, default_nbeta, sgld_settings

_GRID_VARS = (
    "loss",
    "llc_trace",
    "llc_trace_mean",
    "init_loss",
    "llc_mean",
    "llc_std",
    "llc_per_chain",
    "diverged",
    "diverged_step",
    "not_converged",
    "escaped",
    "llc_drift",
    "llc_drift_z",
    "llc_ess",
)


def _axis(name_a: str, a, name_b: str, b, what: str, default=None) -> tuple[str, list[float]]:
    if a is not None and b is not None:
        raise ValueError(f"give the {what} grid as {name_a} or as {name_b}, not both")
    if a is None and b is None:
        if default is None:
            raise ValueError(f"give a {what} grid: {name_a}=[...] or {name_b}=[...]")
        a = [default]
    name, values = (name_a, a) if a is not None else (name_b, b)
    values = [float(v) for v in np.atleast_1d(values)]
    if len(set(values)) != len(values):
        raise ValueError(f"{name} grid has repeated values: {values}")
    return name, values


def calibrate(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Sequence[torch.Tensor],
    *,
    epsilon: Sequence[float],
    nbeta: Sequence[float] | None = None,
    beta_tilde: Sequence[float] | None = None,
    localization: Sequence[float] | None = None,
    gamma_tilde: Sequence[float] | None = None,
    batch_size: int,
    num_chains: int = 4,
    num_draws: int = 200,
    num_burnin_steps: int = 0,
    seed: int = 0,
    method: str = "auto",
    init_loss_rows: int | None = None,
    label: str | None = None,
    progress: bool = False,
    **diagnostic_kwargs,
) -> xr.Dataset:
    """Sweep ε × (nβ | β̃) × (γ | γ̃) and recommend a setting by the A.4.3 rule of thumb.

    nβ defaults to the single value m / log m. The result has dims ``epsilon``, ``nbeta`` or
    ``beta_tilde``, ``localization`` or ``gamma_tilde``, ``chain`` and ``draw``; the other
    parametrisation's values are variables over the grid; ``acceptable`` marks grid points with
    no flagged chain; the recommendation is in the attrs ``recommended_*`` (NaN when no point
    qualifies, which also warns).
    """
    eps_values = [float(v) for v in np.atleast_1d(epsilon)]
    default = default_nbeta(batch_size) if nbeta is None and beta_tilde is None else None
    b_name, b_values = _axis("nbeta", nbeta, "beta_tilde", beta_tilde, "inverse temperature", default)
    g_name, g_values = _axis("localization", localization, "gamma_tilde", gamma_tilde, "localization")
    dims = ("epsilon", b_name, g_name)
    shape = (len(eps_values), len(b_values), len(g_values))
    points = list(product(eps_values, b_values, g_values))
    if progress:
        from tqdm.auto import tqdm

        points = tqdm(points, desc="calibration grid")

    results = []
    for e, b, g in points:
        settings = sgld_settings(
            epsilon=e,
            **{b_name: b, g_name: g},
            batch_size=batch_size,
            num_chains=num_chains,
            num_draws=num_draws,
            num_burnin_steps=num_burnin_steps,
        )
        ds = estimate_llc(
            model,
            loss_fn,
            dataset,
            settings,
            seed=seed,
            method=method,
            init_loss_rows=init_loss_rows,
            warn=False,
            **diagnostic_kwargs,
        )
        results.append(ds)

    first = results[0]
    grid = {}
    for name in _GRID_VARS:
        stacked = np.stack([r[name].values for r in results]).reshape(shape + first[name].shape)
        grid[name] = (dims + first[name].dims, stacked, first[name].attrs)
    settings_grid = {
        k: np.array([r.attrs[k] for r in results]).reshape(shape)
        for k in ("nbeta", "beta_tilde", "localization", "gamma_tilde")
    }
    for k, v in settings_grid.items():
        if k not in dims:
            long = {"nbeta": "nβ", "beta_tilde": "β̃ = εnβ/2", "localization": "γ", "gamma_tilde": "γ̃ = εγ/2"}[k]
            grid[k] = (dims, v, {"long_name": long, "units": "1", "description": f"{long} at each grid point (A.4.3)."})
    coords = {
        "epsilon": ("epsilon", eps_values, {"long_name": "ε", "units": "1", "description": "SGLD step size."}),
        b_name: (
            b_name,
            b_values,
            {
                "long_name": {"nbeta": "nβ", "beta_tilde": "β̃"}[b_name],
                "units": "1",
                "description": "Inverse temperature times n (nβ) or β̃ = εnβ/2 (A.4.3).",
            },
        ),
        g_name: (
            g_name,
            g_values,
            {
                "long_name": {"localization": "γ", "gamma_tilde": "γ̃"}[g_name],
                "units": "1",
                "description": "Localization strength γ or γ̃ = εγ/2 (A.4.3).",
            },
        ),
        "chain": first["chain"],
        "draw": first["draw"],
    }
    out = xr.Dataset(grid, coords)
    converged = ~(out["diverged"].any("chain") | out["not_converged"].any("chain"))
    acceptable = converged & ~out["escaped"].any("chain")
    out["acceptable"] = acceptable.assign_attrs(
        long_name="acceptable setting",
        units="1",
        description="No chain diverged, failed to converge or escaped at this grid point (A.4.3).",
    )
    keep = (
        "batch_size",
        "num_chains",
        "num_draws",
        "num_burnin_steps",
        "num_steps",
        "num_params",
        "dataset_size",
        "init_loss_rows",
        "seed",
        "method",
        "divergence_threshold",
        "drift_threshold",
        "drift_z",
        "min_ess",
    )
    out.attrs = {k: first.attrs[k] for k in keep} | recommend(out, converged, acceptable, batch_size)
    if label is not None:
        out.attrs["label"] = label
    if not np.isfinite(out.attrs["recommended_epsilon"]):
        where = f" at {label}" if label else ""
        warnings.warn(
            f"calibration{where}: no grid point converged without divergence, escape or "
            f"non-convergence; widen the grid",
            LLCDiagnosticWarning,
            stacklevel=2,
        )
    return out


def recommend(grid: xr.Dataset, converged: xr.DataArray, acceptable: xr.DataArray, batch_size: int) -> dict:
    """The A.4.3 rule of thumb on a calibration grid, as ``recommended_*`` attrs (NaN if none)."""
    _, b_name, g_name = converged.dims
    nan = {f"recommended_{k}": float("nan") for k in ("epsilon", "nbeta", "beta_tilde", "localization", "gamma_tilde")}
    ok_eps = converged.any((b_name, g_name))
    if not ok_eps.any():
        return nan
    eps = float(grid["epsilon"][ok_eps].max())
    nbeta = grid["nbeta"].sel(epsilon=eps) if "epsilon" in grid["nbeta"].dims else grid["nbeta"]
    at_eps = acceptable.sel(epsilon=eps) & (nbeta <= default_nbeta(batch_size) * (1 + 1e-9))
    ok_g = at_eps.any(b_name)
    if not ok_g.any():
        return nan
    g = float(grid[g_name][ok_g.values].min())
    b = float(grid[b_name][at_eps.sel({g_name: g}).values].max())
    point = {"epsilon": eps, b_name: b, g_name: g}
    return {
        f"recommended_{k}": float(grid[k].sel({d: point[d] for d in grid[k].dims}))
        for k in ("epsilon", "nbeta", "beta_tilde", "localization", "gamma_tilde")
    }
