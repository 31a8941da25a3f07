"""Hessian statistics (appendix B.5) against exact Hessians of small models."""

import numpy as np
import pytest
import torch
from torch import nn

from devarray.models.regression import RegressionConfig, RegressionTransformer
from devarray.slt.hessian import hessian_stats, hessian_vector_product, hutchinson_trace, lanczos_eigenvalues
from devarray.tasks.regression import RegressionTask, generator


def exact_hessian(model, loss_of_output, inputs):
    """The full Hessian in the flattened parameters, by autograd, independently of hessian.py."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(w):
        params = {n: t.view(s) for n, t, s in zip(names, w.split([s.numel() for s in shapes]), shapes)}
        return loss_of_output(torch.func.functional_call(model, params, inputs))

    return torch.autograd.functional.hessian(f, w0, vectorize=True)


def mse(model, x, y):
    return ((model(x) - y) ** 2).mean()


def predict_mse(model, tokens, y):
    return ((model.predict(tokens) - y) ** 2).mean()


def hutchinson_sem(H, num_probes):
    """Exact standard error of Hutchinson's estimator: Var(vᵀHv) = 2 Σ_{i≠j} H_ij² for Rademacher v."""
    off = (H**2).sum() - (torch.diagonal(H) ** 2).sum()
    return float(torch.sqrt(2 * off / num_probes))


@pytest.fixture(scope="module")
def mlp_case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    H = exact_hessian(model, lambda out: ((out - y) ** 2).mean(), (x,))
    return model, (x, y), H


@pytest.fixture(scope="module")
def transformer_case():
    torch.manual_seed(0)
    model = RegressionTransformer(RegressionConfig(D=2, K=3, L=1, H=2, d_embed=8, d_mlp=8)).double()
    batch = RegressionTask(D=2, K=3).sample(64, generator(0, "hessian-test"))
    tokens, y = batch.tokens.double(), batch.y.double()
    H = exact_hessian(model, lambda out: ((out[..., 0::2, 0] - y) ** 2).mean(), (tokens,))
    return model, (tokens, y), H


class Quadratic(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)


def test_quadratic_known_answer():
    # loss ½ wᵀAw has Hessian A everywhere: eigenvalues and trace known exactly.
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    eig = torch.linspace(-2.0, 10.0, 30, dtype=torch.float64)
    A = Q @ torch.diag(eig) @ Q.T
    model = Quadratic(torch.randn(30, dtype=torch.float64, generator=g))
    ds = hessian_stats(model, lambda m: 0.5 * m.w @ A @ m.w, (), top_k=4, num_lanczos=30, num_probes=200)
    np.testing.assert_allclose(ds.top_eigenvalues, eig.flip(0)[:4], rtol=1e-10)
    assert abs(float(ds.trace) - float(eig.sum())) < 4 * float(ds.trace_sem)
    np.testing.assert_allclose(float(ds.trace_sem), hutchinson_sem(A, 200), rtol=0.25)


def test_diagonal_hessian_trace_is_exact():
    # vᵀDv = Σ D_ii v_i² = tr D for every Rademacher v: zero variance.
    d = torch.arange(1.0, 11.0, dtype=torch.float64)
    model = Quadratic(torch.zeros(10, dtype=torch.float64))
    ds = hessian_stats(model, lambda m: 0.5 * (d * m.w**2).sum(), (), top_k=2, num_lanczos=10, num_probes=5)
    assert float(ds.trace) == pytest.approx(55.0, abs=1e-12)
    assert float(ds.trace_sem) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(ds.top_eigenvalues, [10.0, 9.0], rtol=1e-12)


def test_hvp_matches_exact_hessian(mlp_case, transformer_case):
    for model, batch, H in (mlp_case, transformer_case):
        loss = mse if isinstance(model, nn.Sequential) else predict_mse
        hvp, dim = hessian_vector_product(model, loss, batch)
        assert dim == H.shape[0] == sum(p.numel() for p in model.parameters())
        g = torch.Generator().manual_seed(0)
        for _ in range(2):  # the linearised gradient is reused from product to product
            v = torch.randn(dim, dtype=torch.float64, generator=g)
            torch.testing.assert_close(hvp(v), H @ v, rtol=1e-10, atol=1e-12)


def test_mlp_eigenvalues_and_trace(mlp_case):
    model, batch, H = mlp_case
    exact = torch.linalg.eigvalsh(H).flip(0).numpy()
    ds = hessian_stats(model, mse, batch, num_probes=400)
    np.testing.assert_allclose(ds.top_eigenvalues, exact[:5], rtol=1e-4)
    assert abs(float(ds.trace) - float(torch.trace(H))) < 4 * float(ds.trace_sem)
    # the standard error is the estimator's real one, so the estimate converges as 1/√probes
    np.testing.assert_allclose(float(ds.trace_sem), hutchinson_sem(H, 400), rtol=0.2)


def test_transformer_eigenvalues_and_trace(transformer_case):
    model, batch, H = transformer_case
    exact = torch.linalg.eigvalsh(H).flip(0).numpy()
    ds = hessian_stats(model, predict_mse, batch, num_probes=200, top_k=5)  # default 64 Lanczos steps
    np.testing.assert_allclose(ds.top_eigenvalues, exact[:5], rtol=1e-4)
    assert abs(float(ds.trace) - float(torch.trace(H))) < 4 * float(ds.trace_sem)
    np.testing.assert_allclose(float(ds.trace_sem), hutchinson_sem(H, 200), rtol=0.25)


def test_float32_model_close_to_exact(transformer_case):
    # Models are stored in float32; Lanczos runs in float64 on float32 products.
    model, (tokens, y), H = transformer_case
    m32 = RegressionTransformer(model.cfg)
    m32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ds = hessian_stats(m32, predict_mse, (tokens.float(), y.float()), num_probes=10, top_k=3)
    np.testing.assert_allclose(ds.top_eigenvalues, torch.linalg.eigvalsh(H).flip(0)[:3].numpy(), rtol=1e-3)


def test_seeded(mlp_case):
    model, batch, _ = mlp_case
    a = hessian_stats(model, mse, batch, num_probes=20, seed=3)
    b = hessian_stats(model, mse, batch, num_probes=20, seed=3)
    c = hessian_stats(model, mse, batch, num_probes=20, seed=4)
    assert float(a.trace) == float(b.trace) and float(a.trace_sem) == float(b.trace_sem)
    np.testing.assert_array_equal(a.top_eigenvalues, b.top_eigenvalues)
    assert float(a.trace) != float(c.trace)


def test_lanczos_stops_on_invariant_subspace():
    # A rank-2 operator on R⁴: the Krylov space span{q, u, v} is invariant after 3 steps, so
    # Lanczos stops there with the exact spectrum on it, and no copies from the 7 steps left.
    u = torch.tensor([1.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    v = torch.tensor([0.0, 1.0, -1.0, -2.0], dtype=torch.float64)
    A = 3 * torch.outer(u, u) / u.dot(u) + 1 * torch.outer(v, v) / v.dot(v)
    ritz = lanczos_eigenvalues(lambda q: A @ q, 4, 10, torch.Generator().manual_seed(0), torch.float64)
    np.testing.assert_allclose(ritz, [3.0, 1.0, 0.0], atol=1e-12)


def test_dataset_matches_hessian_schema(mlp_case):
    from devarray.schemas import load

    model, batch, _ = mlp_case
    ds = hessian_stats(model, mse, batch, num_probes=4, top_k=3)
    spec = load("hessian")
    for name in ("trace", "trace_sem", "top_eigenvalues"):
        assert [d for d in spec["variables"][name]["dims"] if d != "step"] == list(ds[name].dims)
        assert ds[name].attrs["units"] == spec["variables"][name]["units"]
        assert {"long_name", "units", "description"} <= set(ds[name].attrs)
    assert list(ds.eig.values) == [0, 1, 2]
    assert ds.attrs["num_parameters"] == 38 and ds.attrs["batch_size"] == 32 and ds.attrs["num_probes"] == 4


def test_bad_arguments(mlp_case):
    model, batch, _ = mlp_case
    with pytest.raises(ValueError, match="num_probes"):
        hutchinson_trace(lambda v: v, 3, 1, torch.Generator())
    with pytest.raises(ValueError, match="top_k"):
        hessian_stats(model, mse, batch, top_k=5, num_lanczos=3)
