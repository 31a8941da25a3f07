"""Developmental stages from plateaus of a curve over training (paper §5, appendix B.1).

The procedure of B.1: smooth the curve (normally the LLC, ``llc_mean``) with a Gaussian
process over x = log step, differentiate the GP with respect to log step, and put stage
boundaries where that slope vanishes — where it crosses zero (a maximum or minimum of the curve)
or, at a saddle, where |slope| has a local minimum below a tolerance. Stages are the intervals
between boundaries, labelled by the direction of change (figure 1: warm for increasing LLC, cold
for decreasing).

The GP is exact (gpytorch), in float64, with inputs and outputs standardised, a constant mean c
and a scaled Matérn-5/2 kernel whose hyperparameters maximise the marginal likelihood (L-BFGS).
Matérn-5/2 rather than RBF: its sample paths are twice differentiable, so the slope and its band
exist, but it does not ring before a sharp transition the way the RBF does (the RBF's undershoot
before a rise passed for a significant fall and made spurious boundaries). The slope and its
credible band come from the derivative kernel in closed form: with r = √5·|a−b|/ℓ,
k(a, b) = s(1 + r + r²/3)e^{−r}, ∂ₐk(a, b) = −(5s/3ℓ²)(a−b)(1 + r)e^{−r}, and

    E[f'(a)]   = ∂ₐk(a, X) α,                          α = (K + σ²I)⁻¹(y − c)
    Var[f'(a)] = 5s/3ℓ² − ∂ₐk(a, X)(K + σ²I)⁻¹∂ₐk(X, a),

exact for the fitted GP (tests check it against autograd through gpytorch's posterior mean and
finite differences of its posterior covariance).

Boundaries are located on a dense grid in log step (so they do not depend on checkpoint
spacing, one of the sensitivities B.1 lists). To keep noise from producing boundaries, the
slope is read through its band: a *movement* is a run of grid points where the slope is
significantly non-zero (band excludes zero) and larger in size than the tolerance. Between two
consecutive movements lies exactly one boundary: of opposite sign, a ``max`` or ``min`` at the
extremum of the smooth curve between them (the zero crossing); of the same sign, a ``plateau`` at
the minimum of |slope| between them, if that minimum is below the tolerance (otherwise the two
movements are one stage). With no noise this is exactly the rule of B.1; with noise, wiggles of the
slope that the band cannot tell from zero make no boundary. A boundary's uncertainty is the
stretch of log step around it where the band contains the slope's value at the boundary (zero at a
crossing). Before the first movement, a slow change that the band cannot call a slope still makes a
stage if it moves the smooth curve by ``min_change`` and then flattens (see ``_leading_boundary``):
the LR1 of a short run, whose LLC creeps up and stalls before LR2's rise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import gpytorch
import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.special import ndtri


@dataclass(frozen=True)
class StageOptions:
    """Settings of the stage division; the defaults need no tuning for LLC curves like the paper's.

    tolerance: a saddle plateau needs |slope| below ``tolerance × max |slope|`` (B.1's "tolerance",
        made scale-free). At 0.1 the saddles of the tests' figure-1b-like curve (|slope| dipping to
        4–5% of its peak) are plateaus, while a dip to a quarter of the peak is one stage.
    min_noise: lower bound on the GP noise variance as a fraction of the curve's variance — the
        "light smoothing" of §5: the GP may never interpolate, so SGLD noise cannot become slope.
    min_lengthscale: lower bound on the kernel's lengthscale in log step (0.2 ≈ a 22% change of
        step): the fastest change the smooth curve may follow. Fits on the tests' curves land at
        1–16, so it only guards against overfitting a few outliers.
    min_change: a movement (a stretch of significant slope) that changes the smooth curve by less
        than ``min_change × its range`` is noise — at the edges, where few checkpoints pin the GP
        down, a single outlier can otherwise tilt the slope past the band for a moment.
    min_checkpoints: a movement must span at least this many checkpoints; fewer cannot show a
        slope against noise (log spacing leaves steps 1, 2, 3 far apart in log step).
    credible: mass of the slope's credible band (pointwise, Gaussian).
    wrt: differentiate with respect to ``"log_step"`` (B.1) or ``"step"``; the GP is fit over log
        step either way, so only slope, band and tolerance change. In step, d/dt = e^{−log t}·d/d(log t)
        makes the first checkpoints dominate max |slope|: use a tolerance near 1e-4 there.
    grid: number of points of the dense log-step grid on which boundaries are located.
    max_iter: L-BFGS iterations of the hyperparameter fit.
    """

    tolerance: float = 0.1
    min_noise: float = 1e-3
    min_lengthscale: float = 0.2
    min_change: float = 0.05
    min_checkpoints: int = 3
    credible: float = 0.95
    wrt: Literal["log_step", "step"] = "log_step"
    grid: int = 1024
    max_iter: int = 50

    def __post_init__(self):
        if not 0 < self.tolerance < 1:
            raise ValueError(f"tolerance is a fraction of the largest |slope|; got {self.tolerance}, use a value in (0, 1)")
        if not 0 < self.credible < 1:
            raise ValueError(f"credible is a probability mass; got {self.credible}, use e.g. 0.95")
        if self.wrt not in ("log_step", "step"):
            raise ValueError(f"wrt must be 'log_step' or 'step', got {self.wrt!r}")


def _matern52(d, ell, s):
    """Matérn-5/2 k(a, b) and ∂ₐk(a, b) for d = a − b."""
    r = torch.sqrt(torch.tensor(5.0, dtype=d.dtype)) * d.abs() / ell
    e = torch.exp(-r)
    return s * (1 + r + r**2 / 3) * e, -s * 5 / (3 * ell**2) * d * (1 + r) * e


class _GP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood, min_lengthscale):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.MaternKernel(nu=2.5, lengthscale_constraint=gpytorch.constraints.GreaterThan(min_lengthscale))
        )

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


@dataclass
class GPFit:
    """A fitted GP over standardised log step; evaluates the curve and its slope anywhere."""

    model: _GP
    x_mean: float
    x_scale: float
    y_mean: float
    y_scale: float

    @property
    def hyperparameters(self) -> dict[str, float]:
        """Lengthscale in log step, signal and noise standard deviations in the curve's units."""
        m = self.model
        return {
            "lengthscale": m.covar_module.base_kernel.lengthscale.item() * self.x_scale,
            "signal_std": m.covar_module.outputscale.item() ** 0.5 * self.y_scale,
            "noise_std": m.likelihood.noise.item() ** 0.5 * self.y_scale,
        }

    def standardise(self, log_step: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((np.asarray(log_step, dtype=np.float64) - self.x_mean) / self.x_scale)

    def predict(self, log_step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior mean of the curve, of its slope d/d(log step), and the slope's std, at ``log_step``."""
        m = self.model
        X = m.train_inputs[0][:, 0]
        a = self.standardise(log_step)
        ell = m.covar_module.base_kernel.lengthscale.detach()[0, 0]
        s = m.covar_module.outputscale.detach()
        noise = m.likelihood.noise.detach()[0]
        c = m.mean_module.constant.detach()
        with torch.no_grad():
            d = a[:, None] - X[None, :]
            k, dk = _matern52(d, ell, s)
            K, _ = _matern52(X[:, None] - X[None, :], ell, s)
            L = torch.linalg.cholesky(K + noise * torch.eye(len(X), dtype=K.dtype))
            alpha = torch.cholesky_solve((m.train_targets - c)[:, None], L)[:, 0]
            v = torch.linalg.solve_triangular(L, dk.T, upper=False)
            var = (5 * s / (3 * ell**2) - (v**2).sum(0)).clamp_min(0)
            mean = c + k @ alpha
            slope = dk @ alpha
        dy = self.y_scale / self.x_scale  # chain rule through both standardisations
        return (
            (mean * self.y_scale + self.y_mean).numpy(),
            (slope * dy).numpy(),
            (var.sqrt() * dy).numpy(),
        )


def fit_gp(log_step: np.ndarray, y: np.ndarray, options: StageOptions = StageOptions()) -> GPFit:
    """Exact GP fit of ``y`` over ``log_step`` by maximum marginal likelihood (appendix B.1)."""
    x = np.asarray(log_step, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 4:
        raise ValueError(f"need at least 4 finite points at steps > 0 to fit a GP, got {len(x)}")
    x_mean, x_scale = x.mean(), x.std() or 1.0
    y_mean, y_scale = y.mean(), y.std() or 1.0
    X = torch.as_tensor((x - x_mean) / x_scale)
    Y = torch.as_tensor((y - y_mean) / y_scale)
    likelihood = gpytorch.likelihoods.GaussianLikelihood(
        noise_constraint=gpytorch.constraints.GreaterThan(options.min_noise)
    ).double()
    model = _GP(X, Y, likelihood, options.min_lengthscale / x_scale).double()
    # One start suffices: from lengthscales 0.5, 1.5 and 4 log steps L-BFGS reaches the same
    # optimum on every test curve (steps, lines, noise up to 5% of the range).
    model.covar_module.base_kernel.lengthscale = max(1.0, 1.5 * options.min_lengthscale) / x_scale
    model.covar_module.outputscale = 1.0
    likelihood.noise = max(0.01, 2 * options.min_noise)
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=options.max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -mll(model(X), Y)
        loss.backward()
        return loss

    with gpytorch.settings.max_cholesky_size(10_000):  # always exact Cholesky, never CG
        opt.step(closure)
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise RuntimeError("the GP fit diverged; is the curve finite and non-constant?")
    model.eval()
    return GPFit(model, float(x_mean), float(x_scale), float(y_mean), float(y_scale))


def _as_curve(y, step) -> tuple[np.ndarray, np.ndarray, str, dict]:
    if isinstance(y, xr.DataArray):
        if y.dims != ("step",):
            raise ValueError(f"stages need a 1-D curve over 'step'; got dims {y.dims}; select one run/chain first (e.g. .sel(run=...))")
        return y["step"].values.astype(np.int64), y.values.astype(np.float64), str(y.name or "y"), dict(y.attrs)
    if step is None:
        raise ValueError("pass `step` with a numpy curve, or a DataArray with a 'step' coordinate")
    step, y = np.asarray(step), np.asarray(y, dtype=np.float64)
    if step.shape != y.shape or y.ndim != 1:
        raise ValueError(f"step and y must be 1-D of equal length; got shapes {step.shape} and {y.shape}")
    return step.astype(np.int64), y, "y", {}


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def _boundaries(x, smooth, slope, lo, hi, tol, min_change, x_data, min_checkpoints) -> list[tuple[int, str, int, int]]:
    """(grid index, kind, lo index, hi index) of every boundary; see the module docstring."""
    sign = np.where((lo > 0) & (slope > tol), 1, np.where((hi < 0) & (slope < -tol), -1, 0))
    moves = [(a, b, 1) for a, b in _runs(sign == 1)] + [(a, b, -1) for a, b in _runs(sign == -1)]
    moves = sorted(
        m for m in moves
        if abs(smooth[m[1]] - smooth[m[0]]) >= min_change
        and np.count_nonzero((x_data >= x[m[0]]) & (x_data <= x[m[1]])) >= min_checkpoints
    )
    found = []
    if moves:
        lead = _leading_boundary(smooth, slope, tol, min_change, moves[0], x, x_data, min_checkpoints)
        moves = ([lead] if lead else []) + moves
    for (_, end, s1), (start, _, s2) in zip(moves, moves[1:]):
        gap = np.arange(end, start + 1)
        if s1 != s2:
            i = gap[np.argmax(smooth[gap] * s1)]  # max after a rise, min after a fall
            kind = "max" if s1 > 0 else "min"
        else:
            i = gap[np.argmin(np.abs(slope[gap]))]
            if abs(slope[i]) >= tol:
                continue  # a dip in speed, not a plateau: one stage
            kind = "plateau"
        v = 0.0 if kind != "plateau" else slope[i]
        inside = (lo <= v) & (v <= hi)
        a = b = i
        while a > 0 and inside[a - 1]:
            a -= 1
        while b < len(x) - 1 and inside[b + 1]:
            b += 1
        # one grid point wider on each side, so the interval is never empty
        found.append((i, kind, max(a - 1, 0), min(b + 1, len(x) - 1)))
    return found


def _leading_boundary(smooth, slope, tol, min_change, first_move, x, x_data, min_checkpoints):
    """A pseudo-movement for a slow change before the first movement, or None.

    Before its first significant movement a curve may already have changed slowly, below what
    the band can call a slope, and then flattened: LR1 of a short run, where the LLC creeps up
    while the loss falls to the zero predictor's and then stalls before LR2's rise. That is a
    stage when the smooth curve has moved by ``min_change`` from its start (over at least
    ``min_checkpoints`` checkpoints) and then flattens, to |slope| below the tolerance and below
    half its mean |slope| since the start, before the first movement. Its boundary goes where the
    usual rule puts it: at the flattest point (or the extremum, when the first movement goes the
    other way). A curve that merely starts flat and accelerates (a single smooth rise, a line in
    step) is never flatter than its own mean pace.
    """
    start = first_move[0]
    moved = np.flatnonzero(np.abs(smooth[:start] - smooth[0]) >= min_change)
    if not len(moved) or np.count_nonzero(x_data <= x[moved[0]]) < min_checkpoints:
        return None
    pace = np.abs(smooth[moved] - smooth[0]) / (x[moved] - x[0])  # mean |slope| since the start
    # flat, and flattened: well below the pace so far (a curve that only accelerates — a line in
    # step, the foot of a logistic — is never slower than its own average)
    flat = moved[(np.abs(slope[moved]) < tol) & (np.abs(slope[moved]) < 0.5 * pace)]
    if not len(flat):
        return None
    direction = 1 if smooth[flat[0]] > smooth[0] else -1
    return (0, int(flat[0]), direction)  # its "end" is where the rule's gap to the first movement begins


def _attrs(long_name: str, units: str, description: str) -> dict:
    return {"long_name": long_name, "units": units, "description": description}


def find_stages(y: xr.DataArray | np.ndarray, step: np.ndarray | None = None, **options) -> xr.Dataset:
    """Stage boundaries and stages of a curve over training (appendix B.1).

    ``y`` is a DataArray over ``step`` (e.g. ``llc.llc_mean``) or a numpy array with ``step``.
    Keyword options are the fields of :class:`StageOptions`. Steps ≤ 0 (log step undefined) and
    non-finite values are left out of the fit; the smooth curve and slope are NaN there, and step
    0 belongs to the first stage, which starts at the first step given.

    Returns a Dataset with, over ``step``: ``smooth``, ``slope``, ``slope_lo``, ``slope_hi``,
    ``stage`` (1-based, as in LR1…LR5); over ``boundary``: ``boundary_step``, ``boundary_kind``
    ("max", "min", "plateau"), ``boundary_step_lo``, ``boundary_step_hi``; over ``stage_id``
    (1…n): ``stage_start``, ``stage_end``, ``stage_direction``, ``stage_change``.
    """
    opt = StageOptions(**options)
    steps, values, name, in_attrs = _as_curve(y, step)
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing; sort the curve by step and drop duplicates")
    use = (steps > 0) & np.isfinite(values)
    fit = fit_gp(np.log(steps[use]), values[use], opt)

    x_grid = np.linspace(np.log(steps[use][0]), np.log(steps[use][-1]), opt.grid)
    z = float(ndtri(0.5 + opt.credible / 2))
    pos = steps > 0
    out = {}
    for key, xs in (("grid", x_grid), ("ckpt", np.log(steps[pos]))):
        mean, slope, sd = fit.predict(xs)
        if opt.wrt == "step":  # d/dt = e^{−x} d/dx
            slope, sd = slope * np.exp(-xs), sd * np.exp(-xs)
        out[key] = mean, slope, slope - z * sd, slope + z * sd
    g_mean, g_slope, g_lo, g_hi = out["grid"]
    tol = opt.tolerance * np.abs(g_slope).max()
    found = _boundaries(
        x_grid, g_mean, g_slope, g_lo, g_hi, tol, opt.min_change * np.ptp(g_mean), np.log(steps[use]), opt.min_checkpoints
    )

    b_step = np.array([round(np.exp(x_grid[i])) for i, *_ in found], dtype=np.int64)
    b_lo = np.array([round(np.exp(x_grid[a])) for _, _, a, _ in found], dtype=np.int64)
    b_hi = np.array([round(np.exp(x_grid[b])) for *_, b in found], dtype=np.int64)
    b_kind = np.array([k for _, k, *_ in found], dtype="<U7")
    edges = np.concatenate([[steps[0]], b_step, [steps[-1]]])
    smooth_at = np.interp(np.log(np.maximum(edges, 1)), x_grid, g_mean)
    change = np.diff(smooth_at)

    def over_step(v):
        full = np.full(len(steps), np.nan)
        full[pos] = v
        return full

    units = in_attrs.get("units", "")
    per = "log step" if opt.wrt == "log_step" else "step"
    slope_units = f"{units} per {per}" if units else f"per {per}"
    label = in_attrs.get("long_name", name)
    return xr.Dataset(
        {
            "smooth": ("step", over_step(out["ckpt"][0]), _attrs(
                f"GP-smoothed {label}", units, f"Posterior mean of an exact GP fit of {name} over log step (appendix B.1).")),
            "slope": ("step", over_step(out["ckpt"][1]), _attrs(
                f"slope of {label}", slope_units, f"Posterior mean of d{name}/d({per}) of the GP.")),
            "slope_lo": ("step", over_step(out["ckpt"][2]), _attrs(
                f"slope of {label}, lower bound", slope_units, f"Lower end of the pointwise {opt.credible:.0%} credible band of the slope.")),
            "slope_hi": ("step", over_step(out["ckpt"][3]), _attrs(
                f"slope of {label}, upper bound", slope_units, f"Upper end of the pointwise {opt.credible:.0%} credible band of the slope.")),
            "stage": ("step", 1 + np.searchsorted(b_step, steps, side="right"), _attrs(
                "stage", "1", "Stage containing the step, numbered from 1; a boundary step starts the next stage.")),
            "boundary_step": ("boundary", b_step, _attrs(
                "stage boundary", "steps", "Step at which the slope vanishes (crossing or plateau).")),
            "boundary_kind": ("boundary", b_kind, _attrs(
                "boundary kind", "1", "'max' or 'min' where the slope crosses zero, 'plateau' at a saddle (|slope| minimal below tolerance).")),
            "boundary_step_lo": ("boundary", b_lo, _attrs(
                "stage boundary, earliest", "steps", "Start of the stretch around the boundary where the slope's band contains its value at the boundary.")),
            "boundary_step_hi": ("boundary", b_hi, _attrs(
                "stage boundary, latest", "steps", "End of the stretch around the boundary where the slope's band contains its value at the boundary.")),
            "stage_start": ("stage_id", edges[:-1], _attrs("stage start", "steps", "First step of the stage.")),
            "stage_end": ("stage_id", edges[1:], _attrs("stage end", "steps", "Last step of the stage (the next stage's start).")),
            "stage_direction": ("stage_id", np.where(change >= 0, "increasing", "decreasing").astype("<U10"), _attrs(
                "stage direction", "1", f"Sign of the change of the smoothed {name} over the stage.")),
            "stage_change": ("stage_id", change, _attrs(
                f"change of {label}", units, f"Smoothed {name} at the stage's end minus at its start.")),
        },
        coords={
            "step": ("step", steps, _attrs("training step", "steps", "Checkpoint step.")),
            "boundary": ("boundary", np.arange(len(found)), _attrs("boundary index", "1", "Boundaries in order of step.")),
            "stage_id": ("stage_id", np.arange(1, len(found) + 2), _attrs("stage number", "1", "Stages numbered from 1.")),
        },
        attrs={
            "description": f"Developmental stages of {name} (paper §5, appendix B.1).",
            "variable": name,
            **{f"option_{k}": v for k, v in asdict(opt).items()},
            **{f"gp_{k}": v for k, v in fit.hyperparameters.items()},
            "slope_tolerance": float(tol),
        },
    )


def stage_table(stages: xr.Dataset, others: xr.Dataset | None = None) -> pd.DataFrame:
    """One row per stage: start, end, direction, change of the staged (smoothed) variable and,
    for every variable of ``others`` over ``step``, its change over the stage (value at the
    checkpoint nearest the stage's end minus at its start)."""
    table = pd.DataFrame({
        "start": stages.stage_start.values,
        "end": stages.stage_end.values,
        "direction": stages.stage_direction.values,
        f"Δ{stages.attrs.get('variable', 'y')}": stages.stage_change.values,
    }, index=pd.Index(stages.stage_id.values, name="stage"))
    for name, da in (others.data_vars.items() if others is not None else ()):
        if da.dims != ("step",):
            continue  # only curves over step have a change per stage
        end, start = (da.sel(step=table[k].values, method="nearest").values for k in ("end", "start"))
        table[f"Δ{name}"] = end - start
    return table
