import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import devarray
from devarray.store import RunStore, StoreError, VarSpec, open_runs


def test_plain_xarray_reads_every_group_without_devarray(tiny_store):
    code = (
        "import xarray as xr, sys\n"
        f"p = {str(tiny_store)!r}\n"
        "ev = xr.open_zarr(p, group='eval')\n"
        "pa = xr.open_zarr(p, group='params')\n"
        "assert 'devarray' not in sys.modules\n"
        "print(ev.sizes['step'], pa['token_embedding.weight'].dims, ev.test_loss.attrs['units'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    n, dims, units = out.split(" ", 1)[0], out.split("(", 1)[1].split(")")[0], out.rsplit(" ", 1)[1].strip()
    assert int(n) == 18
    assert dims == "'step', 'd_embed', 'token_dim'"
    assert units == "error"  # 'squared error'


def test_open_run_is_a_datatree_with_config(tiny_store):
    tree = devarray.open_run(tiny_store)
    assert isinstance(tree, xr.DataTree)
    assert {"params", "eval", "train", "optimizer"} <= set(tree.children)
    assert tree.attrs["config"]["preset"] == "tiny"
    assert tree["eval"].dataset.done.all()


def test_every_variable_has_cf_attributes(tiny_store):
    tree = devarray.open_run(tiny_store)
    for node in tree.subtree:
        for name, var in node.dataset.data_vars.items():
            assert {"long_name", "units", "description"} <= set(var.attrs), f"{node.path}/{name}"


def test_open_runs_concatenates_along_run_with_seed_coords(tmp_path, tiny_store):
    import shutil

    from devarray.train import make_config, train

    shutil.copytree(tiny_store, tmp_path / "lr-s0.zarr")
    train(tmp_path / "lr-s1.zarr", make_config("lr", "tiny", seed=1), progress=False)
    ds = open_runs(str(tmp_path / "lr-s*.zarr"), group="eval")
    assert ds.sizes["run"] == 2
    assert list(ds.seed.values) == [0, 1]
    assert list(ds.preset.values) == ["tiny", "tiny"]
    assert not np.allclose(ds.test_loss.isel(run=0), ds.test_loss.isel(run=1))


def test_open_runs_with_no_match_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no run stores match"):
        open_runs(str(tmp_path / "nothing-*.zarr"), group="eval")


def test_create_refuses_existing_store_without_overwrite(tmp_path):
    RunStore.create(tmp_path / "a.zarr", {"seed": 0})
    with pytest.raises(StoreError, match="--overwrite"):
        RunStore.create(tmp_path / "a.zarr", {"seed": 0})
    RunStore.create(tmp_path / "a.zarr", {"seed": 1}, overwrite=True)
    assert RunStore.open(tmp_path / "a.zarr").config == {"seed": 1}


def test_open_rejects_non_stores(tmp_path):
    with pytest.raises(StoreError, match="not a run store"):
        RunStore.open(tmp_path / "missing.zarr")


def test_validation_catches_schema_violations(tmp_path):
    import zarr

    store = RunStore.create(tmp_path / "a.zarr", {"seed": 0})
    store.create_group("hessian", {"step": np.array([0, 10]), "eig": np.arange(3)})
    RunStore.open(tmp_path / "a.zarr")  # valid
    g = zarr.open_group(str(tmp_path / "a.zarr"), mode="r+")["hessian"]
    del g["trace"]
    g.create_array(
        "trace",
        shape=(2, 3),
        dtype="float32",
        dimension_names=["step", "eig"],
        attributes={"long_name": "x", "units": "1"},
    )
    with pytest.raises(StoreError, match="trace has dims"):
        RunStore.open(tmp_path / "a.zarr")


def test_region_writes_and_done_flags(tmp_path):
    store = RunStore.create(tmp_path / "a.zarr", {"seed": 0})
    store.create_group("hessian", {"step": np.array([0, 10, 20]), "eig": np.arange(2)})
    store.write("hessian", 10, {"trace": 3.5, "top_eigenvalues": [2.0, 1.0]})
    assert list(store.done_steps("hessian")) == []
    store.mark_done("hessian", 10)
    assert list(store.done_steps("hessian")) == [10]
    ds = store.dataset("hessian")
    assert float(ds.trace.sel(step=10)) == 3.5
    assert np.isnan(float(ds.trace.sel(step=20)))  # unwritten reads as NaN, and done says so
    with pytest.raises(StoreError, match="not a checkpoint"):
        store.write("hessian", 15, {"trace": 1.0})


def test_dynamic_groups_take_new_variables_and_protect_existing(tmp_path):
    store = RunStore.create(tmp_path / "a.zarr", {"seed": 0})
    store.create_group("observables", {"step": np.array([0, 10])})
    spec = VarSpec(("step", "g"), "float32", {"long_name": "x", "units": "1", "description": "d"})
    store.add_variables("observables", {"x": spec}, coords={"g": np.array([0.1, 1.0, 10.0])})
    with pytest.raises(StoreError, match="--overwrite"):
        store.add_variables("observables", {"x": spec})
    with pytest.raises(StoreError, match="fixed schema"):
        store.add_variables("hessian", {"x": spec})
    assert xr.open_zarr(tmp_path / "a.zarr", group="observables").x.dims == ("step", "g")


def test_params_floats_use_the_schemas_compressor_losslessly(tiny_store):
    import zarr

    from devarray import schemas
    from devarray.store import compressor_codecs

    g = zarr.open_group(tiny_store, mode="r", path="params")
    codec = g["token_embedding.weight"].compressors[0]
    assert isinstance(codec, zarr.codecs.BloscCodec)
    spec = schemas.load("params")["compressor"]
    assert (codec.cname.value, codec.clevel, codec.shuffle.value) == (spec["cname"], spec["clevel"], spec["shuffle"])
    assert not isinstance(g["done"].compressors[0], zarr.codecs.BloscCodec)  # flags keep zarr's default
    # a group whose schema names no compressor keeps zarr's default (Zstd)
    assert isinstance(
        zarr.open_group(tiny_store, mode="r", path="eval")["test_loss"].compressors[0], zarr.codecs.ZstdCodec
    )
    # lossless, bit for bit, on floats of every kind
    x = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    x[0, :4] = [np.inf, -0.0, 1e-45, np.finfo(np.float32).max]
    a = zarr.create_array(
        zarr.storage.MemoryStore(),
        shape=x.shape,
        chunks=(1, 1000),
        dtype=x.dtype,
        compressors=compressor_codecs(spec, 4),
    )
    a[:] = x
    assert a[:].tobytes() == x.tobytes()
    assert compressor_codecs(None, 4) is None
    with pytest.raises(StoreError, match="unknown compressor codec 'lzma'"):
        compressor_codecs({"codec": "lzma"}, 4)
