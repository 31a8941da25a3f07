import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
from devarray.pipelines import observe

from devarray import observables as obs
from devarray.checkpoints import load_model
from devarray.observables.regression import make_probe
from devarray.settings import setting_for
from devarray.store import RunStore, StoreError


def unembedding_bias_y(model, probe):
    """The y-component of the unembedding bias (a user's observable, defined outside the package)."""
    return xr.DataArray(float(model.unembedding.bias[0]))


@pytest.fixture(autouse=True)
def user_observable():
    # registered for this module's tests only, so that other modules see the package's registry
    obs.observable(name="test_unembedding_bias_y", long_name="unembedding bias of y", units="1")(unembedding_bias_y)
    yield
    obs.unregister("test_unembedding_bias_y")


@pytest.fixture
def store(tmp_path, tiny_store):
    shutil.copytree(tiny_store, tmp_path / "run.zarr")
    return tmp_path / "run.zarr"


def test_user_observable_becomes_a_variable_readable_by_plain_xarray(store):
    results = observe.run(store, ["test_unembedding_bias_y"], progress=False, threads=1)
    assert len(results) == 18
    ds = xr.open_zarr(store, group="observables")
    var = ds.test_unembedding_bias_y
    assert var.dims == ("step",)
    assert var.attrs["long_name"] == "unembedding bias of y"
    assert "user's observable" in var.attrs["description"] and var.attrs["probe_seed"] == 0
    expected = RunStore.open(store).dataset("params")["unembedding.bias"].isel(token_dim=0)
    np.testing.assert_array_equal(var.values, expected.values.astype(var.dtype))
    assert bool(ds.done_test_unembedding_bias_y.all())


def test_done_observables_are_not_recomputed_and_overwrite_redoes_them(store):
    observe.run(store, ["test_unembedding_bias_y"], steps=[0, 1], progress=False, threads=1)
    assert [
        r["step"] for r in observe.run(store, ["test_unembedding_bias_y"], steps=[0, 1, 2], progress=False, threads=1)
    ] == [2]
    redo = observe.run(store, ["test_unembedding_bias_y"], steps=[0], overwrite=True, progress=False, threads=1)
    assert [r["step"] for r in redo] == [0]


def test_train_time_values_equal_the_pipeline_values(store):
    """The training loop and the pipeline call the same registered function on the same probe."""
    st = RunStore.open(store)
    stored = st.dataset("observables")
    probe = make_probe(setting_for(st.config).task(st.config), 0)
    for step in (0, 56, 100):
        fresh = obs.compute(load_model(st, step), obs.names(train_time=True), probe)
        for v in fresh.data_vars:
            np.testing.assert_array_equal(stored[v].sel(step=step).values, fresh[v].values)


def test_another_probe_is_refused_without_overwrite(store):
    observe.run(store, ["test_unembedding_bias_y"], steps=[0], progress=False, threads=1)
    with pytest.raises(StoreError, match="another probe"):
        observe.run(store, ["test_unembedding_bias_y"], steps=[0], probe_seed=1, progress=False)


def test_regression_observables_fill_the_group(store):
    observe.run(store, ["icl_scores", "ood", "head_class"], steps=[0, 100], progress=False, threads=1)
    ds = xr.open_zarr(store, group="observables")
    assert ds.ood_nmse.dims == ("step", "kind", "g") and ds.sizes["g"] == 13
    assert ds.head_class.dims == ("step", "layer", "head", "query")
    assert np.isfinite(ds.icl_1_D.sel(step=[0, 100])).all()


def test_cli_imports_a_users_module(store, tmp_path):
    module = tmp_path / "my_observables.py"
    module.write_text(
        textwrap.dedent('''
        import xarray as xr
        from devarray.observables import observable

        @observable(name="ln_out_weight_mean", long_name="mean final layer-norm weight")
        def ln_out_weight_mean(model, probe):
            """Mean of the final layer norm's weights."""
            return xr.DataArray(float(model.ln_out.weight.mean()))
    ''')
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "devarray.cli",
            "observe",
            str(store),
            "--module",
            str(module),
            "--name",
            "ln_out_weight_mean",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    ds = xr.open_zarr(store, group="observables")
    ln = RunStore.open(store).dataset("params")["ln_out.weight"].mean("d_embed")
    np.testing.assert_allclose(ds.ln_out_weight_mean.values, ln.values, rtol=1e-6)


def test_cli_takes_observable_names_after_the_store(store, capsys):
    from devarray import cli

    assert cli.main(["observe", str(store), "prediction_scale", "icl_scores", "--steps", "0,1", "--quiet"]) == 0
    assert "computed 4 observable-checkpoints" in capsys.readouterr().out
    ds = RunStore.open(store).dataset("observables")
    assert bool(ds.done_prediction_scale.sel(step=[0, 1]).all()) and bool(ds.done_icl_scores.sel(step=[0, 1]).all())
    assert "done_ood" not in ds and "ood_nmse" not in ds  # only what was named
    assert cli.main(["observe", "prediction_scale"]) == 2
    assert "no run store among prediction_scale" in capsys.readouterr().err
    assert cli.main(["observe", str(store), "no_such_observable", "--quiet"]) == 2
    assert "no_such_observable" in capsys.readouterr().err
