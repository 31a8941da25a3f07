"""Behavioural observables (appendix D.1) on predictors whose answers are known by construction."""

import numpy as np
import pytest
import torch
from torch import nn

from devarray import observables as obs
from devarray.observables.regression import make_probe
from devarray.tasks.regression import RegressionTask, ridge_predict

SIGMA2 = 0.125
BEHAVIOUR = ["icl_scores", "ood", "position_loss", "prediction_scale", "task_prior_distance"]


class Predictor(nn.Module):
    """A "model" with the transformer's interface whose ŷ_k is ``predict(x, y)`` (no attention)."""

    def __init__(self, predict):
        super().__init__()
        self.predict_xy = predict

    def forward(self, tokens, return_attention=False):
        x, y = tokens[:, 0::2, 1:], tokens[:, 1::2, 0]
        out = torch.zeros(tokens.shape, dtype=torch.float64)
        out[:, 0::2, 0] = self.predict_xy(x.double(), y.double())
        return (out, []) if return_attention else out


def zero(x, y):
    return torch.zeros(x.shape[:2], dtype=torch.float64)


def ridge(x, y):
    return ridge_predict(x, y, SIGMA2)


def test_zero_predictor_scores_and_analytic_ood_loss():
    """ŷ = 0: no prediction scale, and the OOD loss is E[y²]/g² = (D g_t g_x + σ²)/g² (eqs. 18–19)."""
    D = 2
    probe = make_probe(RegressionTask(D=D, K=3), seed=0, n=256, n_ood=4096, gains=[0.1, 1.0, 10.0])
    ds = obs.compute(Predictor(zero), BEHAVIOUR, probe)
    assert ds.pred_sq.item() == 0 and (ds.pred_sq_k == 0).all()
    assert ds.task_prior_dist.item() == 0  # t̄ = 0 for M = ∞
    assert (ds.ood_abs_pred == 0).all()
    g = probe.gains
    exact = (probe.ood_y.double() ** 2).mean((2, 3)).numpy() / g**2
    np.testing.assert_allclose(ds.ood_nmse.transpose("kind", "g").values, exact, rtol=1e-12)
    analytic = (D * g + SIGMA2) / g**2  # g_x = g, g_t = 1 for inputs; g_t = g, g_x = 1 for tasks
    np.testing.assert_allclose(ds.ood_nmse.sel(kind="inputs"), analytic, rtol=0.12)
    np.testing.assert_allclose(ds.ood_nmse.sel(kind="tasks"), analytic, rtol=0.12)
    np.testing.assert_allclose(ds.loss_k, (probe.y.double() ** 2).mean(0), rtol=1e-12)
    np.testing.assert_array_equal(ds.k, [1, 2, 3])


def test_task_prior_predictor_has_zero_task_prior_distance():
    """For finite M, ŷ_k = t̄ᵀx_k is at distance 0 from the task prior and has scale E[(t̄ᵀx)²]."""
    task = RegressionTask(D=2, K=3, num_tasks=4, seed=1)
    t_bar = task.task_set().double().mean(0)
    probe = make_probe(task, seed=0, n=128, n_ood=4)
    ds = obs.compute(Predictor(lambda x, y: x @ t_bar), ["task_prior_distance", "prediction_scale"], probe)
    assert ds.task_prior_dist.item() == pytest.approx(0, abs=1e-12)
    np.testing.assert_allclose(ds.task_prior_dist_k, 0, atol=1e-12)
    expected = ((probe.x.double() @ t_bar) ** 2).mean(0)
    np.testing.assert_allclose(ds.pred_sq_k, expected, rtol=1e-12)
    assert ds.pred_sq.item() == pytest.approx(expected.mean().item(), rel=1e-12)
    zero_ds = obs.compute(Predictor(zero), ["task_prior_distance"], probe)
    np.testing.assert_allclose(zero_ds.task_prior_dist_k, expected, rtol=1e-12)


def test_ridge_predictor_icl_scores_match_its_loss_curve_and_closed_form():
    """Ridge with λ = σ² is the posterior mean: ℓ_1 = D + σ², ℓ_2 = σ² + D − 1 + E[σ²/(‖x‖² + σ²)]."""
    D, K = 2, 3
    probe = make_probe(RegressionTask(D=D, K=K), seed=0, n=20000, n_ood=4)
    ds = obs.compute(Predictor(ridge), BEHAVIOUR, probe)
    np.testing.assert_array_equal(ds.ridge_gap_k, 0)
    np.testing.assert_array_equal(ds.loss_k, ds.ridge_loss_k)
    loss = ds.ridge_loss_k.values
    assert ds.icl_1_D.item() == loss[D - 1] - loss[0]
    assert ds.icl_D_K.item() == loss[K - 1] - loss[D - 1]
    # ‖x‖² ~ χ²_2 = Exp(mean 2): integrate E[σ²/(‖x‖² + σ²)] on a fine grid
    u = np.linspace(0, 80, 800001)
    shrink = np.trapezoid(SIGMA2 / (u + SIGMA2) * 0.5 * np.exp(-u / 2), u)
    l1, l2 = D + SIGMA2, SIGMA2 + D - 1 + shrink
    assert loss[0] == pytest.approx(l1, rel=0.04)
    assert loss[1] == pytest.approx(l2, rel=0.04)
    assert ds.icl_1_D.item() == pytest.approx(l2 - l1, abs=0.1)
    assert ds.icl_1_D.item() < -0.7 and ds.icl_D_K.item() < 0  # ridge learns in context


def test_icl_scores_use_positions_1_D_and_K():
    """On a predictor with a prescribed loss curve ℓ_k = k², ICL_{1:D} = D² − 1, ICL_{D:K} = K² − D²."""
    D, K = 2, 4
    probe = make_probe(RegressionTask(D=D, K=K), seed=0, n=8, n_ood=2)
    k = torch.arange(1, K + 1, dtype=torch.float64)
    ds = obs.compute(Predictor(lambda x, y: y + k), ["icl_scores"], probe)  # (ŷ_k − y_k)² = k²
    assert ds.icl_1_D.item() == pytest.approx(D**2 - 1, rel=1e-12)
    assert ds.icl_D_K.item() == pytest.approx(K**2 - D**2, rel=1e-12)


def test_ood_mean_abs_prediction_and_normalisation():
    """A predictor with ŷ = c has mean |ŷ| = c and normalised loss E[(c − y)²]/g² on every OOD set."""
    probe = make_probe(RegressionTask(D=2, K=3), seed=0, n=8, n_ood=32, gains=[0.5, 2.0])
    ds = obs.compute(Predictor(lambda x, y: torch.full(x.shape[:2], -0.5, dtype=torch.float64)), ["ood"], probe)
    np.testing.assert_allclose(ds.ood_abs_pred, 0.5)
    expected = ((probe.ood_y.double() + 0.5) ** 2).mean((2, 3)).numpy() / np.array([0.25, 4.0])
    np.testing.assert_allclose(ds.ood_nmse.values, expected, rtol=1e-12)
    assert list(ds.kind.values) == ["inputs", "tasks"]


def test_transformer_predictions_are_read_like_predict():
    from devarray.models.regression import RegressionConfig, RegressionTransformer

    torch.manual_seed(0)
    model = RegressionTransformer(RegressionConfig(D=2, K=3, L=1, H=2, d_embed=8, d_mlp=8))
    probe = make_probe(RegressionTask(D=2, K=3), seed=0, n=64, n_ood=4)
    ds = obs.compute(model, ["position_loss"], probe)
    with torch.no_grad():
        expected = ((model.predict(probe.tokens).double() - probe.y.double()) ** 2).mean(0)
    np.testing.assert_allclose(ds.loss_k, expected, rtol=1e-12)
