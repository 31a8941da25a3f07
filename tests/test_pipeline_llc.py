import dataclasses
import shutil

import numpy as np
import pytest
from devarray.pipelines import llc

from devarray.slt import sgld_settings
from devarray.store import RunStore, StoreError

SETTINGS = sgld_settings(
    batch_size=32, num_chains=2, num_draws=12, num_burnin_steps=4, epsilon=1e-3, beta_tilde=0.01, gamma_tilde=0.01
)
STEPS = [0, 56, 100]


@pytest.fixture
def store(tmp_path, tiny_store):
    shutil.copytree(tiny_store, tmp_path / "run.zarr")
    return tmp_path / "run.zarr"


def llc_arrays(path):
    ds = RunStore.open(path).dataset("llc")
    return {v: ds[v].values for v in ds.data_vars}


def test_writes_llc_group_and_skips_done_steps(store):
    results = llc.run(store, SETTINGS, dataset_size=256, steps=STEPS[:2], progress=False, threads=1)
    assert sorted(r["step"] for r in results) == STEPS[:2]
    ds = RunStore.open(store).dataset("llc")
    assert ds.loss.dims == ("step", "chain", "draw") and ds.sizes["draw"] == 12
    assert list(ds.step[ds.done.values].values) == STEPS[:2]
    assert np.isfinite(ds.llc_mean.sel(step=STEPS[:2])).all()
    # the per-chain estimates average to the stored mean (eq. 3, no divergent chains here)
    np.testing.assert_allclose(ds.llc_per_chain.sel(step=56).mean("chain"), ds.llc_mean.sel(step=56), rtol=1e-5)
    # resume: only the missing checkpoint is computed
    again = llc.run(store, SETTINGS, dataset_size=256, steps=STEPS, progress=False, threads=1)
    assert [r["step"] for r in again] == [100]


def test_other_settings_are_refused_without_overwrite(store):
    llc.run(store, SETTINGS, dataset_size=256, steps=[0], progress=False, threads=1)
    other = dataclasses.replace(SETTINGS, epsilon=2e-3)
    with pytest.raises(StoreError, match="other settings.*epsilon"):
        llc.run(store, other, dataset_size=256, steps=[0], progress=False)
    llc.run(store, other, dataset_size=256, steps=[0], progress=False, overwrite=True, threads=1)
    assert RunStore.open(store).group("llc").attrs["epsilon"] == 2e-3


def test_rerun_is_bitwise_identical(store, tmp_path):
    shutil.copytree(store, tmp_path / "other.zarr")
    llc.run(store, SETTINGS, dataset_size=256, steps=STEPS, progress=False, threads=1)
    llc.run(tmp_path / "other.zarr", SETTINGS, dataset_size=256, steps=STEPS, progress=False, threads=1)
    a, b = llc_arrays(store), llc_arrays(tmp_path / "other.zarr")
    for v in a:
        assert a[v].tobytes() == b[v].tobytes(), v


@pytest.mark.slow
def test_local_cluster_matches_in_process_bitwise(store, tmp_path):
    shutil.copytree(store, tmp_path / "cluster.zarr")
    llc.run(store, SETTINGS, dataset_size=256, steps=STEPS, progress=False, threads=1)
    llc.run(tmp_path / "cluster.zarr", SETTINGS, dataset_size=256, steps=STEPS, progress=False, workers=2)
    a, b = llc_arrays(store), llc_arrays(tmp_path / "cluster.zarr")
    for v in a:
        assert a[v].tobytes() == b[v].tobytes(), v


@pytest.mark.slow
def test_any_scheduler_address(store, tmp_path):
    """`--scheduler tcp://…`: the pipeline runs on a cluster it did not start."""
    from distributed import LocalCluster

    shutil.copytree(store, tmp_path / "remote.zarr")
    llc.run(store, SETTINGS, dataset_size=256, steps=[0, 100], progress=False, threads=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster:
        llc.run(
            tmp_path / "remote.zarr",
            SETTINGS,
            dataset_size=256,
            steps=[0, 100],
            progress=False,
            scheduler=cluster.scheduler_address,
        )
    a, b = llc_arrays(store), llc_arrays(tmp_path / "remote.zarr")
    for v in a:
        assert a[v].tobytes() == b[v].tobytes(), v


@pytest.mark.slow
def test_cli_compile_matches_eager_within_rounding(store, tmp_path, capsys):
    from devarray import cli

    shutil.copytree(store, tmp_path / "compiled.zarr")
    common = [
        "--chains",
        "2",
        "--draws",
        "12",
        "--burnin",
        "4",
        "--batch-size",
        "32",
        "--dataset-size",
        "256",
        "--epsilon",
        "1e-3",
        "--beta-tilde",
        "0.01",
        "--gamma-tilde",
        "0.01",
        "--steps",
        "56",
        "--threads",
        "1",
        "--quiet",
    ]
    assert cli.main(["llc", str(store), *common]) == 0
    assert cli.main(["llc", str(tmp_path / "compiled.zarr"), "--compile", *common]) == 0
    a, b = llc_arrays(store), llc_arrays(tmp_path / "compiled.zarr")
    step = list(RunStore.open(store).dataset("llc").step.values).index(56)
    np.testing.assert_allclose(b["loss"][step], a["loss"][step], rtol=1e-4)
    assert abs(b["llc_mean"][step] - a["llc_mean"][step]) < 1e-2 * abs(a["llc_mean"][step]) + 0.05


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_cli_method_is_the_path_taken_and_recorded(store, tmp_path, method):
    """--method picks the SGLD path; the group's attrs (and so its fingerprint) record it, and the
    two paths agree within rounding."""
    from devarray import cli

    common = ["--chains", "2", "--draws", "12", "--batch-size", "32", "--dataset-size", "256", "--steps", "56"]
    assert cli.main(["llc", str(store), "--method", method, *common, "--threads", "1", "--quiet"]) == 0
    ds = RunStore.open(store).dataset("llc")
    assert ds.attrs["method"] == method
    other = tmp_path / "other.zarr"
    shutil.copytree(store.parent / "run.zarr", other, dirs_exist_ok=True)
    flip = {"loop": "batched", "batched": "loop"}[method]
    assert cli.main(["llc", str(other), "--method", flip, *common, "--threads", "1", "--quiet", "--overwrite"]) == 0
    b = RunStore.open(other).dataset("llc")
    np.testing.assert_allclose(ds.llc_mean.sel(step=56), b.llc_mean.sel(step=56), rtol=1e-3)
