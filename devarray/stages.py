"""Developmental stages from plateaus of a curve over training (paper §5, appendix B.1).

The procedure of B.1: smooth the curve (normally the LLC, ``llc_mean``) with a Gaussian
process over x = log step, differentiate the GP with respect to log step, and put stage
boundaries where that slope vanishes — where it crosses zero (a maximum or minimum of the curve)
or, at a saddle, where |slope| has a local minimum below a tolerance. Stages are the intervals
between boundaries, labelled by the direction of change (figure 1: warm for increasing LLC, cold
for decreasing).

**The GP.** Exact (gpytorch), float64, outputs standardised, a constant mean c and a scaled
Matérn-5/2 kernel (twice differentiable sample paths, so the slope and its band exist, without
the RBF's ringing before a sharp transition) on a *warped* input w(u): u maps the log steps of
the data into (0, 1) and w is the Kumaraswamy CDF 1 − (1 − uᵃ)ᵇ (the input warping of Snoek et
al. 2014), so the lengthscale in log step, ℓ/(w'(u)·du/dx), can shrink where the curve changes
fast (LR2's take-off, the late stages that linear checkpoints resolve) and grow where it is flat
(the first hundred steps). a = b = 1 is the stationary kernel; ``kernel="auto"`` fits both and
keeps the warp only if it raises the log marginal likelihood by more than one nat per extra
parameter (AIC), so the data, not a hand setting, choose. Noise: with ``noise=`` (each
checkpoint's standard error, for the LLC llc_std/√chains) a FixedNoiseGaussianLikelihood with a
learned extra homoscedastic term; without it, one learned noise level, given a log-linear
trend over log step when that raises the marginal likelihood by more than a nat (AIC; an LLC
curve's neighbouring checkpoints share the sampler's seeds, so a slow early stretch can be far
smoother than the late one, and one level would drown it in the late noise). Either floor is
``min_noise`` × var(y), numerical jitter only, so the data set the band. Hyperparameters maximise
the marginal likelihood (L-BFGS). The slope and its band are the derivative kernel in closed form:
with d = w(a) − w(b), r = √5·|d|/ℓ, k = s(1 + r + r²/3)e^{−r}, ∂k/∂w(a) = −(5s/3ℓ²)d(1 + r)e^{−r},

    E[f'(a)]   = w'(a)·∂k(a, X) α,                          α = (K + Σ)⁻¹(y − c)
    Var[f'(a)] = w'(a)²·(5s/3ℓ² − ∂k(a, X)(K + Σ)⁻¹∂k(X, a)),

exact for the fitted GP (tests check it against autograd through gpytorch's posterior mean and
finite differences of its posterior covariance). Above ``max_fit_points`` checkpoints (the
paper saved 5,000 for the language model) the hyperparameters are fit on an evenly indexed
subsample of that many, and the posterior then conditions on every checkpoint: one O(n³)
Cholesky instead of one per L-BFGS step (5,000 points: seconds, 200 MB).

**Boundaries** are located on a dense grid in log step (so they do not depend on checkpoint
spacing, one of the sensitivities B.1 lists). Every threshold comes from the data:

* a *movement* is a run of grid points where the slope's credible band excludes zero, spanning
  at least ``min_checkpoints`` checkpoints, whose change of the smooth curve exceeds z times its
  own posterior standard deviation (z of the band): small is judged against the estimate's
  uncertainty, not against the curve's range, so LR5's rise of a few LLC units after the minimum
  counts as much as LR2's rise of 145 when the data pin both down;
* consecutive movements of opposite sign make a ``max``/``min`` at the extremum of the smooth
  curve between them (the zero crossing);
* within a chain of movements of one sign (and the gaps between them), a local minimum of |slope|
  is a ``plateau`` (B.1's saddle) when it lies below ``tolerance`` × the geometric mean of the
  peak |slope|s of the movements on either side — judged against its neighbours, not the global
  maximum — and both sides keep ``min_checkpoints`` of significant slope. Deepest first, one
  boundary per plateau (B.1's "local minimum of the absolute first derivative").

**Placement.** A plateau's *extent* is the stretch around its minimum where |slope| stays below
its tolerance τ (``plateau_start``/``plateau_end``). On a long flat stretch the minimum itself is
set by noise (float rounding can move it across the stretch), so the boundary goes to the
plateau's end, where |slope| climbs through τ and the next movement begins — a crossing of a
steep function, which rounding moves by nothing (and not before the band excludes zero: a GP
bleeds a steep rise's slope back onto the plateau before it). Its uncertainty is the stretch
around it where the band contains the slope's value there. A max/min sits at the extremum (an
integral of the slope, stable), with the stretch where the band contains zero as its uncertainty.
Each boundary's *significance* is the
probability (Gaussian, pointwise) of its weakest link: that the slope on each side has its sign
(the largest |slope|/sd of each neighbouring movement), and for a plateau also that |slope| at
the minimum is below τ.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Literal

import gpytorch
import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.special import ndtr, ndtri


@dataclass(frozen=True)
class StageOptions:
    """Settings of the stage division (appendix B.1); the defaults need no tuning for LLC curves like the paper's.

    tolerance: a local minimum of |slope| between two movements of one sign is a saddle plateau
        when below ``tolerance`` × the geometric mean of the two movements' peak |slope|s (B.1's
        "tolerance", judged against the neighbours, not the global maximum; the geometric mean is
        scale-free, so a stage 20× smaller than the one beside it keeps its plateau, yet the dip
        must be deep against both). 0.2: the figure-1b-like test curve's LR1→LR2 saddle dips to
        11 % of that mean and its LR3→LR4 saddle to 5 %, while two equal rises whose speed dips to a
        quarter between them stay one stage.
    min_noise: floor on the learned noise variance (the extra term when ``noise`` is given) as a
        fraction of var(y). 1e-6 is numerical jitter only: the GP's noise, hence its band, comes
        from the data (the old 1e-3 was ~2 LLC units on a 150-unit curve whose early residuals are
        ~0.05).
    min_lengthscale: lower bound on the kernel's lengthscale, in log step before warping. 0.05
        (a 5 % change of step) lets a stall half a log step wide be resolved while a few outliers
        cannot be interpolated.
    min_change: optional extra floor on a movement's change, as a fraction of the smooth curve's
        range. 0 (off) by default: significance comes from the change's own posterior sd.
    min_checkpoints: a movement, and each side of a plateau, must hold at least this many
        checkpoints of significant slope. 3: one or two outliers at an edge, where few points pin
        the GP down, can tilt the band past zero for a moment (the null-curve and 40-seed fidelity
        tests hold at 3), while a fast transition on a sparse schedule (the quick run's LR2
        take-off, 31 → 55 LLC between steps 316 and 632) spans only three checkpoints.
    change_z: a movement must change the smooth curve by more than ``change_z`` posterior sds of
        that change. 3: a curve holds ~10 stretches over which a pointwise 95 % band excludes zero
        by chance, and a spurious boundary needs two such movements; at 3σ each is a 0.3 % event.
    credible: mass of the slope's credible band (pointwise, Gaussian); 0.95 as usual.
    wrt: differentiate with respect to ``"log_step"`` (B.1) or ``"step"``; the GP is fit over log
        step either way, so only slope, band and units change. Significance is the same in both;
        the tolerance, relative to neighbouring peaks, weighs early steps by 1/t in step.
    grid: number of points of the dense log-step grid on which boundaries are located; 1024
        resolves 0.013 log step over 500k steps.
    max_iter: L-BFGS iterations per hyperparameter fit; 50 converges on all test curves.
    kernel: ``"auto"`` (stationary or warped, whichever the marginal likelihood prefers, see the
        module docstring), ``"stationary"`` or ``"warped"``.
    max_fit_points: above this many checkpoints the hyperparameters are fit on an evenly indexed
        subsample (the posterior still uses every point). 200: covers the paper's 190 regression
        checkpoints exactly; an L-BFGS step costs ~5 ms there against ~35 ms at 517 (the language
        schedule) and seconds at 5,000, and 200 points pin six hyperparameters down.
    """

    tolerance: float = 0.2
    min_noise: float = 1e-6
    min_lengthscale: float = 0.05
    min_change: float = 0.0
    min_checkpoints: int = 3
    change_z: float = 3.0
    credible: float = 0.95
    wrt: Literal["log_step", "step"] = "log_step"
    grid: int = 1024
    max_iter: int = 50
    kernel: Literal["auto", "stationary", "warped"] = "auto"
    max_fit_points: int = 200

    def __post_init__(self):
        if not 0 < self.tolerance < 1:
            raise ValueError(
                f"tolerance is a fraction of the neighbouring movements' peak |slope|; got "
                f"{self.tolerance}, use a value in (0, 1)"
            )
        if not 0 < self.credible < 1:
            raise ValueError(f"credible is a probability mass; got {self.credible}, use e.g. 0.95")
        if self.wrt not in ("log_step", "step"):
            raise ValueError(f"wrt must be 'log_step' or 'step', got {self.wrt!r}")
        if self.kernel not in ("auto", "stationary", "warped"):
            raise ValueError(f"kernel must be 'auto', 'stationary' or 'warped', got {self.kernel!r}")
        if self.change_z < 0:
            raise ValueError(f"change_z is a number of standard deviations, got {self.change_z}")
        if self.max_fit_points < 8:
            raise ValueError(f"max_fit_points must be at least 8, got {self.max_fit_points}")


# Margin of the map from log step to u: keeps the data off u = 0 and 1, where the Kumaraswamy
# warp's derivative can be 0 or infinite.
_MARGIN = 0.025
# Range of the warp's shape parameters: from a lengthscale shrinking ~20-fold across the run to
# the identity (a = b = 1), not further: steeper warps only ever fit a few outliers.
_WARP_RANGE = (0.25, 4.0)


def _matern52(d, ell, s):
    """Matérn-5/2 k(a, b) and ∂ₐk(a, b) for d = a − b."""
    r = torch.sqrt(torch.tensor(5.0, dtype=d.dtype)) * d.abs() / ell
    e = torch.exp(-r)
    return s * (1 + r + r**2 / 3) * e, -s * 5 / (3 * ell**2) * d * (1 + r) * e


class _GP(gpytorch.models.ExactGP):
    def __init__(self, u, y, likelihood, min_lengthscale, warped, noise_trend=False):
        super().__init__(u, y, likelihood)
        self.warped = warped
        self.noise_trend = noise_trend
        if noise_trend:
            self.register_parameter("trend", torch.nn.Parameter(torch.zeros((), dtype=torch.float64)))
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = gpytorch.kernels.ScaleKernel(
            gpytorch.kernels.MaternKernel(
                nu=2.5, lengthscale_constraint=gpytorch.constraints.GreaterThan(min_lengthscale)
            )
        )
        if warped:
            for name in ("a", "b"):
                self.register_parameter(f"raw_{name}", torch.nn.Parameter(torch.zeros((), dtype=torch.float64)))
                self.register_constraint(f"raw_{name}", gpytorch.constraints.Interval(*_WARP_RANGE))

    def warp_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.warped:
            one = torch.ones((), dtype=torch.float64)
            return one, one
        return self.raw_a_constraint.transform(self.raw_a), self.raw_b_constraint.transform(self.raw_b)

    def set_warp(self, a: float, b: float):
        for name, v in (("a", a), ("b", b)):
            c = getattr(self, f"raw_{name}_constraint")
            getattr(self, f"raw_{name}").data = c.inverse_transform(torch.tensor(float(v), dtype=torch.float64))

    def noise(self, u: torch.Tensor) -> torch.Tensor:
        """Noise variance at each of ``u`` (standardised units): the likelihood's, times
        exp(trend·(u − ½)) for a learned noise with a trend."""
        lik = self.likelihood
        if isinstance(lik, gpytorch.likelihoods.FixedNoiseGaussianLikelihood):
            return lik.noise.reshape(-1) + lik.second_noise.reshape(-1)
        level = lik.noise.reshape(-1).expand(len(u))
        return level * torch.exp(self.trend * (u - 0.5)) if self.noise_trend else level

    def warp(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w(u) and dw/du."""
        if not self.warped:
            return u, torch.ones_like(u)
        a, b = self.warp_params()
        ua = u**a
        return 1 - (1 - ua) ** b, a * b * u ** (a - 1) * (1 - ua) ** (b - 1)

    def forward(self, u):
        w = self.warp(u[..., 0])[0][..., None]
        return gpytorch.distributions.MultivariateNormal(self.mean_module(w), self.covar_module(w))


@dataclass
class GPFit:
    """A fitted GP over log step; evaluates the curve, its slope and covariances anywhere."""

    model: _GP
    x_lo: float  # log step at u = 0
    x_span: float  # log step per unit of u
    y_mean: float
    y_scale: float
    log_evidence: float  # log marginal likelihood of the fit (of the subsample when subsampled)
    log_evidence_stationary: float
    fit_points: int

    def __post_init__(self):
        m = self.model
        with torch.no_grad():
            U = m.train_inputs[0][:, 0]
            self._W = m.warp(U)[0]
            self._ell = m.covar_module.base_kernel.lengthscale.detach()[0, 0]
            self._s = m.covar_module.outputscale.detach()
            self._c = m.mean_module.constant.detach()
            K, _ = _matern52(self._W[:, None] - self._W[None, :], self._ell, self._s)
            self._L = torch.linalg.cholesky(K + torch.diag(m.noise(U)))
            self._alpha = torch.cholesky_solve((m.train_targets - self._c)[:, None], self._L)[:, 0]

    @property
    def x_scale(self) -> float:
        """Log step per unit of the model's input u (d(log step)/du)."""
        return self.x_span

    def noise_variance(self) -> torch.Tensor:
        """Total noise variance of each training point (standardised units)."""
        with torch.no_grad():
            return self.model.noise(self.model.train_inputs[0][:, 0]).clone()

    @property
    def hyperparameters(self) -> dict[str, float | str]:
        """Kernel, local lengthscale range in log step, signal and learned-noise standard deviations
        in the curve's units."""
        m = self.model
        lik = m.likelihood
        extra = lik.second_noise if isinstance(lik, gpytorch.likelihoods.FixedNoiseGaussianLikelihood) else lik.noise
        a, b = (v.item() for v in m.warp_params())
        with torch.no_grad():
            u = torch.linspace(_MARGIN / (1 + 2 * _MARGIN), (1 + _MARGIN) / (1 + 2 * _MARGIN), 512, dtype=torch.float64)
            local = (self._ell / m.warp(u)[1] * self.x_span).numpy()
            trend = m.trend.item() if m.noise_trend else 0.0
            ends = extra.detach().reshape(-1)[0].item() * np.exp(trend * (u[[0, -1]].numpy() - 0.5))
        return {
            "kernel": "warped" if m.warped else "stationary",
            "lengthscale": float(local.min()),
            "lengthscale_max": float(local.max()),
            "warp_a": a,
            "warp_b": b,
            "signal_std": self._s.item() ** 0.5 * self.y_scale,
            "noise_std": extra.detach().reshape(-1)[0].item() ** 0.5 * self.y_scale,
            "noise_std_first": float(ends[0] ** 0.5 * self.y_scale),
            "noise_std_last": float(ends[1] ** 0.5 * self.y_scale),
            "log_evidence": self.log_evidence,
            "log_evidence_stationary": self.log_evidence_stationary,
            "fit_points": self.fit_points,
        }

    def standardise(self, log_step: np.ndarray) -> torch.Tensor:
        """u of ``log_step``: the model's input."""
        return torch.as_tensor((np.asarray(log_step, dtype=np.float64) - self.x_lo) / self.x_span)

    def _cross(self, log_step):
        m = self.model
        u = self.standardise(log_step)
        with torch.no_grad():
            w, dw = m.warp(u)
            k, dk = _matern52(w[:, None] - self._W[None, :], self._ell, self._s)
        return w, dw, k, dk

    def predict(self, log_step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Posterior mean of the curve, of its slope d/d(log step), and the slope's std, at ``log_step``."""
        _, dw, k, dk = self._cross(log_step)
        with torch.no_grad():
            v = torch.linalg.solve_triangular(self._L, dk.T, upper=False)
            var = (5 * self._s / (3 * self._ell**2) - (v**2).sum(0)).clamp_min(0)
            mean = self._c + k @ self._alpha
            slope = dk @ self._alpha
        dy = self.y_scale * dw / self.x_span  # chain rule through the warp and both standardisations
        return (
            (mean * self.y_scale + self.y_mean).numpy(),
            (slope * dy).numpy(),
            (var.sqrt() * dy.abs()).numpy(),
        )

    def change_std(self, x_from: np.ndarray, x_to: np.ndarray) -> np.ndarray:
        """Posterior standard deviation of f(x_to) − f(x_from), elementwise, in the curve's units."""
        wa, _, ka, _ = self._cross(x_from)
        wb, _, kb, _ = self._cross(x_to)
        with torch.no_grad():
            kab, _ = _matern52(wa - wb, self._ell, self._s)
            va = torch.linalg.solve_triangular(self._L, ka.T, upper=False)
            vb = torch.linalg.solve_triangular(self._L, kb.T, upper=False)
            var = 2 * self._s - 2 * kab - ((va - vb) ** 2).sum(0)
        return (var.clamp_min(0).sqrt() * self.y_scale).numpy()


def _log_evidence(model) -> torch.Tensor:
    """Log marginal likelihood of the training data (nats), by one Cholesky in plain torch —
    the value gpytorch's ExactMarginalLogLikelihood × n gives, without its per-call overhead
    (~0.15 s at 190 points against ~2 ms here)."""
    U, Y = model.train_inputs[0][:, 0], model.train_targets
    noise = model.noise(U)
    W = model.warp(U)[0]
    K, _ = _matern52(
        W[:, None] - W[None, :], model.covar_module.base_kernel.lengthscale[0, 0], model.covar_module.outputscale
    )
    L = torch.linalg.cholesky(K + torch.diag(noise))
    r = (Y - model.mean_module.constant)[:, None]
    a = torch.linalg.solve_triangular(L, r, upper=False)
    return -0.5 * (a**2).sum() - torch.log(torch.diagonal(L)).sum() - 0.5 * len(Y) * np.log(2 * np.pi)


def _train(model, max_iter) -> float:
    """Maximise the marginal likelihood; return the log evidence (nats, not per point)."""
    model.train()
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = -_log_evidence(model)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        evidence = _log_evidence(model).item()
    if not all(torch.isfinite(p).all() for p in model.parameters()) or not np.isfinite(evidence):
        raise RuntimeError("the GP fit diverged; is the curve finite and non-constant?")
    return evidence


def _new_model(U, Y, var, options, x_span, warped, noise_trend=False):
    floor = gpytorch.constraints.GreaterThan(options.min_noise)
    if var is None:
        likelihood = gpytorch.likelihoods.GaussianLikelihood(noise_constraint=floor).double()
        likelihood.noise = max(0.01, 2 * options.min_noise)
    else:
        likelihood = gpytorch.likelihoods.FixedNoiseGaussianLikelihood(
            noise=var, learn_additional_noise=True, noise_constraint=floor
        ).double()
        likelihood.second_noise = max(1e-4, 2 * options.min_noise)
    model = _GP(U, Y, likelihood, options.min_lengthscale / x_span, warped, noise_trend).double()
    return model, likelihood


def fit_gp(
    log_step: np.ndarray, y: np.ndarray, options: StageOptions = StageOptions(), noise: np.ndarray | None = None
) -> GPFit:
    """GP fit of ``y`` over ``log_step`` by maximum marginal likelihood (appendix B.1).

    ``noise``: standard error of each point (heteroscedastic, fixed) or None (learned). The
    kernel is chosen as in the module docstring; above ``options.max_fit_points`` points the
    hyperparameters come from a subsample and the posterior conditions on all points."""
    x = np.asarray(log_step, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 4:
        raise ValueError(f"need at least 4 finite points at steps > 0 to fit a GP, got {len(x)}")
    span = np.ptp(x) or 1.0
    x_lo, x_span = x.min() - _MARGIN * span, span * (1 + 2 * _MARGIN)
    y_mean, y_scale = y.mean(), y.std() or 1.0
    U_all = torch.as_tensor((x - x_lo) / x_span)
    Y_all = torch.as_tensor((y - y_mean) / y_scale)
    var_all = None if noise is None else torch.as_tensor(np.asarray(noise, dtype=np.float64) ** 2 / y_scale**2)
    idx = np.arange(len(x))
    if len(x) > options.max_fit_points:  # evenly in index: keeps both the log and the linear density
        idx = np.unique(np.round(np.linspace(0, len(x) - 1, options.max_fit_points)).astype(np.int64))
    U, Y = U_all[idx], Y_all[idx]
    var = None if var_all is None else var_all[idx]

    # Stationary first, from a 1-log-step lengthscale (one start suffices: from 0.5, 1.5 and 4 log
    # steps L-BFGS reaches the same optimum on the test curves).
    with _threads(len(idx)):
        best, best_ev, stationary = _select(U, Y, var, options, x_span)
    if len(idx) < len(x):  # condition on every point with the subsample's hyperparameters
        best.set_train_data(U_all[:, None], Y_all, strict=False)
        if var_all is not None:
            best.likelihood.noise = var_all
    with _threads(len(x)):
        return GPFit(
            best, float(x_lo), float(x_span), float(y_mean), float(y_scale), float(best_ev), float(stationary), len(idx)
        )


def _select(U, Y, var, options, x_span):
    """The fitted model the marginal likelihood chooses (see the module docstring), its log
    evidence and the stationary fit's."""
    model, _ = _new_model(U, Y, var, options, x_span, warped=False)
    model.covar_module.base_kernel.lengthscale = max(1.0, 1.5 * options.min_lengthscale) / x_span
    model.covar_module.outputscale = 1.0
    stationary = _train(model, options.max_iter)
    best, best_ev = model, stationary
    if options.kernel != "stationary":
        # Warped, from the stationary optimum (the identity warp), so it can only gain. (A second
        # start at a = 1, b = 0.5 reached the same optimum on every test curve: not worth its time.)
        w_model, _ = _new_model(U, Y, var, options, x_span, warped=True)
        w_model.load_state_dict(model.state_dict(), strict=False)
        w_model.set_warp(1.0, 1.0)
        try:
            ev = _train(w_model, options.max_iter)
        except (RuntimeError, torch.linalg.LinAlgError):  # a warp that diverges loses the choice
            ev = -np.inf
        # AIC: the warp's two parameters must buy more than one nat each
        if options.kernel == "warped" or ev > stationary + 2.0:
            best, best_ev = w_model, ev
    if var is None:
        # the noise trend of the module docstring, from the chosen fit (the quick run's LLC:
        # ~0.1 LLC units early against ~1 late)
        t_model, _ = _new_model(U, Y, var, options, x_span, best.warped, noise_trend=True)
        t_model.load_state_dict(best.state_dict(), strict=False)
        try:
            ev = _train(t_model, options.max_iter)
        except (RuntimeError, torch.linalg.LinAlgError):
            ev = -np.inf
        if ev > best_ev + 1.0:  # AIC: one more parameter
            best, best_ev = t_model, ev
    best.eval()
    return best, best_ev, stationary


def _as_curve(y, step) -> tuple[np.ndarray, np.ndarray, str, dict]:
    if isinstance(y, xr.DataArray):
        if y.dims != ("step",):
            raise ValueError(
                f"stages need a 1-D curve over 'step'; got dims {y.dims}; select one run/chain first "
                f"(e.g. .sel(run=...))"
            )
        return y["step"].values.astype(np.int64), y.values.astype(np.float64), str(y.name or "y"), dict(y.attrs)
    if step is None:
        raise ValueError("pass `step` with a numpy curve, or a DataArray with a 'step' coordinate")
    step, y = np.asarray(step), np.asarray(y, dtype=np.float64)
    if step.shape != y.shape or y.ndim != 1:
        raise ValueError(f"step and y must be 1-D of equal length; got shapes {step.shape} and {y.shape}")
    return step.astype(np.int64), y, "y", {}


def _as_noise(noise, steps: np.ndarray) -> np.ndarray | None:
    """Per-checkpoint standard error aligned with ``steps``, or None."""
    if noise is None:
        return None
    if isinstance(noise, xr.DataArray):
        if noise.ndim == 0:
            noise = float(noise)
        else:
            if noise.dims != ("step",):
                raise ValueError(f"noise must be over 'step' like the curve; got dims {noise.dims}")
            noise = noise.reindex(step=steps).values
    se = np.asarray(noise, dtype=np.float64)
    if se.shape not in ((), steps.shape):
        raise ValueError(
            f"noise must be a scalar or one standard error per checkpoint; got shape {se.shape} for {steps.shape} steps"
        )
    return np.broadcast_to(se, steps.shape)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1))


def _extend(mask: np.ndarray, i: int) -> tuple[int, int]:
    """The run of True around index i (just i when mask[i] is False), one point wider each side
    so that an interval is never empty."""
    a = b = i
    while a > 0 and mask[a - 1]:
        a -= 1
    while b < len(mask) - 1 and mask[b + 1]:
        b += 1
    return max(a - 1, 0), min(b + 1, len(mask) - 1)


@dataclass
class _Boundary:
    index: int  # grid index of the boundary
    kind: str
    lo: int  # grid indices of its uncertainty
    hi: int
    start: int  # grid indices of its plateau (|slope| within tolerance)
    end: int
    tolerance: float  # τ, in slope units
    significance: float


def _boundaries(x, smooth, slope, sd, z, x_data, options, change_std) -> list[_Boundary]:
    """Every boundary on the grid; see the module docstring (B.1 with data-driven thresholds)."""
    lo, hi = slope - z * sd, slope + z * sd
    sig = np.where(lo > 0, 1, np.where(hi < 0, -1, 0))
    near = np.clip(np.searchsorted(x, x_data), 0, len(x) - 1)  # grid point at (or just after) each checkpoint
    tstat = np.abs(slope) / np.maximum(sd, 1e-300)

    def n_significant(a, b, s):
        """Checkpoints in grid [a, b] at which the slope is significantly of sign s."""
        at = near[(near >= a) & (near <= b)]
        return int(np.count_nonzero(sig[at] == s))

    floor = options.min_change * np.ptp(smooth)
    moves = []
    for s in (1, -1):
        for a, b in _runs(sig == s):
            if n_significant(a, b, s) < options.min_checkpoints:
                continue
            change = abs(smooth[b] - smooth[a])
            if change <= max(floor, options.change_z * change_std(x[a : a + 1], x[b : b + 1])[0]):
                continue
            moves.append((a, b, s))
    moves.sort()
    chains = []  # runs of consecutive movements of one sign: [first, last, sign]
    for a, b, s in moves:
        if chains and chains[-1][2] == s:
            chains[-1][1] = b
        else:
            chains.append([a, b, s])

    found = []
    pieces = []  # per chain: the (first, last) grid index of each stretch between its plateaus
    absl = np.abs(slope)
    for A, B, s in chains:
        splits: list[int] = []
        minima = [i for i in range(A + 1, B) if absl[i] <= absl[i - 1] and absl[i] <= absl[i + 1]]
        while True:
            best = None
            edges = [A, *sorted(splits), B]
            for i in minima:
                if i in splits:
                    continue
                k = np.searchsorted(edges, i)
                p, q = edges[k - 1], edges[k]
                if n_significant(p, i, s) < options.min_checkpoints or n_significant(i, q, s) < options.min_checkpoints:
                    continue
                tau = options.tolerance * np.sqrt(absl[p:i].max() * absl[i + 1 : q + 1].max())
                ratio = absl[i] / tau
                if ratio < 1 and (best is None or ratio < best[0]):
                    best = (ratio, i, tau, p, q)
            if best is None:
                break
            splits.append(best[1])
        edges = [A, *sorted(splits), B]
        pieces.append(list(pairwise(edges)))
        for (p, i), (_, q) in zip(pieces[-1][:-1], pieces[-1][1:]):
            tau = options.tolerance * np.sqrt(absl[p:i].max() * absl[i + 1 : q + 1].max())
            start, end = _extend(absl < tau, i)
            # The boundary: where the next movement has begun — |slope| back above τ and the band
            # excluding zero (a GP bleeds a steep rise's slope back onto the plateau; the band does
            # not). Both are crossings of steep functions, so float rounding cannot move them,
            # unlike the minimum of |slope| on a long flat stretch.
            after = np.flatnonzero((np.arange(len(x)) > i) & (absl >= tau) & (s * lo > 0))
            b = int(after[0]) if len(after) else end
            u_lo, u_hi = _extend((lo <= slope[b]) & (slope[b] <= hi), b)
            z_side = min(tstat[p:i].max(), tstat[i + 1 : q + 1].max())
            z_dip = (tau - absl[i]) / max(sd[i], 1e-300)
            found.append(_Boundary(b, "plateau", u_lo, u_hi, start, end, tau, float(ndtr(min(z_side, z_dip)))))
    for (_, B1, s1), (A2, _, _), left, right in zip(chains, chains[1:], pieces, pieces[1:]):
        gap = np.arange(B1, A2 + 1)
        i = int(gap[np.argmax(smooth[gap] * s1)])  # max after a rise, min after a fall
        (p, _), (_, q) = left[-1], right[0]
        tau = options.tolerance * np.sqrt(absl[p : B1 + 1].max() * absl[A2 : q + 1].max())
        start, end = _extend(absl < tau, i)
        u_lo, u_hi = _extend((lo <= 0) & (0 <= hi), i)
        z_side = min(tstat[p : B1 + 1].max(), tstat[A2 : q + 1].max())
        found.append(_Boundary(i, "max" if s1 > 0 else "min", u_lo, u_hi, start, end, tau, float(ndtr(z_side))))
    return sorted(found, key=lambda f: f.index)


@contextmanager
def _threads(n_points: int):
    """One torch thread while the matrices are small, the caller's count restored on exit.

    At a few hundred points each Cholesky takes ~0.3 ms on one thread but ~4 ms on two on a
    loaded machine (thread hand-off dominates), which made a fit 15× slower; above 2,000 points
    the threads pay for themselves and are left alone."""
    before = torch.get_num_threads()
    if n_points <= 2000 and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _attrs(long_name: str, units: str, description: str) -> dict:
    return {"long_name": long_name, "units": units, "description": description}


def find_stages(y: xr.DataArray | np.ndarray, step: np.ndarray | None = None, noise=None, **options) -> xr.Dataset:
    """Stage boundaries and stages of a curve over training (appendix B.1).

    ``y`` is a DataArray over ``step`` (e.g. ``llc.llc_mean``) or a numpy array with ``step``.
    ``noise`` is the standard error of each point — a scalar, an array like ``y`` or a DataArray
    over ``step`` (for the LLC, ``llc_std / sqrt(chains)``) — used as fixed heteroscedastic GP
    noise beside a learned extra term; None learns one noise level. Keyword options are the
    fields of :class:`StageOptions`. Steps ≤ 0 (log step undefined) and non-finite values (or
    noise) are left out of the fit; the smooth curve and slope are NaN there, and step 0 belongs
    to the first stage, which starts at the first step given.

    Returns a Dataset with, over ``step``: ``smooth``, ``slope``, ``slope_lo``, ``slope_hi``,
    ``stage`` (1-based, as in LR1…LR5); over ``boundary``: ``boundary_step``, ``boundary_kind``
    ("max", "min", "plateau"), ``boundary_step_lo``, ``boundary_step_hi`` (its uncertainty),
    ``boundary_significance``, ``plateau_start``, ``plateau_end``, ``boundary_slope_tolerance``;
    over ``stage_id`` (1…n): ``stage_start``, ``stage_end``, ``stage_direction``, ``stage_change``.
    """
    opt = StageOptions(**options)
    steps, values, name, in_attrs = _as_curve(y, step)
    if np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing; sort the curve by step and drop duplicates")
    se = _as_noise(noise, steps)
    use = (steps > 0) & np.isfinite(values)
    if se is not None:
        if np.any(se[use] < 0):
            raise ValueError("noise is a standard error and must be ≥ 0")
        use &= np.isfinite(se)
    x_data = np.log(steps[use])
    x_grid = np.linspace(x_data[0], x_data[-1], opt.grid)
    z = float(ndtri(0.5 + opt.credible / 2))
    pos = steps > 0
    out = {}
    with _threads(len(x_data)):
        fit = fit_gp(x_data, values[use], opt, None if se is None else se[use])
        out["grid"] = fit.predict(x_grid)
        x_ckpt = np.log(steps[pos])
        if len(x_ckpt) <= opt.grid:
            out["ckpt"] = fit.predict(x_ckpt)
        else:  # n ≫ grid: the band at every checkpoint would cost n solves of size n; the grid
            # (0.013 log step apart over 500k steps) is far finer than any lengthscale, so interpolate
            out["ckpt"] = tuple(np.interp(x_ckpt, x_grid, v) for v in out["grid"])
        if opt.wrt == "step":  # d/dt = e^{−x} d/dx
            for key, xs in (("grid", x_grid), ("ckpt", x_ckpt)):
                mean, slope, sd = out[key]
                out[key] = mean, slope * np.exp(-xs), sd * np.exp(-xs)
        g_mean, g_slope, g_sd = out["grid"]
        found = _boundaries(x_grid, g_mean, g_slope, g_sd, z, x_data, opt, fit.change_std)
        hyper = fit.hyperparameters

    def at(i):
        return np.array([round(np.exp(x_grid[j])) for j in i], dtype=np.int64)

    b_step = at([f.index for f in found])
    b_kind = np.array([f.kind for f in found], dtype="<U7")
    edges = np.concatenate([[steps[0]], b_step, [steps[-1]]])
    smooth_at = np.interp(np.log(np.maximum(edges, 1)), x_grid, g_mean)
    change = np.diff(smooth_at)

    def over_step(v):
        full = np.full(len(steps), np.nan)
        full[pos] = v
        return full

    c_mean, c_slope, c_sd = out["ckpt"]
    units = in_attrs.get("units", "")
    per = "log step" if opt.wrt == "log_step" else "step"
    slope_units = f"{units} per {per}" if units else f"per {per}"
    label = in_attrs.get("long_name", name)
    band = f"pointwise {opt.credible:.0%} credible band of the slope"
    return xr.Dataset(
        {
            "smooth": (
                "step",
                over_step(c_mean),
                _attrs(
                    f"GP-smoothed {label}", units, f"Posterior mean of a GP fit of {name} over log step (appendix B.1)."
                ),
            ),
            "slope": (
                "step",
                over_step(c_slope),
                _attrs(f"slope of {label}", slope_units, f"Posterior mean of d{name}/d({per}) of the GP."),
            ),
            "slope_lo": (
                "step",
                over_step(c_slope - z * c_sd),
                _attrs(f"slope of {label}, lower bound", slope_units, f"Lower end of the {band}."),
            ),
            "slope_hi": (
                "step",
                over_step(c_slope + z * c_sd),
                _attrs(f"slope of {label}, upper bound", slope_units, f"Upper end of the {band}."),
            ),
            "stage": (
                "step",
                1 + np.searchsorted(b_step, steps, side="right"),
                _attrs(
                    "stage", "1", "Stage containing the step, numbered from 1; a boundary step starts the next stage."
                ),
            ),
            "boundary_step": (
                "boundary",
                b_step,
                _attrs(
                    "stage boundary",
                    "steps",
                    "Where the slope vanishes: the extremum of the smooth curve at a crossing "
                    "('max'/'min'), the end of the plateau at a saddle.",
                ),
            ),
            "boundary_kind": (
                "boundary",
                b_kind,
                _attrs(
                    "boundary kind",
                    "1",
                    "'max' or 'min' where the slope crosses zero, 'plateau' at a saddle (a local "
                    "minimum of |slope| below the tolerance).",
                ),
            ),
            "boundary_step_lo": (
                "boundary",
                at([f.lo for f in found]),
                _attrs(
                    "stage boundary, earliest",
                    "steps",
                    f"Start of the stretch around the boundary where the {band} contains the slope's "
                    f"value there (0 at a crossing, ±tolerance at a plateau's end).",
                ),
            ),
            "boundary_step_hi": (
                "boundary",
                at([f.hi for f in found]),
                _attrs("stage boundary, latest", "steps", "End of that stretch."),
            ),
            "boundary_significance": (
                "boundary",
                np.array([f.significance for f in found], dtype=np.float64),
                _attrs(
                    "boundary significance",
                    "1",
                    "Posterior probability (Gaussian, pointwise) of the boundary's weakest link: the "
                    "slope's sign on each side and, at a plateau, |slope| below the tolerance at its minimum.",
                ),
            ),
            "plateau_start": (
                "boundary",
                at([f.start for f in found]),
                _attrs(
                    "plateau start",
                    "steps",
                    "First step of the stretch around the boundary where |slope| stays below the tolerance.",
                ),
            ),
            "plateau_end": (
                "boundary",
                at([f.end for f in found]),
                _attrs(
                    "plateau end",
                    "steps",
                    "Last step of that stretch; a plateau's boundary is here, where the next movement begins.",
                ),
            ),
            "boundary_slope_tolerance": (
                "boundary",
                np.array([f.tolerance for f in found], dtype=np.float64),
                _attrs(
                    "slope tolerance",
                    slope_units,
                    "tolerance × the geometric mean of the peak |slope|s of the movements on either "
                    "side of the boundary.",
                ),
            ),
            "stage_start": ("stage_id", edges[:-1], _attrs("stage start", "steps", "First step of the stage.")),
            "stage_end": (
                "stage_id",
                edges[1:],
                _attrs("stage end", "steps", "Last step of the stage (the next stage's start)."),
            ),
            "stage_direction": (
                "stage_id",
                np.where(change >= 0, "increasing", "decreasing").astype("<U10"),
                _attrs("stage direction", "1", f"Sign of the change of the smoothed {name} over the stage."),
            ),
            "stage_change": (
                "stage_id",
                change,
                _attrs(f"change of {label}", units, f"Smoothed {name} at the stage's end minus at its start."),
            ),
        },
        coords={
            "step": ("step", steps, _attrs("training step", "steps", "Checkpoint step.")),
            "boundary": (
                "boundary",
                np.arange(len(found)),
                _attrs("boundary index", "1", "Boundaries in order of step."),
            ),
            "stage_id": (
                "stage_id",
                np.arange(1, len(found) + 2),
                _attrs("stage number", "1", "Stages numbered from 1."),
            ),
        },
        attrs={
            "description": f"Developmental stages of {name} (paper §5, appendix B.1).",
            "variable": name,
            "noise": "per-checkpoint standard error plus a learned term" if se is not None else "learned",
            **{f"option_{k}": v for k, v in asdict(opt).items()},
            **{f"gp_{k}": v for k, v in hyper.items()},
        },
    )


def stage_table(stages: xr.Dataset, others: xr.Dataset | None = None) -> pd.DataFrame:
    """One row per stage: start, end, direction, change of the staged (smoothed) variable and,
    for every variable of ``others`` over ``step``, its change over the stage (value at the
    checkpoint nearest the stage's end minus at its start)."""
    table = pd.DataFrame(
        {
            "start": stages.stage_start.values,
            "end": stages.stage_end.values,
            "direction": stages.stage_direction.values,
            f"Δ{stages.attrs.get('variable', 'y')}": stages.stage_change.values,
        },
        index=pd.Index(stages.stage_id.values, name="stage"),
    )
    for name, da in others.data_vars.items() if others is not None else ():
        if da.dims != ("step",):
            continue  # only curves over step have a change per stage
        end, start = (da.sel(step=table[k].values, method="nearest").values for k in ("end", "start"))
        table[f"Δ{name}"] = end - start
    return table
