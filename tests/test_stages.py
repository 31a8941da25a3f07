"""Stage boundaries (appendix B.1) recovered from synthetic curves with known plateaus.

The curves are sums of logistic steps in log step, on the paper's 190 log + linear checkpoints
over 500k steps. True boundaries are computed from the noiseless curve by B.1's rule: a zero of
the slope between a rise and a fall, else the minimum of |slope| between two transitions.
"""

import gpytorch
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from devarray.schedules import checkpoint_schedule
from devarray.stages import StageOptions, find_stages, fit_gp, stage_table

STEPS = checkpoint_schedule(500_000, 100, 100)
X = np.log(np.maximum(STEPS, 1))


class Steps:
    """Σ heightᵢ · logistic((log step − centreᵢ)/widthᵢ), with its analytic slope in log step."""

    def __init__(self, centres, heights, widths):
        self.c, self.h, self.w = map(np.asarray, (centres, heights, np.broadcast_to(widths, len(centres))))

    def __call__(self, x):
        return sum(h / (1 + np.exp(-(x - c) / w)) for c, h, w in zip(self.c, self.h, self.w))

    def slope(self, x):
        return sum(h / w * np.exp(-(x - c) / w) / (1 + np.exp(-(x - c) / w)) ** 2 for c, h, w in zip(self.c, self.h, self.w))

    def boundaries(self):
        """(log step, kind) of each true boundary."""
        out = []
        for i in range(len(self.c) - 1):
            x = np.linspace(self.c[i], self.c[i + 1], 20_001)
            s = self.slope(x)
            if self.h[i] * self.h[i + 1] > 0:
                out.append((x[np.argmin(np.abs(s))], "plateau"))
            else:
                out.append((x[np.argmin(np.abs(s))], "max" if self.h[i] > 0 else "min"))
        return out

    def sample(self, sigma, seed):
        return self(X) + sigma * np.random.default_rng(seed).standard_normal(len(X))


# The brief's curve: plateaus 0 → 50 → 120 → 80; a saddle plateau, then a maximum.
STAGED = Steps([np.log(30), np.log(2000), np.log(60_000)], [50, 70, -40], 0.35)
# Shaped like the paper's LR curve (figure 1b): rise, rise, fall, fall, rise — transitions
# sharpen late in training, where linear checkpoints are dense.
LR_LIKE = Steps([4.5, 8.0, 10.9, 12.0, 12.8], [40, 80, -40, -30, 15], [0.4, 0.4, 0.12, 0.1, 0.06])


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


def test_gp_slope_and_band_match_gpytorch():
    # The closed-form derivative kernel against autograd through gpytorch's posterior mean and
    # finite differences of gpytorch's posterior covariance.
    x = np.linspace(0, 13, 150)
    y = 50 / (1 + np.exp(-(x - 5) / 0.4)) + np.random.default_rng(0).standard_normal(150)
    fit = fit_gp(x, y)
    q = np.array([2.0, 5.0, 7.3, 12.9])
    mean, slope, sd = fit.predict(q)
    a = fit.standardise(q).requires_grad_(True)
    with gpytorch.settings.fast_pred_var(False), gpytorch.settings.max_cholesky_size(10_000):
        m = fit.model(a).mean
        (g,) = torch.autograd.grad(m.sum(), a)
        h = 1e-3
        a0 = a.detach()
        with torch.no_grad():
            C = fit.model(torch.cat([a0 + h, a0 - h])).covariance_matrix
    n = len(q)
    fd_var = (C.diagonal()[:n] + C.diagonal()[n:] - 2 * C[:n, n:].diagonal()) / (4 * h * h)
    to_units = fit.y_scale / fit.x_scale
    np.testing.assert_allclose(mean, m.detach().numpy() * fit.y_scale + fit.y_mean, rtol=1e-10)
    np.testing.assert_allclose(slope, g.numpy() * to_units, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sd, fd_var.sqrt().numpy() * to_units, rtol=1e-3)


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
    np.testing.assert_allclose(ds.stage_change, [50, 70, -40], atol=2.0)
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


@pytest.mark.parametrize("name,curve,direction", [
    ("line in step", lambda x: 120 * np.exp(x) / 500_000, "increasing"),
    ("line in log step", lambda x: 10 * x, "increasing"),
    ("single rise", Steps([np.log(3000)], [120], 0.6), "increasing"),
    ("single fall", Steps([np.log(300)], [-80], 0.3), "decreasing"),
])
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
    # plateau, at the default tolerance (10%); a plateau when the tolerance is raised above the dip.
    curve = Steps([6.0, 8.7], [60, 60], 0.4)
    x = np.linspace(6, 8.7, 2001)
    dip = np.abs(curve.slope(x)).min() / np.abs(curve.slope(np.linspace(0, 13, 20001))).max()
    assert 0.2 < dip < 0.3
    assert find_stages(curve(X), STEPS).sizes["boundary"] == 0
    ds = find_stages(curve(X), STEPS, tolerance=0.35)
    assert list(ds.boundary_kind.values) == ["plateau"]
    assert abs(np.log(ds.boundary_step.values[0]) - 7.35) < 0.05  # the dip is symmetric


def test_wrt_step_rescales_slope_and_keeps_crossings():
    # d/dt = e^{-log t} d/d(log t) weighs early steps by 1/t: the largest |slope| is the GP's
    # wobble at step 1, so the tolerance, relative to it, must be tiny to see late movements at
    # all (the sensitivity B.1 warns of, and why the paper differentiates in log t).
    curve = Steps([9.0, 11.5], [60, -30], 0.3)
    y = curve.sample(1.0, 0)
    log_ds = find_stages(y, STEPS)
    t_ds = find_stages(y, STEPS, wrt="step", tolerance=1e-4)
    assert find_stages(y, STEPS, wrt="step").sizes["boundary"] == 0
    np.testing.assert_allclose(t_ds.slope[1:] * STEPS[1:], log_ds.slope[1:], rtol=1e-9)
    np.testing.assert_allclose(t_ds.slope_hi[1:] * STEPS[1:], log_ds.slope_hi[1:], rtol=1e-9)
    # a zero of the slope is a zero in either variable
    assert list(log_ds.boundary_kind.values) == list(t_ds.boundary_kind.values) == ["max"]
    assert t_ds.boundary_step.item() == log_ds.boundary_step.item()
    assert "per step" in t_ds.slope.attrs["units"] and t_ds.attrs["option_wrt"] == "step"


def test_dataarray_in_labelled_dataset_out():
    y = xr.DataArray(STAGED(X), dims="step", coords={"step": STEPS}, name="llc_mean",
                     attrs={"long_name": "LLC", "units": "nats"})
    y[5:9] = np.nan  # checkpoints not yet estimated are left out of the fit
    ds = find_stages(y, min_noise=1e-3)
    assert set(ds.dims) == {"step", "boundary", "stage_id"}
    np.testing.assert_array_equal(ds.step, STEPS)
    for name in ("smooth", "slope", "slope_lo", "slope_hi", "stage"):
        assert ds[name].dims == ("step",)
    for name in ("boundary_step", "boundary_kind", "boundary_step_lo", "boundary_step_hi"):
        assert ds[name].dims == ("boundary",)
    for name in ("stage_start", "stage_end", "stage_direction", "stage_change"):
        assert ds[name].dims == ("stage_id",)
    for name, var in ds.variables.items():
        assert {"long_name", "units", "description"} <= set(var.attrs), name
    assert ds.smooth.attrs["units"] == "nats" and ds.slope.attrs["units"] == "nats per log step"
    assert ds.attrs["variable"] == "llc_mean"
    assert ds.attrs["option_tolerance"] == StageOptions().tolerance
    assert ds.attrs["slope_tolerance"] == pytest.approx(0.1 * np.abs(STAGED.slope(np.linspace(0, 13.12, 1000))).max(), rel=0.05)
    assert 0 < ds.attrs["gp_noise_std"] < 5 and ds.attrs["gp_lengthscale"] > 0.2
    # stage labels: 1 up to the first boundary, which starts stage 2, and so on
    b = ds.boundary_step.values
    np.testing.assert_array_equal(ds.stage.values, 1 + np.searchsorted(b, STEPS, side="right"))
    assert ds.stage.sel(step=slice(b[0], None)).values[0] == 2 and ds.stage.values[0] == 1
    assert list(ds.stage_id.values) == [1, 2, 3]
    assert_recovered(ds, STAGED, max_error=0.1)


def test_stage_table():
    ds = find_stages(STAGED(X), STEPS)
    others = xr.Dataset({
        "test_loss": ("step", 2.0 - 0.1 * X),  # known change over any interval
        "k_loss": (("step", "k"), np.zeros((len(X), 2))),  # not a curve over step: skipped
    }, coords={"step": STEPS})
    table = stage_table(ds, others)
    assert isinstance(table, pd.DataFrame) and table.index.name == "stage"
    assert list(table.columns) == ["start", "end", "direction", "Δy", "Δtest_loss"]
    assert list(table.index) == [1, 2, 3]
    start, end = table["start"].values, table["end"].values
    # boundary steps need not be checkpoints: the nearest checkpoint's value is used
    nearest = lambda s: X[np.abs(STEPS - s).argmin()]  # noqa: E731
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
