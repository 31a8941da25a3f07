import torch

from devarray.tasks.regression import RegressionTask, derive_seed, per_position_mse, ridge_predict, tokenize


def test_tokenisation_layout_of_f22():
    x = torch.arange(1, 13, dtype=torch.float32).view(1, 3, 4)  # K=3, D=4
    y = torch.tensor([[10.0, 20.0, 30.0]])
    tokens = tokenize(x, y)
    assert tokens.shape == (1, 6, 5)
    assert torch.equal(tokens[0, 0], torch.tensor([0.0, 1, 2, 3, 4]))
    assert torch.equal(tokens[0, 1], torch.tensor([10.0, 0, 0, 0, 0]))
    assert torch.equal(tokens[0, 4], torch.tensor([0.0, 9, 10, 11, 12]))
    assert torch.equal(tokens[0, 5], torch.tensor([30.0, 0, 0, 0, 0]))


def test_sampling_is_seeded_by_stream():
    task = RegressionTask(seed=3)
    a, b = task.batch_for_step(17, 8), task.batch_for_step(17, 8)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(task.batch_for_step(18, 8).x, a.x)
    assert not torch.equal(RegressionTask(seed=4).batch_for_step(17, 8).x, a.x)
    assert derive_seed(1, "x") == derive_seed(1, "x") != derive_seed(1, "y")


def test_outputs_follow_the_linear_model_with_noise_variance():
    task = RegressionTask(noise_var=0.125)
    batch = task.dataset(20_000, "check")
    resid = batch.y - torch.einsum("nkd,nd->nk", batch.x, batch.t)
    assert abs(resid.var().item() - 0.125) < 0.005
    # the zero predictor's loss is D + σ² = 4.125
    assert abs((batch.y**2).mean().item() - 4.125) < 0.05


def test_finite_task_set():
    task = RegressionTask(num_tasks=3, seed=1)
    batch = task.dataset(300, "check")
    assert len(torch.unique(batch.t, dim=0)) == 3
    assert torch.equal(task.task_set(), RegressionTask(num_tasks=3, seed=1).task_set())


def test_ridge_matches_explicit_posterior_mean():
    task = RegressionTask()
    b = task.dataset(5, "ridge")
    pred = ridge_predict(b.x, b.y, lam=task.noise_var)
    for n in range(5):
        for k in range(task.K):
            X, Y = b.x[n, :k].double(), b.y[n, :k].double()
            t_hat = torch.linalg.solve(X.T @ X + task.noise_var * torch.eye(task.D, dtype=torch.float64), X.T @ Y)
            assert abs(pred[n, k].item() - (t_hat @ b.x[n, k].double()).item()) < 1e-4
    assert torch.all(pred[:, 0] == 0)


def test_ridge_is_bayes_optimal_per_position():
    """Known answer: E[(ŷ_k − y_k)²] = σ² + σ² E[x_kᵀ (X_{<k}ᵀX_{<k} + σ²I)⁻¹ x_k]; at k=1 it is D + σ².
    The Bayes-optimal predictor beats least squares with a different ridge at every position."""
    task = RegressionTask()
    b = task.dataset(50_000, "bayes")
    mse = per_position_mse(ridge_predict(b.x, b.y, task.noise_var), b.y)
    assert abs(mse[0].item() - 4.125) < 0.06
    assert torch.all(mse[1:] < mse[:-1])
    for lam in (0.01, 1.0):
        other = per_position_mse(ridge_predict(b.x, b.y, lam), b.y)
        assert torch.all(mse[1:] <= other[1:] + 1e-3)
