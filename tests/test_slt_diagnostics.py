"""Divergence, non-convergence and escape flags (appendix A.4.4, figure A.5) and the warning."""

import warnings

import numpy as np
import pytest
import torch

from devarray.slt import LLCDiagnosticWarning, estimate_llc
from devarray.slt.diagnostics import chain_diagnostics, default_divergence_threshold, summary
from devarray.slt.potentials import Potential, Quadratic, dummy_dataset, potential_loss

GOOD = dict(
    batch_size=1, nbeta=10.0, epsilon=5e-3, localization=0.1, num_chains=8, num_draws=2000, num_burnin_steps=200
)


def flags(u, llc=None, diverged_step=None):
    u = np.atleast_2d(u)
    llc = u.mean(1) if llc is None else llc
    diverged_step = np.full(len(u), -1) if diverged_step is None else diverged_step
    return chain_diagnostics(u, llc, diverged_step)


def test_statistics_on_synthetic_chains():
    rng = np.random.default_rng(0)
    T = 800
    white = 5 + rng.normal(size=T)
    ramp = np.linspace(1, 9, T) + rng.normal(size=T)
    walk = 5 + np.cumsum(rng.normal(size=T)) * 0.05
    below = -1 + rng.normal(size=T)
    d = flags(np.stack([white, ramp, walk, below]))
    assert d["not_converged"].tolist() == [False, True, True, False]
    assert d["escaped"].tolist() == [False, False, False, True]
    assert not d["diverged"].any()
    # the ramp's last quarter exceeds the third by 2 (of a mean of 5): drift 0.4, z far above 3
    assert d["llc_drift"][1] == pytest.approx(0.4, abs=0.05) and d["llc_drift_z"][1] > 10
    assert d["llc_ess"][0] > 500 and d["llc_ess"][2] < 10  # white noise vs a random walk
    short = flags(np.linspace(1, 9, 20))  # under 40 draws: not judged
    assert np.isnan(short["llc_drift"]).all() and not short["not_converged"].any()


def test_divergence_comes_from_the_sampler():
    u = np.ones((2, 50))
    d = flags(u, diverged_step=np.array([-1, 17]))
    assert d["diverged"].tolist() == [False, True]
    assert not d["not_converged"][1] and not d["escaped"][1]  # a diverged chain gets no other flag
    assert default_divergence_threshold(2) == 100 and default_divergence_threshold(51_717) == 51_717


def test_healthy_chains_raise_no_flag_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLCDiagnosticWarning)
        ds = estimate_llc(Quadratic((1.0, 1.0, 1.0)), potential_loss, dummy_dataset(), **GOOD)
    assert not (ds["diverged"] | ds["not_converged"] | ds["escaped"]).any()
    assert summary(ds) == ""


def test_too_small_a_step_is_not_converged():
    # ε = 1e-5: after 400 steps the chains are still random walks away from w* (figure A.5, top right)
    with pytest.warns(LLCDiagnosticWarning, match=r"step 1234: chains .* did not converge"):
        ds = estimate_llc(
            Quadratic((1.0, 1.0, 1.0)),
            potential_loss,
            dummy_dataset(),
            label="step 1234",
            **GOOD | dict(epsilon=1e-5, num_draws=400, num_burnin_steps=0),
        )
    assert int(ds["not_converged"].sum()) >= 6
    assert float(ds["llc_mean"]) < 0.1  # far below the true 3/2


class Shifted(Potential):
    """Σ (w_i − 1)² sampled from w* = 0, which is not a minimum: the chains find lower loss."""

    def __init__(self):
        super().__init__(2)

    def forward(self):
        return ((self.w - 1) ** 2).sum()


def test_escape_is_flagged():
    with pytest.warns(LLCDiagnosticWarning, match="escaped"):
        ds = estimate_llc(Shifted(), potential_loss, dummy_dataset(), **GOOD | dict(num_draws=400))
    assert ds["escaped"].all() and not ds["diverged"].any()
    assert float(ds["llc_mean"]) < 0


def test_exploding_chains_diverge_and_leave_no_mean():
    # ε nβ a = 3 > 2: every step multiplies w by −2 until the loss passes init + 100/nβ
    with pytest.warns(LLCDiagnosticWarning, match=r"chains 0, 1, 2, 3 diverged \(0 of 4"):
        ds = estimate_llc(
            Quadratic((1.0,)),
            potential_loss,
            dummy_dataset(),
            **GOOD | dict(epsilon=0.3, num_chains=4, num_draws=100, num_burnin_steps=0),
        )
    assert ds["diverged"].all() and (ds["diverged_step"] > 0).all()
    limit = float(ds["init_loss"]) + ds.attrs["divergence_threshold"] / ds.attrs["nbeta"]
    assert ds.attrs["divergence_threshold"] == 100.0
    for c in range(4):  # the offending loss is kept, NaN after it
        t = int(ds["diverged_step"][c])
        assert ds["loss"][c, t] > limit and ds["loss"][c, t - 1] <= limit and np.isnan(ds["loss"][c, t + 1 :]).all()
    assert np.isnan(float(ds["llc_mean"])) and np.isnan(float(ds["llc_std"]))


class Disk(Potential):
    """1 − sqrt(1 − w²): NaN outside |w| < 1, so some chains hit NaN and some do not."""

    def __init__(self):
        super().__init__(1)

    def forward(self):
        return 1 - torch.sqrt(1 - self.w[0] ** 2)


def test_diverged_chains_are_excluded_from_the_mean():
    with pytest.warns(LLCDiagnosticWarning, match="diverged"):
        ds = estimate_llc(
            Disk(),
            potential_loss,
            dummy_dataset(),
            batch_size=1,
            nbeta=0.01,
            epsilon=0.004,
            localization=0.0,
            num_chains=8,
            num_draws=200,
        )
    dead = ds["diverged"].values
    assert 0 < dead.sum() < 8
    assert np.isnan(ds["llc_per_chain"].values[dead]).all()
    healthy = ds["llc_per_chain"].values[~dead]
    assert float(ds["llc_mean"]) == pytest.approx(healthy.mean())
    assert float(ds["llc_std"]) == pytest.approx(healthy.std())
    assert np.isfinite(ds["llc_trace_mean"]).all()
    assert summary(ds).endswith(f"({(~dead).sum()} of 8 chains enter llc_mean)")
