"""One source of truth for variable metadata: every stored variable carries long_name, units and
description, and those of the schema'd groups are the schema's words, written by the code that
computes them (checked on in-memory results too)."""

import shutil

import numpy as np
import pytest
import torch
import xarray as xr
from devarray.pipelines import hessian, llc, observe, stages

from devarray import schemas
from devarray.models.regression import RegressionTransformer
from devarray.slt import estimate_llc, sgld_settings
from devarray.slt.hessian import hessian_stats
from devarray.store import RunStore
from devarray.tasks.regression import RegressionTask, mse_loss


def _data():
    torch.manual_seed(0)
    b = RegressionTask().dataset(64, "test")
    return RegressionTransformer(), (b.x, b.y)


def test_estimate_llc_output_follows_the_llc_schema():
    model, data = _data()
    ds = estimate_llc(
        model,
        mse_loss,
        data,
        batch_size=16,
        num_chains=2,
        num_draws=6,
        num_burnin_steps=1,
        epsilon=1e-4,
        localization=10.0,
        warn=False,
    )
    schemas.validate(ds, "llc")
    bad = ds.assign(llc_mean=ds.llc_mean.assign_attrs(units="nats"))
    with pytest.raises(schemas.SchemaError, match="llc_mean.units"):
        schemas.validate(bad, "llc")
    with pytest.raises(schemas.SchemaError, match="llc_ess is missing"):
        schemas.validate(ds.drop_vars("llc_ess"), "llc")


def test_hessian_stats_output_follows_the_hessian_schema():
    model, data = _data()
    ds = hessian_stats(model, mse_loss, data, num_probes=4, top_k=2, num_lanczos=4)
    schemas.validate(ds, "hessian")
    with pytest.raises(schemas.SchemaError, match="dims"):
        schemas.validate(ds.expand_dims(chain=[0]), "hessian")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory, tiny_store):
    path = tmp_path_factory.mktemp("meta") / "run.zarr"
    shutil.copytree(tiny_store, path)
    kw = dict(progress=False, threads=1, steps=[0, 1, 2, 3, 5, 100])
    llc.run(
        path,
        sgld_settings(batch_size=16, num_chains=2, num_draws=40, num_burnin_steps=1, epsilon=1e-4, localization=10.0),
        dataset_size=64,
        **kw,
    )
    hessian.run(path, batch_size=16, num_probes=4, top_k=2, num_lanczos=4, **kw)
    observe.run(path, ["icl_scores", "attn_entropy"], **kw)
    stages.run(path)
    return path


def test_every_stored_variable_has_cf_attrs_from_one_place(analysed):
    store = RunStore.open(analysed, mode="r")
    for group in store.groups():
        ds = xr.open_zarr(analysed, group=group, consolidated=False)
        schema = store.schema(group)
        for name, var in ds.variables.items():
            for key in schemas.CF:
                assert var.attrs.get(key), f"{group}/{name} lacks {key}"
            spec = schema["variables"].get(name) or schema["coords"].get(name)
            if spec is not None:
                assert {k: var.attrs[k] for k in schemas.CF if k in spec} == {
                    k: spec[k] for k in schemas.CF if k in spec
                }


def test_llc_group_stores_the_ess_behind_not_converged(analysed):
    ds = xr.open_zarr(analysed, group="llc", consolidated=False)
    done = ds.isel(step=ds.done.values)
    assert done.llc_ess.dims == ("step", "chain") and np.isfinite(done.llc_ess.values).all()
    assert ds.attrs["attention"] in ("sdpa", "explicit") and ds.attrs["method"] in ("loop", "batched")
