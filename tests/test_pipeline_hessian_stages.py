import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from devarray.pipelines import hessian, llc, stages

from devarray.checkpoints import load_model
from devarray.settings import setting_for
from devarray.slt import sgld_settings
from devarray.store import RunStore, StoreError
from devarray.tasks.regression import mse_loss


@pytest.fixture
def store(tmp_path, tiny_store):
    shutil.copytree(tiny_store, tmp_path / "run.zarr")
    return tmp_path / "run.zarr"


def test_hessian_pipeline_top_eigenvalue_matches_power_iteration(store):
    """The stored top eigenvalue equals power iteration on exact double-backward Hessian-vector
    products of the same loss on the same fixed batch (float64)."""
    hessian.run(store, batch_size=64, num_probes=30, top_k=2, num_lanczos=40, steps=[100], progress=False, threads=1)
    ds = RunStore.open(store).dataset("hessian").sel(step=100)
    st = RunStore.open(store)
    model = load_model(st, 100)
    x, y = setting_for(st.config).hessian_batch(st.config, 64)
    params = dict(model.named_parameters())
    names = list(params)
    flat = torch.cat([p.detach().reshape(-1) for p in params.values()]).double().requires_grad_()

    def loss(w):
        chunks, i = {}, 0
        for n in names:
            k = params[n].numel()
            chunks[n] = w[i : i + k].view_as(params[n]).float()
            i += k
        return mse_loss(_Bound(model, chunks), x, y)

    class _Bound:
        def __init__(self, m, p):
            self.m, self.p = m, p

        def predict(self, tokens):
            return torch.func.functional_call(self.m, self.p, (tokens,))[..., 0::2, 0]

    # power iteration on exact Hessian-vector products gives the top eigenvalue independently
    g = torch.autograd.grad(loss(flat), flat, create_graph=True)[0]
    v = torch.randn(flat.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for _ in range(60):
        v = torch.autograd.grad(g, flat, v / v.norm(), retain_graph=True)[0]
    top = v.norm().item()
    assert float(ds.top_eigenvalues[0]) == pytest.approx(top, rel=2e-2)
    assert float(ds.trace_sem) > 0 and np.isfinite(float(ds.trace))


def test_hessian_settings_guard_and_resume(store):
    hessian.run(store, batch_size=32, num_probes=4, top_k=2, num_lanczos=8, steps=[0], progress=False, threads=1)
    again = hessian.run(
        store, batch_size=32, num_probes=4, top_k=2, num_lanczos=8, steps=[0, 1], progress=False, threads=1
    )
    assert [r["step"] for r in again] == [1]
    with pytest.raises(StoreError, match="other settings"):
        hessian.run(store, batch_size=64, num_probes=4, top_k=2, num_lanczos=8, steps=[0], progress=False)


def test_stages_pipeline_writes_group_and_table(store):
    settings = sgld_settings(
        batch_size=32, num_chains=2, num_draws=10, num_burnin_steps=2, epsilon=1e-3, beta_tilde=0.01, gamma_tilde=0.01
    )
    with pytest.raises(StoreError, match="no done llc"):
        stages.run(store)
    llc.run(store, settings, dataset_size=256, progress=False, threads=1)
    ds = stages.run(store)
    stored = xr.open_zarr(store, group="stages")
    assert {"smooth", "slope", "slope_lo", "slope_hi", "stage", "boundary_step"} <= set(stored)
    assert list(stored.curve.values) == ["llc_mean", "test_loss", "weight_norm"]  # the staged curve first
    assert stored.smooth.dims == ("curve", "step") and stored.smooth.attrs["units"]
    np.testing.assert_allclose(stored.smooth.values, ds.smooth.values)
    # every stored step has a stage, from the boundaries of the LLC curve alone
    assert (stored.stage.values == 1 + np.searchsorted(ds.boundary_step.values, stored.step.values, "right")).all()
    table = stages.table(store)
    assert "Δllc_mean" in table and "Δtest_loss" in table
    assert len(table.splitlines()) == stored.sizes["stage_id"] + 2
