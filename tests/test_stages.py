"""Stage boundaries (appendix B.1) recovered from synthetic curves with known plateaus.

The curves are sums of logistic steps in log step, on the paper's 190 log + linear checkpoints
over 500k steps. True boundaries are computed from the noiseless curve by B.1's rule: a zero of
the slope between a rise and a fall; between two transitions of one sign, a saddle at the minimum
of |slope| whose boundary is placed (issue #13) at the plateau's end, where |slope| climbs back
through the tolerance. The fidelity tests at the end use the generators of
:mod:`devarray.synthetic_curves` (the paper's regression and language runs, two noise levels).
"""

import gpytorch
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from devarray.schedules import checkpoint_schedule
from devarray.stages import StageOptions, find_stages, fit_gp, stage_table
from devarray.synthetic_curves import language_curve, null_curve, regression_curve

STEPS = checkpoint_schedule(500_000, 100, 100)
TOLERANCE = StageOptions().tolerance
X = np.log(np.maximum(STEPS, 1))


class Steps:
    """Σ heightᵢ · logistic((log step − centreᵢ)/widthᵢ), with its analytic slope in log step."""

    def __init__(self, centres, heights, widths):
        self.c, self.h, self.w = map(np.asarray, (centres, heights, np.broadcast_to(widths, len(centres))))

    def __call__(self, x):
        return sum(h / (1 + np.exp(-(x - c) / w)) for c, h, w in zip(self.c, self.h, self.w))

    def slope(self, x):
        return sum(
            h / w * np.exp(-(x - c) / w) / (1 + np.exp(-(x - c) / w)) ** 2 for c, h, w in zip(self.c, self.h, self.w)
        )

    def boundaries(self, tolerance=TOLERANCE):
        """(log step, kind) of each true boundary: the zero of the slope between a rise and a fall;
        between two transitions of one sign, the end of the saddle plateau, where |slope| climbs
        back through tolerance × the geometric mean of the two transitions' peak |slope|s."""
        out = []
        for i in range(len(self.c) - 1):
            x = np.linspace(self.c[i], self.c[i + 1], 20_001)
            s = np.abs(self.slope(x))
            m = np.argmin(s)
            if self.h[i] * self.h[i + 1] > 0:
                tau = tolerance * np.sqrt(s[0] * s[-1])
                out.append((x[m + np.argmax(s[m:] >= tau)], "plateau"))
            else:
                out.append((x[m], "max" if self.h[i] > 0 else "min"))
        return out

    def saddle_minima(self):
        """Log step of the minimum of |slope| between each pair of transitions."""
        return [
            np.linspace(a, b, 20_001)[np.argmin(np.abs(self.slope(np.linspace(a, b, 20_001))))]
            for a, b in zip(self.c, self.c[1:])
        ]

    def sample(self, sigma, seed):
        return self(X) + sigma * np.random.default_rng(seed).standard_normal(len(X))


# The brief's curve: plateaus 0 → 50 → 120 → 80; a saddle plateau, then a maximum.
STAGED = Steps([np.log(30), np.log(2000), np.log(60_000)], [50, 70, -40], 0.35)
# Shaped like the paper's LR curve (figure 1b): rise, rise, fall, fall, rise — transitions
# sharpen late in training, where linear checkpoints are dense.
LR_LIKE = Steps([4.5, 8.0, 10.9, 12.0, 12.8], [40, 80, -40, -30, 15], [0.4, 0.4, 0.12, 0.1, 0.06])


# gpytorch's posterior by Cholesky, never CG or Lanczos (their tolerances are ~1e-2)
EXACT = gpytorch.settings.fast_computations(covar_root_decomposition=False, log_prob=False, solves=False)


def log_bounds(ds):
    return (np.log(ds.boundary_step.values), np.log(ds.boundary_step_lo.values), np.log(ds.boundary_step_hi.values))


def assert_recovered(ds, curve, max_error, margin=0.1):
    """Same kinds in the same order; each boundary within ``max_error`` of the truth in log step,
    and the truth inside its reported uncertainty, widened by ``margin`` for the GP's smoothing bias."""
    truth = curve.boundaries()
    assert list(ds.boundary_kind.values) == [k for _, k in truth]
    x, lo, hi = log_bounds(ds)
    true_x = np.array([t for t, _ in truth])
    assert np.all(np.abs(x - true_x) <= max_error), (x, true_x)
    assert np.all((lo - margin <= true_x) & (true_x <= hi + margin)), (lo, true_x, hi)
    # a plateau's reported extent holds the saddle's minimum of |slope|
    minima = np.array(curve.saddle_minima())
    start, end = np.log(ds.plateau_start.values), np.log(ds.plateau_end.values)
    plateau = ds.boundary_kind.values == "plateau"
    assert np.all((start[plateau] - margin <= minima[plateau]) & (minima[plateau] <= end[plateau] + margin)), (
        start,
        minima,
        end,
    )


@pytest.mark.parametrize("kernel", ["stationary", "warped"])
@pytest.mark.parametrize("with_noise", [False, True])
def test_gp_slope_and_band_match_gpytorch(kernel, with_noise):
    # The closed-form derivative kernel (through the input warp) against autograd through
    # gpytorch's posterior mean and finite differences of gpytorch's posterior covariance, for
    # both likelihoods (learned noise; fixed per-point noise plus a learned term).
    x = np.linspace(0, 13, 150)
    se = np.linspace(0.5, 2.0, 150)
    y = 50 / (1 + np.exp(-(x - 5) / 0.4)) + se * np.random.default_rng(0).standard_normal(150)
    fit = fit_gp(x, y, StageOptions(kernel=kernel), noise=se if with_noise else None)
    assert fit.hyperparameters["kernel"] == kernel
    q = np.array([2.0, 5.0, 7.3, 12.9])
    mean, slope, sd = fit.predict(q)
    a = fit.standardise(q).requires_grad_(True)
    h = 1e-4  # the input u spans (0, 1): 13 log steps per unit
    a0 = a.detach()
    both = torch.cat([a0 + h, a0 - h])
    if with_noise or fit.model.noise_trend:
        # gpytorch's eval-mode FixedNoise posterior leaves the learned extra noise out of the
        # training covariance (1.15.2), unlike its marginal likelihood, and its Gaussian likelihood
        # has no trend: build the posterior densely from the model's own kernel, warp and total
        # noise instead
        m_ = fit.model
        U = m_.train_inputs[0]
        kern = m_.covar_module

        def w(u):
            return m_.warp(u)[0][:, None]

        A = kern(w(U[:, 0])).to_dense() + torch.diag(fit.noise_variance())
        r = m_.train_targets - m_.mean_module.constant
        m = m_.mean_module.constant + kern(w(a), w(U[:, 0])).to_dense() @ torch.linalg.solve(A, r)
        with torch.no_grad():
            Kq = kern(w(both), w(U[:, 0])).to_dense()
            C = kern(w(both)).to_dense() - Kq @ torch.linalg.solve(A, Kq.T)
    else:
        with EXACT:
            m = fit.model(a).mean
            with torch.no_grad():
                C = fit.model(both).covariance_matrix
    (g,) = torch.autograd.grad(m.sum(), a)
    n = len(q)
    fd_var = (C.diagonal()[:n] + C.diagonal()[n:] - 2 * C[:n, n:].diagonal()) / (4 * h * h)
    to_units = fit.y_scale / fit.x_scale
    np.testing.assert_allclose(mean, m.detach().numpy() * fit.y_scale + fit.y_mean, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(slope, g.numpy() * to_units, rtol=1e-8, atol=1e-10)
    # atol: the finite difference of a covariance loses ~1e-5 where the band is nearly closed
    np.testing.assert_allclose(sd, fd_var.sqrt().numpy() * to_units, rtol=1e-3, atol=1e-4)


def test_change_std_matches_gpytorch():
    # sd of f(b) − f(a), which decides whether a movement is small against its own uncertainty
    x = np.linspace(0, 13, 120)
    y = 30 * np.tanh(x - 6) + np.random.default_rng(1).standard_normal(120)
    fit = fit_gp(x, y)
    qa, qb = np.array([1.0, 4.0, 9.0]), np.array([3.0, 8.0, 12.5])
    with torch.no_grad(), EXACT:
        C = fit.model(fit.standardise(np.concatenate([qa, qb]))).covariance_matrix.numpy()
    n = len(qa)
    want = np.sqrt(C.diagonal()[:n] + C.diagonal()[n:] - 2 * C[:n, n:].diagonal()) * fit.y_scale
    np.testing.assert_allclose(fit.change_std(qa, qb), want, rtol=1e-6)


def test_noiseless_curve_smooth_and_slope():
    ds = find_stages(STAGED(X), STEPS)
    x = X[1:]
    assert np.isnan(ds.smooth[0]) and np.isnan(ds.slope[0])  # step 0: no log step
    np.testing.assert_allclose(ds.smooth[1:], STAGED(x), atol=0.01 * 120)
    true = STAGED.slope(x)
    # light smoothing (min_noise) rounds the steepest peak by a few per cent
    np.testing.assert_allclose(ds.slope[1:], true, atol=0.05 * np.abs(true).max())
    assert np.all(ds.slope_lo[1:] <= ds.slope[1:]) and np.all(ds.slope[1:] <= ds.slope_hi[1:])


def test_noiseless_staged_curve():
    ds = find_stages(STAGED(X), STEPS)
    assert_recovered(ds, STAGED, max_error=0.05)
    assert list(ds.stage_direction.values) == ["increasing", "increasing", "decreasing"]
    # a plateau's boundary is at its end (issue #13), so stage 1 takes the foot of the second rise
    edges = np.array([0.0] + [t for t, _ in STAGED.boundaries()] + [X[-1]])
    np.testing.assert_allclose(ds.stage_change, np.diff(STAGED(edges)), atol=2.0)
    assert ds.stage_start.values[0] == 0 and ds.stage_end.values[-1] == 500_000
    np.testing.assert_array_equal(ds.stage_start.values[1:], ds.boundary_step.values)
    np.testing.assert_array_equal(ds.stage_end.values[:-1], ds.boundary_step.values)


@pytest.mark.parametrize("sigma", [2.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_staged_curve(sigma, seed):
    # σ = 5 is 4% of the range: the paper's LLC spread between seeds (4.2, figure B.2 caption).
    # A plateau spans ~4 log steps of near-zero slope, so where its minimum falls is vague.
    assert_recovered(find_stages(STAGED.sample(sigma, seed), STEPS), STAGED, max_error=0.8)


@pytest.mark.parametrize("sigma,seed", [(0.0, 0), (2.0, 0), (2.0, 1)])
def test_lr_like_curve(sigma, seed):
    ds = find_stages(LR_LIKE.sample(sigma, seed), STEPS)
    assert_recovered(ds, LR_LIKE, max_error=0.6 if sigma else 0.1)
    assert list(ds.stage_direction.values) == ["increasing", "increasing", "decreasing", "decreasing", "increasing"]


@pytest.mark.parametrize(
    "name,curve,direction",
    [
        ("line in step", lambda x: 120 * np.exp(x) / 500_000, "increasing"),
        ("line in log step", lambda x: 10 * x, "increasing"),
        ("single rise", Steps([np.log(3000)], [120], 0.6), "increasing"),
        ("single fall", Steps([np.log(300)], [-80], 0.3), "decreasing"),
    ],
)
@pytest.mark.parametrize("sigma,seed", [(0.0, 0), (5.0, 0), (5.0, 1)])
def test_no_boundary_without_plateau(name, curve, direction, sigma, seed):
    y = curve(X) + sigma * np.random.default_rng(seed).standard_normal(len(X))
    ds = find_stages(y, STEPS)
    assert ds.sizes["boundary"] == 0, (name, ds.boundary_step.values)
    assert list(ds.stage_direction.values) == [direction]
    assert np.all(ds.stage.values == 1)


def test_stable_between_noise_seeds():
    runs = [find_stages(STAGED.sample(3.0, seed), STEPS) for seed in range(5)]
    assert all(list(r.boundary_kind.values) == ["plateau", "max"] for r in runs)
    _, lo, hi = zip(*(log_bounds(r) for r in runs))
    # every seed's uncertainty interval overlaps every other's
    assert np.all(np.max(lo, axis=0) <= np.min(hi, axis=0))


def test_tolerance_decides_saddles():
    # Two rises whose slope dips to a quarter of its peak between them: a dip in speed, not a
    # plateau, at the default tolerance (15 % of the neighbours' peaks); a plateau when the
    # tolerance is raised above the dip. (Before issue #13 the boundary sat at the minimum of
    # |slope|, 7.35; now the plateau's extent holds it and the boundary is at the extent's end.)
    curve = Steps([6.0, 8.7], [60, 60], 0.4)
    x = np.linspace(6, 8.7, 2001)
    dip = np.abs(curve.slope(x)).min() / np.abs(curve.slope(np.linspace(0, 13, 20001))).max()
    assert 0.2 < dip < 0.3
    assert find_stages(curve(X), STEPS).sizes["boundary"] == 0
    ds = find_stages(curve(X), STEPS, tolerance=0.35)
    assert list(ds.boundary_kind.values) == ["plateau"]
    start, end, b = (np.log(ds[v].values[0]) for v in ("plateau_start", "plateau_end", "boundary_step"))
    assert start < 7.35 < end  # the dip is symmetric: its minimum is at 7.35
    assert abs((start + end) / 2 - 7.35) < 0.05
    true_end = curve.boundaries(tolerance=0.35)[0][0]
    assert abs(b - true_end) < 0.05 and b >= end - 0.02


def test_wrt_step_rescales_slope_and_keeps_crossings():
    # d/dt = e^{-log t} d/d(log t) weighs early steps by 1/t (the sensitivity B.1 warns of, and
    # why the paper differentiates in log t); significance is the same in either variable.
    curve = Steps([9.0, 11.5], [60, -30], 0.3)
    y = curve.sample(1.0, 0)
    log_ds = find_stages(y, STEPS)
    t_ds = find_stages(y, STEPS, wrt="step", tolerance=1e-4)
    # Before issue #13 the default tolerance, relative to the global max |slope| (at step 1 in
    # step), found nothing in step; relative to the neighbouring movements it finds the maximum
    assert list(find_stages(y, STEPS, wrt="step").boundary_kind.values) == ["max"]
    np.testing.assert_allclose(t_ds.slope[1:] * STEPS[1:], log_ds.slope[1:], rtol=1e-9)
    np.testing.assert_allclose(t_ds.slope_hi[1:] * STEPS[1:], log_ds.slope_hi[1:], rtol=1e-9)
    # a zero of the slope is a zero in either variable
    assert list(log_ds.boundary_kind.values) == list(t_ds.boundary_kind.values) == ["max"]
    assert t_ds.boundary_step.item() == log_ds.boundary_step.item()
    assert "per step" in t_ds.slope.attrs["units"] and t_ds.attrs["option_wrt"] == "step"


def test_dataarray_in_labelled_dataset_out():
    y = xr.DataArray(
        STAGED(X), dims="step", coords={"step": STEPS}, name="llc_mean", attrs={"long_name": "LLC", "units": "nats"}
    )
    y[5:9] = np.nan  # checkpoints not yet estimated are left out of the fit
    ds = find_stages(y, min_noise=1e-3)
    assert set(ds.dims) == {"step", "boundary", "stage_id"}
    np.testing.assert_array_equal(ds.step, STEPS)
    for name in ("smooth", "slope", "slope_lo", "slope_hi", "stage"):
        assert ds[name].dims == ("step",)
    for name in (
        "boundary_step",
        "boundary_kind",
        "boundary_step_lo",
        "boundary_step_hi",
        "boundary_significance",
        "plateau_start",
        "plateau_end",
        "boundary_slope_tolerance",
    ):
        assert ds[name].dims == ("boundary",)
    for name in ("stage_start", "stage_end", "stage_direction", "stage_change"):
        assert ds[name].dims == ("stage_id",)
    for name, var in ds.variables.items():
        assert {"long_name", "units", "description"} <= set(var.attrs), name
    assert ds.smooth.attrs["units"] == "nats" and ds.slope.attrs["units"] == "nats per log step"
    assert ds.attrs["variable"] == "llc_mean"
    assert ds.attrs["option_tolerance"] == StageOptions().tolerance
    # the tolerance is per boundary (issue #13): a fraction of the geometric mean of the neighbours' peaks
    peaks = [np.abs(STAGED.slope(c)) for c in STAGED.c]
    np.testing.assert_allclose(
        ds.boundary_slope_tolerance,
        StageOptions().tolerance * np.sqrt(np.multiply(peaks[:-1], peaks[1:])),
        rtol=0.05,
    )
    assert np.all((ds.boundary_significance > 0.5) & (ds.boundary_significance <= 1))
    assert 0 < ds.attrs["gp_noise_std"] < 5 and 0 < ds.attrs["gp_lengthscale"] <= ds.attrs["gp_lengthscale_max"]
    assert ds.attrs["gp_kernel"] in ("stationary", "warped") and ds.attrs["noise"] == "learned"
    # stage labels: 1 up to the first boundary, which starts stage 2, and so on
    b = ds.boundary_step.values
    np.testing.assert_array_equal(ds.stage.values, 1 + np.searchsorted(b, STEPS, side="right"))
    assert ds.stage.sel(step=slice(b[0], None)).values[0] == 2 and ds.stage.values[0] == 1
    assert list(ds.stage_id.values) == [1, 2, 3]
    assert_recovered(ds, STAGED, max_error=0.1)


def test_stage_table():
    ds = find_stages(STAGED(X), STEPS)
    others = xr.Dataset(
        {
            "test_loss": ("step", 2.0 - 0.1 * X),  # known change over any interval
            "k_loss": (("step", "k"), np.zeros((len(X), 2))),  # not a curve over step: skipped
        },
        coords={"step": STEPS},
    )
    table = stage_table(ds, others)
    assert isinstance(table, pd.DataFrame) and table.index.name == "stage"
    assert list(table.columns) == ["start", "end", "direction", "Δy", "Δtest_loss"]
    assert list(table.index) == [1, 2, 3]
    start, end = table["start"].values, table["end"].values

    # boundary steps need not be checkpoints: the nearest checkpoint's value is used
    def nearest(s):
        return X[np.abs(STEPS - s).argmin()]

    np.testing.assert_allclose(table["Δtest_loss"], [-0.1 * (nearest(e) - nearest(s)) for s, e in zip(start, end)])
    np.testing.assert_allclose(table["Δy"], ds.stage_change)
    assert "increasing" in table.to_string()


def test_bad_input():
    with pytest.raises(ValueError, match="1-D curve over 'step'"):
        find_stages(xr.DataArray(np.zeros((3, 190)), dims=("run", "step"), coords={"step": STEPS}))
    with pytest.raises(ValueError, match="pass `step`"):
        find_stages(np.zeros(10))
    with pytest.raises(ValueError, match="strictly increasing"):
        find_stages(STAGED(X)[::-1], STEPS[::-1])
    with pytest.raises(ValueError, match="at least 4"):
        find_stages([1.0, 2.0, np.nan, 3.0], [0, 1, 2, 3])
    with pytest.raises(ValueError, match="tolerance"):
        find_stages(STAGED(X), STEPS, tolerance=2)


# A short run's LLC (the quick preset, 6,000 steps): LR1 only creeps up, by less than the band can
# call a slope, stalls while the loss sits at the zero predictor's, then LR2 rises sharply.
QUICK_STEPS = checkpoint_schedule(6000, 20, 30)
QUICK_LIKE = Steps([np.log(20), np.log(450), np.log(2500)], [3, 30, -8], [0.8, 0.15, 0.3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_slow_first_stage_that_stalls_is_a_stage(seed):
    x = np.log(np.maximum(QUICK_STEPS, 1))
    y = QUICK_LIKE(x) + 0.4 * np.random.default_rng(seed).standard_normal(len(x))
    ds = find_stages(y, QUICK_STEPS)
    truth = QUICK_LIKE.boundaries()
    assert list(ds.boundary_kind.values) == [k for _, k in truth]
    x, lo, hi = log_bounds(ds)
    true_x = np.array([t for t, _ in truth])
    # a long plateau has no sharp location: the boundary must lie on it (true |slope| below the
    # tolerance), the truth inside the reported interval; the maximum is sharp
    grid = np.linspace(0, np.log(6000), 2000)
    assert abs(QUICK_LIKE.slope(x[0])) < 0.1 * np.abs(QUICK_LIKE.slope(grid)).max()
    assert np.all((lo - 0.1 <= true_x) & (true_x <= hi + 0.1)), (lo, true_x, hi)
    assert abs(x[1] - true_x[1]) <= 0.3
    assert list(ds.stage_direction.values) == ["increasing", "increasing", "decreasing"]


# --- Issue #13: the demo's short run, rounding, noise, and fidelity on curves of the paper's shape ---


def demo_like(seed, sigma=0.3):
    """The quick regression demo's LLC (6k steps, 47 checkpoints): creeps 29 → 31 by step 67,
    stalls at 31 ± 0.3 until step 316, doubles to 64 by ~1.2k, falls to 55 by 6k."""
    from devarray.synthetic_curves import _stages

    x = np.log(np.maximum(QUICK_STEPS, 1))
    clean, _ = _stages(x, 29.0, [(1, 67, 2.0), (316, 1200, 33.0), (1200, 6000, -9.0)])
    return clean + sigma * np.random.default_rng(seed).standard_normal(len(x))


@pytest.mark.parametrize("with_noise", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_demo_first_boundary_is_lr1_lr2(seed, with_noise):
    assert len(QUICK_STEPS) == 47
    y = demo_like(seed)
    ds = find_stages(y, QUICK_STEPS, noise=np.full(len(y), 0.3) if with_noise else None)
    kinds = list(ds.boundary_kind.values)
    assert kinds[0] == "plateau" and "max" in kinds, (kinds, ds.boundary_step.values)
    assert 65 <= ds.boundary_step.values[0] <= 400, ds.boundary_step.values  # in the stall or at its end
    assert ds.stage_direction.values[0] == "increasing"


def _regression_5():
    c = regression_curve(5)
    return c.y, c.step, c.se


@pytest.mark.parametrize(
    "make",
    [
        lambda: (STAGED(X), STEPS, None),
        lambda: (LR_LIKE.sample(2.0, 3), STEPS, None),
        lambda: (demo_like(1), QUICK_STEPS, None),
        _regression_5,
    ],
)
def test_boundaries_stable_under_rounding(make):
    # A long flat stretch's minimum of |slope| is set by noise; the boundary (a plateau's end, an
    # extremum) must move by less than its reported uncertainty when the curve changes by ~1e-6.
    y, steps, se = make()
    base = find_stages(y, steps, noise=se)
    assert base.sizes["boundary"] > 0
    for seed in range(2):
        y2 = y * (1 + 1e-6 * np.random.default_rng(seed).standard_normal(len(y)))
        ds = find_stages(y2, steps, noise=se)
        assert list(ds.boundary_kind.values) == list(base.boundary_kind.values)
        moved = np.abs(np.log(ds.boundary_step.values) - np.log(base.boundary_step.values))
        width = np.log(base.boundary_step_hi.values) - np.log(base.boundary_step_lo.values)
        assert np.all(moved < width / 2), (moved, width)


def test_noise_keyword():
    c = regression_curve(0)
    ds = find_stages(c.y, c.step, noise=c.se)
    assert ds.attrs["noise"].startswith("per-checkpoint") and ds.attrs["gp_noise_std"] < 1.0
    # the same noise as a DataArray over step, out of order and with an extra step, is aligned
    da = xr.DataArray(c.se[::-1], dims="step", coords={"step": c.step[::-1]})
    y = xr.DataArray(c.y, dims="step", coords={"step": c.step}, name="llc_mean")
    np.testing.assert_allclose(find_stages(y, noise=da).slope, ds.slope, rtol=1e-6, atol=1e-9)
    # a band from per-point noise: larger standard errors, wider band
    wide = find_stages(c.y, c.step, noise=4 * c.se)
    assert float((wide.slope_hi - wide.slope_lo).mean()) > 1.5 * float((ds.slope_hi - ds.slope_lo).mean())
    with pytest.raises(ValueError, match="one standard error per checkpoint"):
        find_stages(c.y, c.step, noise=c.se[:10])
    with pytest.raises(ValueError, match="≥ 0"):
        find_stages(c.y, c.step, noise=-c.se)


def test_outputs_per_boundary():
    c = regression_curve(2)
    ds = find_stages(c.y, c.step, noise=c.se)
    for name in ("boundary_significance", "plateau_start", "plateau_end", "boundary_slope_tolerance"):
        assert {"long_name", "units", "description"} <= set(ds[name].attrs), name
    b, ps, pe = ds.boundary_step.values, ds.plateau_start.values, ds.plateau_end.values
    lo, hi = ds.boundary_step_lo.values, ds.boundary_step_hi.values
    assert np.all(ps <= pe) and np.all(lo <= b) and np.all(b <= hi)
    plateau = ds.boundary_kind.values == "plateau"
    assert np.all(b[plateau] >= pe[plateau])  # at the plateau's end (or where the band lets go of zero)
    assert np.all((ps[~plateau] <= b[~plateau]) & (b[~plateau] <= pe[~plateau]))  # extremum inside
    assert np.all((ds.boundary_significance > 0.5) & (ds.boundary_significance <= 1))


def test_synthetic_curves_have_the_documented_structure():
    c = regression_curve(0)
    assert len(c.step) == 190 and 0.3 <= c.se.min() and c.se.max() <= 2.0
    assert list(c.boundary_kind) == ["plateau", "max", "plateau", "min"]
    np.testing.assert_array_equal(c.boundary_step, [1000, 40_000, 126_000, 320_000])

    def at(s):
        return np.interp(np.log(s), np.log(np.maximum(c.step, 1)), c.clean)

    lr1, lr2, lr5 = at(1000) - at(1), at(40_000) - at(1000), at(500_000) - at(320_000)
    assert 15 < lr2 / lr1 < 25 and 3 <= lr5 <= 9 and abs(lr2 - 145) < 1
    lang = language_curve(0)
    assert np.all(np.diff(lang.step[lang.step >= 100]) == 100) and (lang.step < 100).sum() > 10
    assert list(lang.boundary_kind) == ["plateau", "max", "min", "plateau"]
    seed = regression_curve(0, "seed")
    assert 2 < np.std(seed.clean - regression_curve(0).clean) < 8  # seed-to-seed spread ~4
    with pytest.raises(ValueError, match="level"):
        regression_curve(0, "bogus")


def fidelity(make, seeds, level):
    """Fraction of seeds with every true boundary matched within ×1.5 in step, and with extra boundaries."""
    hits = extra = 0
    for seed in seeds:
        c = make(seed, level)
        ds = find_stages(c.y, c.step, noise=c.se)
        b = np.log(ds.boundary_step.values)
        hits += len(b) > 0 and all(np.abs(b - np.log(t)).min() <= np.log(1.5) for t in c.boundary_step)
        extra += len(b) > len(c.boundary_step)
    return hits / len(seeds), extra / len(seeds)


@pytest.mark.parametrize("level", ["chain", "seed"])
@pytest.mark.parametrize("make", [regression_curve, language_curve])
def test_fidelity_fast(make, level):
    hit, extra = fidelity(make, range(100, 104), level)
    assert hit == 1.0 and extra == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("level", ["chain", "seed"])
@pytest.mark.parametrize("make", [regression_curve, language_curve])
def test_fidelity_40_seeds(make, level):
    hit, extra = fidelity(make, range(40), level)
    assert hit >= 0.95 and extra <= 0.10, (hit, extra)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["line", "rise", "noise"])
def test_no_boundary_on_null_curves(kind):
    clean = sum(
        find_stages(c.y, c.step, noise=c.se).sizes["boundary"] == 0 for c in (null_curve(kind, s) for s in range(20))
    )
    assert clean >= 19, clean  # ≥ 95 % of seeds


@pytest.mark.parametrize("seed", range(2))
def test_learned_noise_follows_a_trend_only_when_the_data_have_one(seed):
    # noise sd growing 0.05 → 1.0 over log step is learned at both ends (within 40 %); a constant
    # 0.3 keeps one level (the trend must buy a nat of evidence)
    x = np.linspace(0, 12, 160)
    curve = 40 / (1 + np.exp(-(x - 6) / 0.8))
    z = np.random.default_rng(seed).standard_normal(160)
    h = fit_gp(x, curve + 0.05 * 20 ** (x / 12) * z).hyperparameters
    assert h["noise_std_first"] == pytest.approx(0.05, rel=0.4) and h["noise_std_last"] == pytest.approx(1.0, rel=0.4)
    h = fit_gp(x, curve + 0.3 * z).hyperparameters
    assert h["noise_std_first"] == h["noise_std_last"] == h["noise_std"] == pytest.approx(0.3, rel=0.15)
