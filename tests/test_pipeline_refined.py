"""The llc pipeline and command with refined LLCs (issue 17): restriction and data dims in the
store, the plain layout unchanged, bad names refused in one line with nothing written."""

import shutil

import numpy as np
import pytest
import xarray as xr
from devarray.pipelines import llc

from devarray import cli
from devarray.checkpoints import load_model
from devarray.settings import setting_for
from devarray.slt import estimate_llc, sgld_settings
from devarray.store import RunStore, StoreError

SETTINGS = sgld_settings(
    batch_size=32, num_chains=2, num_draws=12, num_burnin_steps=4, epsilon=1e-3, beta_tilde=0.01, gamma_tilde=0.01
)
RUN = dict(dataset_size=256, progress=False, threads=1)


@pytest.fixture
def store(tmp_path, tiny_store):
    shutil.copytree(tiny_store, tmp_path / "run.zarr")
    return tmp_path / "run.zarr"


def test_restrict_heads_writes_a_restriction_dim_with_the_estimator_numbers(store):
    llc.run(store, SETTINGS, steps=[56], restrictions=["heads", "all"], method="loop", **RUN)
    RunStore.open(store).validate()  # the refined layout follows schemas/llc.yaml
    ds = xr.open_zarr(store, group="llc")
    names = [f"head {i}.{h}" for i in range(2) for h in range(4)] + ["all"]
    assert list(ds.restriction.values) == names
    assert ds.llc_mean.dims == ("step", "restriction") and ds.loss.dims == ("step", "restriction", "chain", "draw")
    assert ds.attrs["restrictions"] == names and ds.attrs["restriction_size"] == [4096] * 8 + [51717]
    # the stored numbers are estimate_llc's for the same stack of restrictions, bitwise
    rs = RunStore.open(store)
    setting = setting_for(rs.config)
    model = load_model(rs, 56)
    model.fused_attention = True
    vocab = setting.restrictions(model)
    direct = estimate_llc(
        model,
        setting.loss,
        setting.sgld_dataset(rs.config, 256),
        SETTINGS,
        method="loop",
        warn=False,
        restrictions=[vocab[n] for n in names],
    )
    stored = ds.llc_mean.sel(step=56).values
    assert stored.tobytes() == direct.llc_mean.values.astype(np.float32).tobytes()
    assert ds.attrs["method"] == "loop"


def test_the_plain_run_keeps_its_layout_and_fingerprint(store):
    rs = RunStore.open(store)
    attrs = llc.sampler_attrs(rs, SETTINGS, 0, 256, None)
    assert not {"restrictions", "data", "sampler", "rmsprop_alpha"} & set(attrs)
    llc.run(store, SETTINGS, steps=[0], **RUN)
    ds = xr.open_zarr(store, group="llc")
    assert ds.llc_mean.dims == ("step",) and "restriction" not in ds.dims
    # a refined run into a plain group is other settings: refused, nothing changed
    with pytest.raises(StoreError, match="other settings.*restriction"):
        llc.run(store, SETTINGS, steps=[0], restrictions=["embed"], **RUN)
    assert xr.open_zarr(store, group="llc").llc_mean.dims == ("step",)


def test_data_dim_and_train_data_is_the_plain_run(store, tmp_path):
    plain = tmp_path / "plain.zarr"
    shutil.copytree(store, plain)
    llc.run(plain, SETTINGS, steps=[56], **RUN)
    llc.run(store, SETTINGS, steps=[56], data=["train", "ood-inputs-g10"], **RUN)
    ds = xr.open_zarr(store, group="llc")
    assert list(ds.data.values) == ["train", "ood-inputs-g10"] and ds.llc_mean.dims == ("step", "data")
    same = xr.open_zarr(plain, group="llc").llc_mean.sel(step=56).values
    assert ds.llc_mean.sel(step=56, data="train").values.tobytes() == same.tobytes()
    # larger inputs, larger loss at w*: the OOD set really is another distribution
    assert float(ds.init_loss.sel(step=56, data="ood-inputs-g10")) > 2 * float(ds.init_loss.sel(step=56, data="train"))


def test_restriction_and_data_together_and_the_rmsprop_sampler_in_attrs(store):
    s = sgld_settings(
        batch_size=32,
        num_chains=2,
        num_draws=12,
        epsilon=1e-3,
        beta_tilde=0.01,
        gamma_tilde=0.01,
        sampler="rmsprop_sgld",
    )
    llc.run(store, s, steps=[100], restrictions=["layer 0", "unembed"], data=["ood-tasks-g0.1", "train"], **RUN)
    RunStore.open(store).validate()
    ds = xr.open_zarr(store, group="llc")
    assert ds.loss.dims == ("step", "restriction", "data", "chain", "draw")
    assert ds.attrs["sampler"] == "rmsprop_sgld" and ds.attrs["rmsprop_alpha"] == 0.99
    assert np.isfinite(ds.llc_mean.sel(step=100).values).all()
    table = llc.summary_table(store)
    assert "layer 0" in table and "ood-tasks-g0.1" in table and len(table.splitlines()) == 1 + 4


def _one_line_exit_2(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--restrict", "head 0.9"], "unknown restriction 'head 0.9'.*choose from heads, layers, all, embed"),
        (["--restrict", "heads,neck"], "unknown restriction 'neck'"),
        (["--data", "code"], "unknown SGLD dataset 'code'.*train, ood-inputs-g<G>, ood-tasks-g<G>"),
        (["--data", "ood-inputs-g-1"], "unknown SGLD dataset 'ood-inputs-g-1'"),
        (["--sampler", "sghmc"], "invalid choice: 'sghmc'.*rmsprop_sgld"),
        (["--rmsprop-alpha", "0.9"], "add --sampler rmsprop_sgld"),
        (["--method", "shared"], "--method shared needs"),  # the regression setting stacks nothing
        (["--method", "shared", "--restrict", "heads"], "--method shared needs"),
        (["--sampler", "rmsprop_sgld", "--rmsprop-alpha", "1"], "--rmsprop-alpha: 1 is not a number in \\[0, 1\\)"),
    ],
)
def test_bad_refined_options_one_line_nothing_written(store, capsys, extra, expect):
    err = _one_line_exit_2(["llc", str(store), "--preset", "tiny", "--quiet", *extra], capsys)
    assert __import__("re").search(expect, err), err
    assert not RunStore.open(store).has_group("llc")


def test_stages_and_figures_of_a_refined_group(store, tmp_path):
    # with "all" among the restrictions the stages divide the ordinary LLC curve; the refined
    # figure draws a panel per layer's heads and one for the rest, each shaded by stage
    import holoviews as hv
    from devarray.pipelines import stages

    from devarray import plots

    steps = [0, 1, 3, 8, 22, 56, 100]
    llc.run(store, SETTINGS, steps=steps, restrictions=["head 0.0", "head 1.2", "all"], **RUN)
    got = stages.compute(RunStore.open(store))
    assert got.attrs["variable"] == "llc_mean" and got.attrs["source_checkpoints"] == len(steps)
    ds = llc.done(xr.open_zarr(store, group="llc")).load()
    st = stages.compute(RunStore.open(store))
    fig = plots.refined_figure(ds, st)
    labels = [[e.label for e in panel if isinstance(e, hv.Curve)] for panel in fig]
    assert labels == [["head 0.0"], ["head 1.2"], ["all"]]
    assert all(any(isinstance(e, hv.VSpan) for e in panel) for panel in fig)
    out = tmp_path / "refined.png"
    assert cli.main(["figure", str(store), "--refined", "-o", str(out)]) == 0 and out.read_bytes()[:4] == b"\x89PNG"
    curves, _, _ = cli.figure_inputs(store)  # the plain figure draws restriction "all"
    np.testing.assert_array_equal(curves.llc_mean.sel(step=steps), ds.llc_mean.sel(restriction="all"))
    with pytest.raises(ValueError, match="restriction dim"):
        plots.refined_figure(ds.sel(restriction="all"))


def test_heads_of_the_language_model_run_on_the_shared_path_and_say_so(tmp_path):
    from devarray.train import make_config, train

    path = tmp_path / "lm.zarr"
    train(path, make_config("lm", "tiny", seed=0, num_steps=8), progress=False)
    llc.run(path, SETTINGS, restrictions=["heads"], **RUN)
    ds = xr.open_zarr(path, group="llc")
    assert ds.attrs["method"] == "shared" and ds.attrs["attention"] == "sdpa"
    assert np.isfinite(ds.llc_mean.values).all() and ds.llc_mean.dims == ("step", "restriction")
    # with "all" beside the heads, the heads share and "all" runs alone
    names = list(ds.restriction.values) + ["all"]
    attrs = llc.sampler_attrs(RunStore.open(path), SETTINGS, 0, 256, None, restrictions=names)
    assert attrs["method"].startswith("shared+") and attrs["attention"].startswith("sdpa")  # what each part ran
    # redo reads the arguments back from the attrs and takes the same path (the fingerprint's "method")
    for stored in (dict(ds.attrs), attrs):
        assert llc.sampler_attrs(RunStore.open(path), **llc.settings_from_attrs(stored))["method"] == stored["method"]
