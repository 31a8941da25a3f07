"""SGLD sampler: settings, seeding, paths, divergence handling (appendix A.2, A.4.1–A.4.3)."""

import math

import pytest
import torch
from torch import nn

from devarray.models.regression import RegressionConfig, RegressionTransformer
from devarray.slt import sgld
from devarray.slt.potentials import Potential, dummy_dataset, potential_loss
from devarray.slt.sgld import FlatLoss, _BatchStream, _grad_fn, choose_method, run_chains, sgld_settings
from devarray.tasks.regression import RegressionTask, mse_loss

TINY = RegressionConfig(D=2, K=4, L=1, H=2, d_embed=16, d_mlp=16)


def tiny_setup(n=256, seed=0):
    torch.manual_seed(seed)
    model = RegressionTransformer(TINY)
    b = RegressionTask(D=TINY.D, K=TINY.K).dataset(n, "sgld")
    return model, (b.x, b.y)


# --- settings -------------------------------------------------------------------------------


def test_two_parametrisations_agree():
    a = sgld_settings(batch_size=1024, epsilon=3e-4, nbeta=200 / 3, localization=200 / 3)
    b = sgld_settings(batch_size=1024, epsilon=3e-4, beta_tilde=0.01, gamma_tilde=0.01)
    assert a.nbeta == pytest.approx(b.nbeta) and a.localization == pytest.approx(b.localization)
    assert b.beta_tilde == pytest.approx(0.01) and b.gamma_tilde == pytest.approx(0.01)
    assert b.nbeta == pytest.approx(2 * 0.01 / 3e-4)


def test_devinterp_names_and_default_nbeta():
    s = sgld_settings(batch_size=1024, lr=1e-3, localization=100.0, num_chains=3, num_draws=7, num_burnin_steps=2)
    assert s.epsilon == 1e-3 and s.localization == 100.0
    assert s.nbeta == pytest.approx(1024 / math.log(1024))  # A.4.1: nβ = m / log m
    assert (s.num_chains, s.num_draws, s.num_burnin_steps, s.num_steps) == (3, 7, 2, 9)


def test_epsilon_follows_from_nbeta_and_beta_tilde():
    s = sgld_settings(batch_size=64, nbeta=100.0, beta_tilde=0.05, gamma_tilde=0.01)
    assert s.epsilon == pytest.approx(1e-3) and s.localization == pytest.approx(20.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=1e-3, lr=2e-3, localization=1.0), "contradictory step sizes"),
        (dict(epsilon=1e-3, gamma=1.0, localization=2.0), "contradictory localizations"),
        (dict(epsilon=1e-3, nbeta=10.0, beta_tilde=1.0, localization=1.0), "contradictory"),
        (dict(epsilon=1e-3, localization=10.0, gamma_tilde=1.0), "contradictory"),
        (dict(localization=1.0), "step size"),
        (dict(epsilon=1e-3), "localization"),
        (dict(epsilon=-1.0, localization=1.0), "non-negative"),
        (dict(epsilon=1e-3, localization=1.0, num_chains=0), "num_chains"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sgld_settings(batch_size=16, **kwargs)


def test_consistent_duplicates_are_accepted():
    s = sgld_settings(batch_size=16, epsilon=1e-3, lr=1e-3, nbeta=10.0, beta_tilde=0.005, gamma=4.0, gamma_tilde=0.002)
    assert (s.epsilon, s.nbeta, s.localization) == (1e-3, 10.0, 4.0)


def test_bad_datasets_are_refused():
    model, (x, y) = tiny_setup(n=32)
    s = sgld_settings(batch_size=64, epsilon=1e-4, localization=1.0, num_draws=1)
    with pytest.raises(ValueError, match="exceeds"):
        run_chains(model, mse_loss, (x, y), s)
    with pytest.raises(ValueError, match="share their first dimension"):
        run_chains(model, mse_loss, (x, y[:16]), sgld_settings(batch_size=8, epsilon=1e-4, localization=1.0))
    with pytest.raises(ValueError, match="method"):
        run_chains(model, mse_loss, (x, y), sgld_settings(batch_size=8, epsilon=1e-4, localization=1.0), method="vmap")


# --- seeding and paths ------------------------------------------------------------------------


def test_batches_are_epochs_without_repeats():
    stream = _BatchStream(10, 3, torch.Generator().manual_seed(0))
    epoch = torch.cat([stream.next() for _ in range(3)])
    assert len(set(epoch.tolist())) == 9  # 3 batches per epoch, the 10th row waits for the next
    assert not torch.equal(torch.cat([stream.next() for _ in range(3)]), epoch)  # a fresh permutation


def test_batched_and_loop_paths_agree():
    model, data = tiny_setup()
    s = sgld_settings(batch_size=32, num_chains=3, num_draws=20, epsilon=1e-3, localization=10.0)
    batched = run_chains(model, mse_loss, data, s, seed=1, method="batched")
    loop = run_chains(model, mse_loss, data, s, seed=1, method="loop")
    assert (batched.method, loop.method) == ("batched", "loop")
    torch.testing.assert_close(batched.loss, loop.loss, rtol=1e-4, atol=0)
    assert not torch.equal(batched.loss[0], batched.loss[1])  # chains draw their own batches and noise


def test_loop_chains_side_by_side_are_bitwise_the_single_threaded_loop():
    model, data = tiny_setup()
    model.fused_attention = True  # as the pipeline samples (SDPA on the loop)
    s = sgld_settings(batch_size=32, num_chains=3, num_draws=15, epsilon=1e-3, localization=10.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert sgld._chain_threads("loop", torch.device("cpu"), False, 3) == 2
        side_by_side = run_chains(model, mse_loss, data, s, seed=3, method="loop")
        assert torch.get_num_threads() == 2  # the caller's thread count is restored
        torch.set_num_threads(1)
        assert sgld._chain_threads("loop", torch.device("cpu"), False, 3) == 1
        one_at_a_time = run_chains(model, mse_loss, data, s, seed=3, method="loop")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(side_by_side.loss, one_at_a_time.loss)
    assert sgld._chain_threads("batched", torch.device("cpu"), False, 3) == 1
    assert sgld._chain_threads("loop", torch.device("cpu"), True, 3) == 1  # compiled: one chain at a time
    for kwargs, match in [
        (dict(chain_threads=0), "integer >= 1"),
        (dict(chain_threads=2, method="batched"), "loop only"),
        (dict(chain_threads=2, method="loop", compile=True), "without compile"),
    ]:
        with pytest.raises(ValueError, match=match):
            run_chains(model, mse_loss, data, s, **kwargs)


def test_rerun_is_bitwise_identical_and_seed_matters():
    model, data = tiny_setup()
    s = sgld_settings(batch_size=32, num_chains=2, num_draws=10, epsilon=1e-3, localization=10.0)
    a = run_chains(model, mse_loss, data, s, seed=5)
    b = run_chains(model, mse_loss, data, s, seed=5)
    c = run_chains(model, mse_loss, data, s, seed=6)
    assert torch.equal(a.loss, b.loss)
    assert not torch.equal(a.loss, c.loss)


def test_chain_streams_do_not_depend_on_the_number_of_chains():
    model, data = tiny_setup()
    two = run_chains(
        model,
        mse_loss,
        data,
        sgld_settings(batch_size=32, num_chains=2, num_draws=8, epsilon=1e-3, localization=10.0),
        method="loop",
    )
    four = run_chains(
        model,
        mse_loss,
        data,
        sgld_settings(batch_size=32, num_chains=4, num_draws=8, epsilon=1e-3, localization=10.0),
        method="loop",
    )
    assert torch.equal(two.loss, four.loss[:2])


class Linear(Potential):
    """L(w) = Σ w_i + mean of the batch: constant gradient, so w_τ − w* is the same at every w*,
    and the loss reveals which rows each step drew."""

    def __init__(self, start: float):
        super().__init__(3)
        with torch.no_grad():
            self.w.fill_(start)

    def forward(self, rows):
        return self.w.sum() + rows.mean()


def test_every_checkpoint_sees_the_same_batches_and_noise():
    # A.4.2: the streams depend on (seed, chain) only, never on w*.
    rows = (torch.arange(40, dtype=torch.float64)[:, None] ** 2,)
    s = sgld_settings(batch_size=4, nbeta=1.0, num_chains=2, num_draws=30, epsilon=1e-2, localization=0.0)
    loss = lambda model, r: model(r)
    at0 = run_chains(Linear(0.0), loss, rows, s, seed=3).loss
    at5 = run_chains(Linear(5.0), loss, rows, s, seed=3).loss
    torch.testing.assert_close(at5 - at0, torch.full_like(at0, 15.0), rtol=0, atol=1e-9)


def test_auto_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    small = (torch.zeros(32, 16, 5), torch.zeros(32, 8))
    large = (torch.zeros(64, 16, 5), torch.zeros(64, 8))
    assert choose_method("auto", cpu, small, 8) == "batched"
    assert choose_method("auto", cpu, large, 8) == "loop"
    assert choose_method("auto", cuda, large, 8) == "batched"
    assert choose_method("auto", cpu, small, 1) == "loop"
    assert choose_method("batched", cpu, large, 8) == "batched"


# --- divergence -------------------------------------------------------------------------------


class Disk(Potential):
    """1 − sqrt(1 − w²): finite inside |w| < 1, NaN outside, so some chains diverge and some do not."""

    def __init__(self):
        super().__init__(1)

    def forward(self):
        return 1 - torch.sqrt(1 - self.w[0] ** 2)


@pytest.mark.parametrize("method", ["batched", "loop"])
def test_a_nan_chain_is_frozen_and_the_others_go_on(method):
    s = sgld_settings(batch_size=1, nbeta=0.01, num_chains=8, num_draws=200, epsilon=0.004, localization=0.0)
    out = run_chains(Disk(), potential_loss, dummy_dataset(), s, seed=0, method=method)
    dead = out.diverged_step >= 0
    assert 0 < int(dead.sum()) < 8
    for c in range(8):
        if dead[c]:
            t = int(out.diverged_step[c])
            assert torch.isfinite(out.loss[c, :t]).all() and not torch.isfinite(out.loss[c, t])
            assert torch.isnan(out.loss[c, t + 1 :]).all()
        else:
            assert torch.isfinite(out.loss[c]).all()


def test_paths_agree_on_which_chains_diverge():
    s = sgld_settings(batch_size=1, nbeta=0.01, num_chains=8, num_draws=200, epsilon=0.004, localization=0.0)
    a = run_chains(Disk(), potential_loss, dummy_dataset(), s, method="batched")
    b = run_chains(Disk(), potential_loss, dummy_dataset(), s, method="loop")
    assert torch.equal(a.diverged_step, b.diverged_step)


def test_frozen_parameters_are_not_sampled():
    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.free = nn.Parameter(torch.zeros(2, dtype=torch.float64))
            self.fixed = nn.Parameter(torch.ones(2, dtype=torch.float64), requires_grad=False)

        def forward(self):
            return (self.free**2).sum() + (self.fixed**2).sum()

    s = sgld_settings(batch_size=1, nbeta=10.0, num_chains=2, num_draws=5, epsilon=1e-2, localization=1.0)
    out = run_chains(Half(), potential_loss, dummy_dataset(), s)
    assert out.num_params == 2
    assert (out.loss >= 2.0).all() and out.loss[:, 0].eq(2.0).all()  # w_1 = w*, fixed part kept


def test_eager_loop_gradient_is_torch_func_grad():
    # the loop path's plain-autograd gradient is torch.func's (which the compiled path uses)
    model, (x, y) = tiny_setup(n=64)
    flat = FlatLoss(model, mse_loss)
    w = flat.w0 + 0.01 * torch.randn(flat.w0.shape, generator=torch.Generator().manual_seed(0))
    g_loop, l_loop = _grad_fn(flat, "loop")(w, x, y)
    g_func, l_func = _grad_fn(flat, "loop", compile=True)(w, x, y)
    torch.testing.assert_close(l_loop, l_func, rtol=0, atol=0)
    torch.testing.assert_close(g_loop, g_func, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_compiled_update_matches_eager_within_rounding():
    # vmap ∘ grad under torch.compile, the more fragile of the two paths (the benchmark checks both)
    model, data = tiny_setup()
    s = sgld_settings(batch_size=32, num_chains=2, num_draws=10, epsilon=1e-3, localization=10.0)
    eager = run_chains(model, mse_loss, data, s, method="batched")
    compiled = run_chains(model, mse_loss, data, s, method="batched", compile=True)
    torch.testing.assert_close(compiled.loss, eager.loss, rtol=1e-4, atol=0)
