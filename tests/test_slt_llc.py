"""The LLC estimator (eq. 3), online traces (eqs. 9–12) and the xarray result."""

import math
import warnings

import numpy as np
import pytest
import torch

from devarray.models.regression import RegressionConfig, RegressionTransformer
from devarray.slt import LLCDiagnosticWarning, estimate_llc, sgld_settings
from devarray.slt.llc import init_loss, llc_per_chain, llc_trace
from devarray.slt.potentials import Quadratic, dummy_dataset, potential_loss
from devarray.tasks.regression import RegressionTask, generator, mse_loss

TINY = RegressionConfig(D=2, K=4, L=1, H=2, d_embed=16, d_mlp=16)


def test_trace_follows_the_recursion_and_ends_at_eq3():
    rng = np.random.default_rng(0)
    loss = rng.normal(1.0, 0.1, size=(3, 50))
    init, nbeta = 0.9, 12.5
    trace = llc_trace(loss, init, nbeta)
    lam = np.zeros(3)  # eq. (12), λ̂_0 = 0
    for tau in range(1, 51):
        lam = ((tau - 1) * lam + nbeta * (loss[:, tau - 1] - init)) / tau
        np.testing.assert_allclose(trace[:, tau - 1], lam, rtol=1e-12)
    np.testing.assert_allclose(trace[:, -1], llc_per_chain(loss, init, nbeta), rtol=1e-12)
    np.testing.assert_allclose(llc_per_chain(loss, init, nbeta), nbeta * (loss.mean(1) - init))


def test_mse_loss_is_the_mse_of_the_predictions():
    torch.manual_seed(0)
    model = RegressionTransformer(TINY)
    b = RegressionTask(D=2, K=4).dataset(16, "t")
    with torch.no_grad():
        expected = float(((model.predict(b.tokens) - b.y) ** 2).sum()) / (16 * 4)
        assert float(mse_loss(model, b.x, b.y)) == pytest.approx(expected, rel=1e-6)


def test_init_loss_in_chunks_is_the_full_mean():
    torch.manual_seed(0)
    model = RegressionTransformer(TINY)
    b = RegressionTask(D=2, K=4).dataset(100, "t")
    with torch.no_grad():
        full = float(mse_loss(model, b.x, b.y))
        first = float(mse_loss(model, b.x[:30], b.y[:30]))
    assert init_loss(model, mse_loss, (b.x, b.y), chunk=7) == pytest.approx(full, rel=1e-6)
    assert init_loss(model, mse_loss, (b.x, b.y), rows=30, chunk=8) == pytest.approx(first, rel=1e-6)
    with pytest.raises(ValueError, match="init_loss_rows"):
        init_loss(model, mse_loss, (b.x, b.y), rows=101)


def quadratic_llc(**kw):
    settings = (
        dict(
            batch_size=1,
            nbeta=10.0,
            epsilon=5e-3,
            localization=0.1,
            num_chains=4,
            num_draws=100,
            num_burnin_steps=20,
            warn=False,
        )
        | kw
    )
    return estimate_llc(Quadratic((1.0, 2.0)), potential_loss, dummy_dataset(), **settings)


def test_dataset_layout_and_attrs():
    ds = quadratic_llc(seed=3, label="step 7")
    assert dict(ds.sizes) == {"chain": 4, "draw": 100}
    assert ds["loss"].dims == ds["llc_trace"].dims == ("chain", "draw")
    for name in (
        "llc_per_chain",
        "diverged",
        "not_converged",
        "escaped",
        "llc_drift",
        "llc_drift_z",
        "llc_ess",
        "diverged_step",
    ):
        assert ds[name].dims == ("chain",)
    for name in ("init_loss", "llc_mean", "llc_std"):
        assert ds[name].dims == ()
    for name in list(ds.variables):
        assert {"long_name", "units", "description"} <= set(ds[name].attrs), name
    a = ds.attrs
    assert (a["epsilon"], a["nbeta"], a["localization"], a["gamma"]) == (5e-3, 10.0, 0.1, 0.1)
    assert a["beta_tilde"] == pytest.approx(0.025) and a["gamma_tilde"] == pytest.approx(2.5e-4)
    assert (a["batch_size"], a["dataset_size"], a["num_chains"], a["num_draws"], a["num_burnin_steps"]) == (
        1,
        1,
        4,
        100,
        20,
    )
    assert (a["seed"], a["method"], a["num_params"], a["label"], a["init_loss_rows"]) == (3, "batched", 2, "step 7", 1)
    # eq. (3) from the stored draws, and llc_mean/llc_std over chains
    per_chain = 10.0 * (ds["loss"].mean("draw") - ds["init_loss"])
    np.testing.assert_allclose(ds["llc_per_chain"], per_chain)
    assert float(ds["llc_mean"]) == pytest.approx(float(per_chain.mean()))
    assert float(ds["llc_std"]) == pytest.approx(float(per_chain.std()))
    np.testing.assert_allclose(ds["llc_trace_mean"], ds["llc_trace"].mean("chain"))
    assert float(ds["init_loss"]) == 0.0


def test_burn_in_is_excluded():
    full = quadratic_llc(num_draws=120, num_burnin_steps=0, seed=1)
    cut = quadratic_llc(num_draws=100, num_burnin_steps=20, seed=1)
    np.testing.assert_array_equal(cut["loss"].values, full["loss"].values[:, 20:])
    assert full["loss"].values[0, 0] == 0.0  # the first draw is at w_1 = w*


def test_arviz_diagnostics_run_on_the_result():
    az = pytest.importorskip("arviz")
    ds = quadratic_llc(seed=0)
    rhat = az.rhat(ds[["loss", "llc_trace"]])
    ess = az.ess(ds[["loss"]])
    assert np.isfinite(float(rhat["loss"])) and float(ess["loss"]) > 1


def test_settings_object_or_keywords_not_both():
    s = sgld_settings(batch_size=1, nbeta=10.0, epsilon=5e-3, localization=0.1, num_draws=10)
    ds = estimate_llc(Quadratic(), potential_loss, dummy_dataset(), s, warn=False)
    assert ds.sizes["draw"] == 10
    with pytest.raises(ValueError, match="not both"):
        estimate_llc(Quadratic(), potential_loss, dummy_dataset(), s, epsilon=1e-3)


# --- the regression transformer ----------------------------------------------------------------


def trained_tiny(steps=1000):
    """A tiny regression transformer after `steps` Adam steps, and an SGLD dataset."""
    torch.manual_seed(0)
    model = RegressionTransformer(TINY)
    task = RegressionTask(D=TINY.D, K=TINY.K)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        b = task.sample(64, generator(0, "train", step))
        opt.zero_grad()
        mse_loss(model, b.x, b.y).backward()
        opt.step()
    b = task.dataset(4096, "sgld")
    return model, (b.x, b.y)


SETTINGS = dict(batch_size=64, num_chains=4, num_draws=150, num_burnin_steps=50, epsilon=1e-3, localization=100.0)


def test_transformer_rerun_gives_identical_traces():
    model, data = trained_tiny(steps=20)
    kw = SETTINGS | dict(num_chains=2, num_draws=10, num_burnin_steps=0)
    a = estimate_llc(model, mse_loss, data, seed=4, warn=False, **kw)
    b = estimate_llc(model, mse_loss, data, seed=4, warn=False, **kw)
    np.testing.assert_array_equal(a["llc_trace"].values, b["llc_trace"].values)
    assert a.attrs == b.attrs


def test_transformer_llc_is_finite_positive_and_stable_across_seeds():
    model, data = trained_tiny()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LLCDiagnosticWarning)  # healthy chains: no warning
        a = estimate_llc(model, mse_loss, data, seed=0, **SETTINGS)
        b = estimate_llc(model, mse_loss, data, seed=1, **SETTINGS)
    la, lb = float(a["llc_mean"]), float(b["llc_mean"])
    assert math.isfinite(la) and la > 0 and lb > 0
    assert abs(la - lb) / ((la + lb) / 2) < 0.15  # two independent sets of 4 chains agree within 15 %
    assert not a["diverged"].any() and not a["escaped"].any()
