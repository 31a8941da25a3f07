"""Named sampler settings for the regression transformer."""

import math

import pytest
import torch

from devarray.models.regression import RegressionTransformer
from devarray.settings.regression import LLC_PRESETS as PRESETS
from devarray.slt import estimate_llc
from devarray.tasks.regression import RegressionTask, mse_loss


def test_paper_preset_is_appendix_a32():
    p = PRESETS["paper"]
    s = p.settings()
    assert p.dataset_size == 2**20 and s.batch_size == 1024
    assert (s.num_chains, s.num_steps, s.num_burnin_steps, s.num_draws) == (10, 5000, 1000, 4000)
    assert s.epsilon == 3e-4
    assert s.beta_tilde == pytest.approx(0.01) and s.gamma_tilde == pytest.approx(0.01)
    assert s.nbeta == pytest.approx(200 / 3) and s.localization == pytest.approx(200 / 3)


def test_quick_preset_is_cheaper_in_every_respect():
    q, p = PRESETS["quick"].settings(), PRESETS["paper"].settings()
    assert q.num_chains * q.num_steps * q.batch_size < p.num_chains * p.num_steps * p.batch_size / 100
    assert q.epsilon > p.epsilon
    assert q.nbeta <= q.batch_size / math.log(q.batch_size) * (1 + 1e-9)  # A.4.1 cap
    assert PRESETS["quick"].dataset_size >= 16 * q.batch_size


@pytest.mark.slow
def test_quick_preset_gives_stable_positive_llcs_on_a_trained_model():
    """The preset's promise on the full-size model after 400 Adam steps: finite, positive,
    healthy, and two chain seeds within 15 %."""
    torch.manual_seed(0)
    model = RegressionTransformer()
    task = RegressionTask(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(400):
        b = task.batch_for_step(step, 256)
        opt.zero_grad()
        mse_loss(model, b.x, b.y).backward()
        opt.step()
    preset = PRESETS["quick"]
    b = task.dataset(preset.dataset_size, "sgld")
    runs = [estimate_llc(model, mse_loss, (b.x, b.y), preset.settings(), seed=s) for s in (0, 1)]
    a, c = (float(r["llc_mean"]) for r in runs)
    assert math.isfinite(a) and a > 0 and c > 0
    assert abs(a - c) / ((a + c) / 2) < 0.15
    assert not any(bool(r["diverged"].any() | r["escaped"].any()) for r in runs)
