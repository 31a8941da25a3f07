"""Probe data: seeded, identical on every call, OOD sets as in eqs. 18–19."""

import numpy as np
import pytest
import torch

from devarray.observables.regression import make_probe
from devarray.tasks.regression import RegressionTask, ridge_predict, tokenize

TASK = RegressionTask(D=2, K=3)


def test_same_seed_same_probe_and_seeds_differ():
    a, b, c = make_probe(TASK, 0, n=32, n_ood=8), make_probe(TASK, 0, n=32, n_ood=8), make_probe(TASK, 1, n=32, n_ood=8)
    for field in ("x", "y", "t", "tokens", "ridge", "ood_t", "ood_x", "ood_y", "ood_tokens", "task_mean"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.x, c.x)


def test_sizes_defaults_and_attrs():
    p = make_probe(TASK, 5)
    assert (p.n, p.n_ood) == (2048, 256)
    np.testing.assert_array_equal(p.gains, np.logspace(-1, 2, 13))
    assert p.tokens.shape == (2048, 6, 3) and p.ood_tokens.shape == (2, 13, 256, 6, 3)
    assert p.attrs() == {"probe_seed": 5, "probe_n": 2048, "probe_n_ood": 256}


def test_in_distribution_batch_tokens_and_ridge():
    p = make_probe(TASK, 0, n=64, n_ood=4)
    assert torch.equal(p.tokens, tokenize(p.x, p.y))
    assert torch.equal(p.ridge, ridge_predict(p.x.double(), p.y.double(), TASK.noise_var))
    noise = p.y - torch.einsum("nkd,nd->nk", p.x, p.t)
    assert noise.std().item() < 2 * TASK.noise_var**0.5  # y = tᵀx + N(0, σ²)
    assert torch.equal(p.ood_tokens[1, 3], tokenize(p.ood_x[1, 3], p.ood_y[1, 3]))


def test_ood_gains_scale_common_draws():
    """x ~ N(0, gI) for OOD inputs (eq. 18), t ~ N(0, gI) for OOD tasks (eq. 19), from the same
    standard normals at every g."""
    p = make_probe(TASK, 0, n=8, n_ood=16, gains=[0.25, 1.0, 4.0])
    root_g = torch.tensor([0.5, 1.0, 2.0])
    inputs, tasks = 0, 1
    torch.testing.assert_close(p.ood_x[inputs] / root_g[:, None, None, None], p.ood_x[inputs, 1].expand(3, -1, -1, -1))
    torch.testing.assert_close(p.ood_t[inputs], p.ood_t[inputs, 1].expand(3, -1, -1))  # tasks unchanged
    torch.testing.assert_close(p.ood_t[tasks] / root_g[:, None, None], p.ood_t[tasks, 1].expand(3, -1, -1))
    torch.testing.assert_close(p.ood_x[tasks], p.ood_x[tasks, 1].expand(3, -1, -1, -1))  # inputs unchanged
    noise = p.ood_y - torch.einsum("agnkd,agnd->agnk", p.ood_x, p.ood_t)
    assert noise.abs().max() < 6 * TASK.noise_var**0.5


def test_task_prior_mean_and_finite_task_set():
    assert torch.equal(make_probe(TASK, 0, n=4, n_ood=2).task_mean, torch.zeros(2, dtype=torch.float64))
    finite = RegressionTask(D=2, K=3, num_tasks=5, seed=7)
    p = make_probe(finite, 0, n=64, n_ood=16, gains=[1.0, 9.0])
    tasks = finite.task_set()
    torch.testing.assert_close(p.task_mean, tasks.double().mean(0))

    def in_task_set(t, scale=1.0):
        return bool(torch.isclose(t[:, None, :], scale * tasks[None], atol=1e-6).all(-1).any(-1).all())

    assert in_task_set(p.t) and in_task_set(p.ood_t[0, 1])  # OOD inputs keep the run's tasks
    assert not in_task_set(p.ood_t[1, 0])  # OOD tasks are fresh draws from N(0, gI)


def test_bad_sizes_and_gains_are_refused():
    with pytest.raises(ValueError, match="positive gains"):
        make_probe(TASK, 0, gains=[1.0, 0.0])
    with pytest.raises(ValueError, match="n_ood=0"):
        make_probe(TASK, 0, n_ood=0)
