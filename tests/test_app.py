"""The app's state (apps/stages.py StagesExplorer), without a browser.

Stores: copies of the tiny training run with a synthetic llc group and stages found on it
(apps/synthetic.py): seed 0 and seed 1 of one config, and one with another learning rate.
"""

import shutil
import sys
from pathlib import Path

import holoviews as hv
import numpy as np
import panel as pn
import pytest
import xarray as xr

sys.path.insert(0, str(Path(__file__).parents[1] / "apps"))
import stages as app  # noqa: E402
import synthetic  # noqa: E402

from devarray.store import RunStore, VarSpec  # noqa: E402


def _copy(src, dst, **config_changes) -> RunStore:
    shutil.copytree(src, dst)
    store = RunStore.open(dst)
    if config_changes:
        cfg = dict(store.config)
        for key, value in config_changes.items():  # "schedule.lr" -> cfg["schedule"]["lr"]
            *parents, leaf = key.split(".")
            node = cfg
            for p in parents:
                node[p] = dict(node[p])
                node = node[p]
            node[leaf] = value
        store.root.attrs.update({"config": cfg, "seed": cfg["seed"]})
        store.consolidate()
    return store


@pytest.fixture(scope="module")
def runs(tiny_store, tmp_path_factory):
    """Three finished stores: lr-tiny-s0, lr-tiny-s1 (same config) and lr-tiny-lr1e-3-s0 (other lr)."""
    root = tmp_path_factory.mktemp("app_stores")
    paths = []
    for name, changes, seed in (
        ("lr-tiny-s0", {}, 0),
        ("lr-tiny-s1", {"seed": 1}, 1),
        ("lr-tiny-lr1e-3-s0", {"schedule.lr": 0.001}, 2),
    ):
        store = _copy(tiny_store, root / f"{name}.zarr", **changes)
        synthetic.write_llc(store, chains=3, draws=40, seed=seed, diverged_chain=1)
        synthetic.write_stages(store)
        paths.append(str(store.path))
    return root, paths


@pytest.fixture
def explorer(runs):
    root, _ = runs
    return app.StagesExplorer([str(root / "*.zarr")])


def test_opens_on_the_stores_grouped_by_config(explorer, runs):
    _, paths = runs
    assert sorted(explorer.paths) == sorted(paths)
    assert explorer.runs == [explorer.paths[0]]  # one run shown until more are chosen
    groups = explorer.config_groups()
    by_name = {app.run_name(p): g for p, g in groups.items()}
    assert by_name["lr-tiny-s0"] == by_name["lr-tiny-s1"] != by_name["lr-tiny-lr1e-3-s0"]
    other = next(p for p in paths if "lr1e-3" in p)
    seed0 = next(p for p in paths if p.endswith("lr-tiny-s0.zarr"))
    explorer.runs = [seed0, other, next(p for p in paths if p.endswith("s1.zarr"))]
    assert "other config" in explorer.legend_label(other) and "schedule.lr: 0.001 (vs 0.003)" in explorer.legend_label(
        other
    )
    assert explorer.legend_label(paths[1]) == "lr-tiny-s1"  # a seed of the same config is not "other"
    assert "config" in explorer.run_label(other) and "seed" in explorer.run_label(other)


def test_run_curves_are_the_done_checkpoints_of_every_shown_run(explorer, runs):
    _, paths = runs
    explorer.runs = paths[:2]
    curves = explorer.run_curves()
    assert list(curves) == paths[:2]
    for p, row in curves.items():
        ev = xr.open_zarr(p, group="eval")
        expected = ev.step.values[ev.done.values & (ev.step.values > 0)]  # log axis: no step 0
        np.testing.assert_array_equal(row["test_loss"].step.values, expected)
        np.testing.assert_allclose(row["test_loss"].values, ev.test_loss.sel(step=expected).values)
        llc = xr.open_zarr(p, group="llc")
        np.testing.assert_allclose(row["llc_mean"].values, llc.llc_mean.sel(step=expected).values)
        assert row["slope"].sizes["step"] > 0 and {"slope_lo", "slope_hi"} <= set(row)


def test_stage_shading_is_warm_for_rising_and_cold_for_falling_llc(explorer):
    from devarray.plots import COLD, WARM

    stages = xr.open_zarr(explorer.lead, group="stages").load()
    spans = [el for el in explorer.stage_shading() if isinstance(el, hv.VSpan)]
    assert len(spans) == stages.sizes["stage_id"]
    for span, direction in zip(spans, stages.stage_direction.values):
        color = hv.Store.lookup_options("bokeh", span, "style").kwargs["color"]
        assert color in (WARM if direction == "increasing" else COLD)


def _figures(view) -> list:
    """The bokeh figures a view draws (rendered as the server would)."""
    from bokeh.models import Plot

    root = pn.panel(view).get_root()
    return [m for m in root.references() if isinstance(m, Plot)]


def test_plots_label_their_axes_from_cf_attrs_on_a_log_step_axis(explorer):
    from bokeh.models import LogScale

    figures = {f.title.text: f for f in _figures(explorer.runs_view)}
    loss = figures["Test loss"]
    assert loss.xaxis[0].axis_label == "training step (steps)"
    assert loss.yaxis[0].axis_label == "test loss (squared error)"
    assert isinstance(loss.x_scale, LogScale)
    assert figures["LLC (band: ± std over chains)"].yaxis[0].axis_label == "LLC"


def test_hover_shows_step_value_and_stage(explorer):
    from bokeh.models import ColumnDataSource, HoverTool

    figures = _figures(explorer.runs_view)
    sources = [m for f in figures for m in f.references() if isinstance(m, ColumnDataSource) and "stage" in m.data]
    assert sources, "no curve carries the stage"
    stages = xr.open_zarr(explorer.lead, group="stages").load()
    src = sources[0]
    expected = 1 + np.searchsorted(stages.boundary_step.values, np.asarray(src.data["step"]), side="right")
    assert [int(s.split()[0]) for s in src.data["stage"]] == expected.tolist()
    tooltips = [t for f in figures for h in f.tools if isinstance(h, HoverTool) for t in (h.tooltips or [])]
    names = {name for name, _ in tooltips}
    assert "training step (steps)" in names and "stage" in names and "test loss (squared error)" in names


def test_stage_table_links_each_stage_to_its_first_and_last_checkpoint(explorer):
    table = explorer.stage_rows()
    stages = xr.open_zarr(explorer.lead, group="stages").load()
    assert list(table.index) == stages.stage_id.values.tolist()
    assert {"Δ LLC", "Δ test loss"} <= set(table.columns)
    steps = np.asarray(explorer.param.step.objects)
    for stage, row in table.iterrows():
        inside = steps[(steps >= row.start) & (steps <= row.end)]
        assert explorer.goto_stage(stage, "first") == inside[0] == explorer.step
        assert explorer.tab == 2  # the checkpoint tab
        assert explorer.goto_stage(stage, "last") == inside[-1] == explorer.step


def test_variable_explorer_offers_every_step_variable_with_widgets_from_its_labels(explorer):
    options = set(explorer.param.variable.objects)
    assert {"eval/test_loss", "llc/llc_trace", "observables/attn_entropy", "params/ln_out.weight"} <= options
    assert not any(v.split("/")[1].startswith("done") for v in options)
    explorer.variable = "observables/attn_entropy"
    assert explorer.selected_dims() == {"layer": [0, 1], "head": [0, 1, 2, 3], "query": ["x", "y"]}  # short: all
    assert explorer.variable_data().sizes["line"] == 16
    explorer.dims = {"layer": [1], "head": [0, 2, 3], "query": ["y"]}
    data = explorer.variable_data()
    assert data.sizes["line"] == 3
    obs = xr.open_zarr(explorer.lead, group="observables")
    done = obs.step.values[obs.done_attn_entropy.values & (obs.step.values > 0)]
    np.testing.assert_allclose(data.isel(line=1).values, obs.attn_entropy.sel(step=done, layer=1, head=2, query="y"))
    names = [w.label for w in explorer.dim_widgets()]
    # labelled from the coordinates' long_name (schemas/observables.yaml), with the dim's name
    assert names[1] == "attention head (head)" and names[2].startswith("query position")
    assert names[0].startswith("layer")


def test_long_dims_get_a_slider_and_widgets_use_long_name(explorer, monkeypatch):
    monkeypatch.setattr(app, "CHOICE_LIMIT", 10)
    explorer.variable = "llc/llc_trace"
    assert explorer.selected_dims() == {"chain": [0, 1, 2], "draw": [0]}  # 40 draws: only the first
    widgets = {w.label: w for w in explorer.dim_widgets()}
    assert set(widgets) == {"SGLD chain (chain)", "SGLD draw (draw)"}
    assert isinstance(widgets["SGLD draw (draw)"], pn.widgets.DiscreteSlider)
    widgets["SGLD draw (draw)"].value = 39
    assert explorer.selected_dims()["draw"] == [39]
    assert explorer.variable_data().sizes["line"] == 3


def test_a_new_observable_appears_after_a_refresh(explorer, runs):
    path = explorer.lead
    store = RunStore.open(path)
    store.add_variables(
        "observables",
        {
            "my_obs": VarSpec(("step",), "float32", {"long_name": "my observable", "units": "1"}),
            "done_my_obs": VarSpec(("step",), "bool", {"long_name": "done", "units": "1"}),
        },
    )
    try:
        assert "observables/my_obs" not in explorer.param.variable.objects
        explorer.refresh()
        assert "observables/my_obs" in explorer.param.variable.objects
        explorer.variable = "observables/my_obs"
        view = explorer.variable_view()  # nothing done yet: says so and what computes it
        assert isinstance(view, pn.pane.Alert) and "no checkpoint of observables/my_obs is done yet" in view.object
        assert "`devarray observe`" in view.object
        store.add_variables(
            "observables",
            {
                "my_obs_2d": VarSpec(("step", "layer"), "float32", {"long_name": "per layer", "units": "1"}),
                "done_my_obs_2d": VarSpec(("step",), "bool", {"long_name": "done", "units": "1"}),
            },
        )
        explorer.refresh()
        explorer.variable = "observables/my_obs_2d"  # extra dims, nothing done: the same message
        assert "no checkpoint of observables/my_obs_2d is done yet" in explorer.variable_view().object
    finally:
        for name in ("my_obs", "done_my_obs", "my_obs_2d", "done_my_obs_2d"):
            if name in store.root["observables"]:
                del store.root[f"observables/{name}"]
        store.consolidate()


def test_each_switch_redraws_each_view_at_most_once(explorer, runs, monkeypatch):
    """A click costs one redraw of each view it changes (a run switch used to redraw the
    checkpoint and variable views twice: once for the run, once for its new step/variable)."""
    _, paths = runs
    calls = {}

    def counting(name):
        real = getattr(app.StagesExplorer, name)

        def wrapped(self, *a, **k):
            calls[name] = calls.get(name, 0) + 1
            return real(self, *a, **k)

        return wrapped

    for name in ("run_curves", "variable_data", "attention_data", "ln_data", "chain_data"):
        monkeypatch.setattr(app.StagesExplorer, name, counting(name))
    views = ("runs_view", "stage_table_view", "variable_view", "attention_view", "ln_view", "sgld_view")
    roots = [pn.panel(getattr(explorer, v)).get_root() for v in views]
    assert len(roots) == len(views)
    steps = explorer.param.step.objects
    variables = list(explorer.param.variable.objects.values())
    shown = {0: {"run_curves"}, 1: {"variable_data"}, 2: {"attention_data", "ln_data", "chain_data"}}
    for tab, change, expected in (
        (0, lambda: setattr(explorer, "runs", [paths[1]]), set().union(*shown.values())),
        (1, lambda: setattr(explorer, "variable", next(v for v in variables if v != explorer.variable)), shown[1]),
        (2, lambda: setattr(explorer, "step", next(s for s in steps if s != explorer.step)), shown[2]),
        (0, lambda: explorer.refresh(), set().union(*shown.values())),
    ):
        explorer.tab = tab
        calls.clear()
        change()
        # the views in sight redraw now; hidden ones once, when their tab is shown
        assert calls == dict.fromkeys(expected & shown[tab], 1), calls
        for other in (0, 1, 2, tab):
            explorer.tab = other
        assert calls == dict.fromkeys(expected, 1), calls


def test_a_new_step_redraws_the_checkpoint_plots_in_place(explorer):
    """Same heads, parameters and chains: a step changes the drawn Bokeh sources and titles,
    it builds no new figures (building them was most of a step's cost)."""
    from bokeh.models import ColumnDataSource, Plot

    explorer.tab = 2  # the checkpoint tab, where the step slider is
    root = pn.panel(explorer.sgld_view).get_root()
    figures = [m for m in root.references() if isinstance(m, Plot)]
    step = next(s for s in explorer.param.step.objects if s != explorer.step)
    explorer.step = step
    assert [m for m in root.references() if isinstance(m, Plot)] == figures
    assert figures[0].title.text.startswith(f"Online LLC estimate of each SGLD chain at step {step} ")
    trace = xr.open_zarr(explorer.lead, group="llc").llc_trace.sel(step=step).values
    drawn = [m.data["llc"] for m in root.references() if isinstance(m, ColumnDataSource) and "llc" in m.data]
    assert sorted(np.asarray(d)[-1] for d in drawn) == pytest.approx(sorted(trace[:, -1]))


def test_another_seed_redraws_the_runs_plots_in_place(explorer, runs):
    from bokeh.models import ColumnDataSource, LegendItem, Plot

    _, paths = runs
    explorer.runs = [paths[0]]
    root = pn.panel(explorer.runs_view).get_root()
    figures = [m for m in root.references() if isinstance(m, Plot)]
    layout = explorer.frames["runs"].key
    explorer.runs = [paths[1]]
    assert explorer.frames["runs"].key == layout  # seeds of one config: the same plots, other data
    assert [m for m in root.references() if isinstance(m, Plot)] == figures
    legend = {i.label.value for i in root.references() if isinstance(i, LegendItem)}
    assert app.run_name(paths[1]) in legend and app.run_name(paths[0]) not in legend
    ev = xr.open_zarr(paths[1], group="eval")
    drawn = next(m.data for m in root.references() if isinstance(m, ColumnDataSource) and "test_loss" in m.data)
    np.testing.assert_allclose(drawn["test_loss"], ev.test_loss.sel(step=drawn["step"]).values, rtol=1e-6)
    assert set(drawn["run"]) == {app.run_name(paths[1])}


def test_checkpoint_view_snaps_to_stored_checkpoints(explorer):
    steps = RunStore.open(explorer.lead, mode="r").done_steps("params").tolist()
    assert explorer.param.step.objects == steps and explorer.step == steps[-1]
    with pytest.raises(ValueError):
        explorer.step = steps[-1] - 1  # not a checkpoint
    explorer.step = steps[3]
    a = explorer.attention_data()
    assert a.dims == ("layer", "head", "query_pos", "key_pos")
    layout = explorer.attention_view()[1].object
    assert len(layout) == a.sizes["layer"] * a.sizes["head"]  # one heatmap per head
    assert all(isinstance(el[()], hv.Image) for el in layout)  # DynamicMaps: drawn in place at each step
    assert set(explorer.ln_data()) == {v for v in xr.open_zarr(explorer.lead, group="params").data_vars if "ln" in v}


def test_chain_diagnostics_read_one_checkpoint_slab(explorer):
    explorer.step = explorer.param.step.objects[5]
    trace, table, summary = explorer.chain_data()
    llc = xr.open_zarr(explorer.lead, group="llc")
    np.testing.assert_array_equal(trace.values, llc.llc_trace.sel(step=explorer.step).values)
    assert table["diverged"].tolist() == [False, True, False]
    assert {"not_converged", "escaped", "llc_ess", "split R-hat"} <= set(table.columns)
    assert np.isclose(summary["llc_mean"], float(llc.llc_mean.sel(step=explorer.step)))
    labels = [c.label for c in explorer.sgld_view()[0].object[()]]
    assert "chain 1 (diverged)" in labels


def test_a_corrupt_chunk_spoils_only_its_checkpoint(runs, tmp_path):
    _, paths = runs
    path = tmp_path / "corrupt.zarr"
    shutil.copytree(paths[0], path)
    explorer = app.StagesExplorer([str(path)])
    bad, good = explorer.param.step.objects[4], explorer.param.step.objects[6]
    i = RunStore.open(path, mode="r").index_of("llc", bad)
    (path / "llc" / "llc_trace" / "c" / str(i) / "0" / "0").write_bytes(b"not a chunk")
    explorer.step = bad
    assert isinstance(explorer.sgld_view(), pn.pane.Alert)
    explorer.step = good  # the traces of other checkpoints are other chunks: still readable
    assert isinstance(explorer.sgld_view(), pn.Column)
    assert isinstance(explorer.runs_view(), pn.Column)


def test_half_written_stores_show_why_and_the_rest_works(tiny_store, tmp_path):
    plain = tmp_path / "plain.zarr"  # trained only: no llc, no stages
    store = _copy(tiny_store, plain)
    alien = _copy(tiny_store, tmp_path / "alien.zarr", setting="no-such-setting")
    ex = app.StagesExplorer([str(plain), str(alien.path)])
    ex.runs = [str(plain)]
    view = ex.runs_view()
    assert isinstance(view, pn.Column)
    notes = " ".join(str(getattr(o, "object", "")) for o in view.objects)
    assert "no `llc` group yet" in notes and "devarray llc" in notes
    assert isinstance(ex.sgld_view(), pn.pane.Alert) and isinstance(ex.stage_table_view(), pn.pane.Alert)
    assert isinstance(ex.attention_view(), pn.Column)
    ex.runs = [str(alien.path)]
    alert = ex.attention_view()
    assert isinstance(alert, pn.pane.Alert) and "no-such-setting" in alert.object
    assert isinstance(ex.variable_view(), pn.Column) and isinstance(ex.ln_view(), pn.Column)
    # training still running: the last checkpoint not done yet, then written while the app is open
    ex.runs = [str(plain)]
    last = store.steps("params")[-1]
    store.array("params", "done")[-1] = False
    ex.refresh()
    assert last not in ex.param.step.objects
    store.mark_done("params", last)
    ex.poll()  # the periodic callback notices the new checkpoint
    assert last in ex.param.step.objects and ex.refreshed >= 2


def test_without_stores_the_page_says_what_to_do(tmp_path):
    layout = app.build_app([str(tmp_path / "*.zarr")])
    assert "devarray demo" in layout[0].object


def test_build_app_is_a_template_titled_by_settings(runs):
    root, _ = runs
    page = app.build_app([str(root / "*.zarr")])
    assert isinstance(page, pn.template.BaseTemplate) and "(lr)" in page.title


def test_serve_prints_its_address(runs, capsys):
    from devarray.app_server import serve

    root, _ = runs
    server = serve([str(root / "*.zarr")], start=False)
    out = capsys.readouterr().out
    assert f":{server.port}/stages" in out


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """A tiny language-model run with a synthetic llc group and stages: the app knows no setting."""
    from devarray.train import make_config, train

    path = tmp_path_factory.mktemp("app_lm") / "lm-tiny-s0.zarr"
    train(path, make_config("lm", "tiny", seed=0), progress=False)
    store = RunStore.open(path)
    synthetic.write_llc(store, chains=3, draws=40, seed=0)
    synthetic.write_stages(store)
    return path


def test_a_language_run_is_served_through_the_setting_seam(lm_run):
    from devarray.checkpoints import load_model
    from devarray.settings import setting_for

    ex = app.StagesExplorer([str(lm_run)])
    views = (ex.runs_view, ex.stage_table_view, ex.variable_view, ex.attention_view, ex.ln_view, ex.sgld_view)
    for view in views:
        assert not isinstance(view(), pn.pane.Alert), view().object
    store = RunStore.open(lm_run, mode="r")
    a = ex.attention_data()
    expected = setting_for(store.config).attention(load_model(store, ex.step), store.config)
    xr.testing.assert_identical(a, expected)
    # the axes are the probe context's decoded tokens (strings), one heatmap per layer and head
    assert a.query_pos.dtype.kind in "UO" and a.sizes["layer"] == store.config["model"]["n_layers"]
    layout = ex.attention_view()[1].object
    assert len(layout) == a.sizes["layer"] * a.sizes["head"]
    ticks = dict(layout[0][()].opts.get().kwargs["yticks"])
    assert list(ticks.values()) == [str(v) for v in a.query_pos.values] and ticks[0].endswith("<bos>")
    assert "eval/test_loss" in ex.param.variable.objects.values()


def test_refined_llcs_are_a_variable_with_a_restriction_dim(tiny_store, tmp_path):
    # a real refined llc group (issue 17): the explorer offers a restriction widget from its
    # labels, the runs view and chain view keep to restriction "all"
    from devarray.pipelines import llc

    from devarray.slt import sgld_settings

    store = _copy(tiny_store, tmp_path / "lr-tiny-s0.zarr")
    s = sgld_settings(batch_size=32, num_chains=2, num_draws=12, epsilon=1e-3, beta_tilde=0.01, gamma_tilde=0.01)
    llc.run(store.path, s, dataset_size=256, steps=[56, 100], restrictions=["head 0.0", "all"], progress=False)
    explorer = app.StagesExplorer([str(store.path)])
    explorer.variable = "llc/llc_mean"
    assert explorer.selected_dims() == {"restriction": ["head 0.0", "all"]}
    assert [w.label for w in explorer.dim_widgets()] == ["weight restriction (restriction)"]
    data = explorer.variable_data()
    assert data.sizes["line"] == 2
    ref = xr.open_zarr(store.path, group="llc").llc_mean
    np.testing.assert_array_equal(data.isel(line=0).values, ref.sel(step=[56, 100], restriction="head 0.0"))
    explorer.dims = {"restriction": ["head 0.0"]}
    assert explorer.variable_data().sizes["line"] == 1
    curve = explorer.curve_data(str(store.path), "llc", "llc_mean")
    np.testing.assert_array_equal(curve.values, ref.sel(step=[56, 100], restriction="all"))
