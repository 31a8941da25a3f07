"""Explore run stores: loss, LLC and stages over training, and any observable beside them.

    panel serve apps/stages.py                       # every store in stores/
    panel serve apps/stages.py --args stores/lr-quick-s*.zarr

Reads stores only (through xarray); it never computes or writes. Pick a run, see the paper's
figure 1 panels (test loss, LLC with its band, weight norm over log step with the stages
shaded), the stage table, and any variable of the ``observables`` group, sliced along its
other dims, on the same step axis with the same stage shading.
"""

from __future__ import annotations

import glob
import os
import sys

import holoviews as hv
import numpy as np
import panel as pn
import xarray as xr

from devarray.plots import stage_overlay

hv.extension("bokeh")
pn.extension("tabulator")

STORES = os.environ.get("DEVARRAY_STORES", "stores/*.zarr")


def store_paths(args: list[str] | None = None) -> list[str]:
    args = args if args is not None else sys.argv[1:]
    paths = [p for a in (args or [STORES]) for p in sorted(glob.glob(a))]
    return [p for p in paths if os.path.exists(os.path.join(p, "zarr.json"))]


def _group(path: str, group: str) -> xr.Dataset | None:
    try:
        ds = xr.open_zarr(path, group=group)
    except (FileNotFoundError, KeyError, ValueError):
        return None
    return ds.load()


def _done(ds: xr.Dataset | None, flag: str = "done") -> xr.Dataset | None:
    if ds is None or flag not in ds:
        return ds
    return ds.isel(step=ds[flag].values.astype(bool))


def load_run(path: str) -> dict[str, xr.Dataset | None]:
    """The groups the app shows, restricted to done checkpoints."""
    return {
        "eval": _done(_group(path, "eval")),
        "llc": _done(_group(path, "llc")),
        "stages": _group(path, "stages"),
        "observables": _group(path, "observables"),
    }


def stage_spans(stages: xr.Dataset | None) -> hv.Overlay | None:
    """Shaded stages and boundary lines: the same overlay as the PNG figures."""
    if stages is None or "stage_start" not in stages:
        return None
    return stage_overlay(stages)


def curve(da: xr.DataArray, label: str | None = None) -> hv.Curve:
    da = da.where(da.step > 0, drop=True)  # log step axis
    name = da.attrs.get("long_name", da.name)
    return hv.Curve((da.step.values, da.values), "step", (str(da.name), name), label=label or name).opts(
        logx=True, responsive=True, height=220, tools=["hover"])


def with_band(mean: xr.DataArray, std: xr.DataArray) -> hv.Overlay:
    m = mean.where(mean.step > 0, drop=True)
    s = std.sel(step=m.step)
    band = hv.Area((m.step.values, (m - s).values, (m + s).values), "step", [str(m.name), "upper"]).opts(
        alpha=0.25, logx=True, line_width=0)
    return band * curve(m)


def main_panels(run: dict) -> list:
    shade = stage_spans(run["stages"])
    panels = []
    ev, llc = run["eval"], run["llc"]
    items = []
    if ev is not None and ev.sizes.get("step", 0):
        items.append(curve(ev.test_loss))
    if llc is not None and llc.sizes.get("step", 0):
        items.append(with_band(llc.llc_mean, llc.llc_std))
    if ev is not None and ev.sizes.get("step", 0):
        items.append(curve(ev.weight_norm))
    for item in items:
        panels.append((shade * item) if shade is not None else item)
    return panels


def stage_table(stages: xr.Dataset | None) -> pn.pane.PaneBase:
    if stages is None or "stage_start" not in stages:
        return pn.pane.Markdown("*No stages yet: run `devarray stages STORE`.*")
    df = xr.Dataset({k: stages[k] for k in ("stage_start", "stage_end", "stage_direction") if k in stages}).to_dataframe()
    return pn.widgets.Tabulator(df, disabled=True, height=220, sizing_mode="stretch_width")


def observable_names(obs: xr.Dataset | None) -> list[str]:
    if obs is None:
        return []
    return sorted(v for v in obs.data_vars if not v.startswith("done_") and obs[v].dtype.kind in "fiub")


def observable_plot(obs: xr.Dataset, name: str, stages: xr.Dataset | None, selection: dict) -> hv.Overlay:
    """Every line of variable ``name`` over step, for the selected values of its other dims."""
    flag = f"done_{obs[name].attrs.get('observable', name)}"
    da = _done(obs, flag)[name] if flag in obs else obs[name]
    for d, chosen in selection.items():  # widget values are strings; match them to the coordinate
        if d in da.dims and chosen:
            keep = [i for i, v in enumerate(da[d].values) if str(v) in set(map(str, chosen))]
            da = da.isel({d: keep})
    other = [d for d in da.dims if d != "step"]
    stacked = da.stack(line=other) if other else da.expand_dims(line=[name])
    labels = [" ".join(f"{d}={v}" for d, v in zip(other, np.atleast_1d(key))) if other else name
              for key in stacked.line.values]
    lines = [curve(stacked.isel(line=i).rename(name), label=labels[i]) for i in range(stacked.sizes["line"])]
    plot = hv.Overlay(lines).opts(legend_position="right", responsive=True, height=300)
    shade = stage_spans(stages)
    return shade * plot if shade is not None else plot


def build_app(paths: list[str]) -> pn.template.BaseTemplate | pn.Column:
    if not paths:
        return pn.Column(pn.pane.Markdown(
            "## No run stores found\nTrain one: `devarray demo` or `devarray train lr --preset quick`, "
            f"then reload (looked for `{STORES}`)."))
    run_select = pn.widgets.Select(label="run", options=paths, value=paths[0])
    obs_select = pn.widgets.Select(label="observable", options=[])
    dim_box = pn.Column()
    main = pn.Column(sizing_mode="stretch_width")
    table = pn.Column(sizing_mode="stretch_width")
    obs_pane = pn.Column(sizing_mode="stretch_width")
    state: dict = {}

    def refresh_observable(*_):
        run = state["run"]
        name = obs_select.value
        if not name:
            obs_pane[:] = [pn.pane.Markdown("*No observables yet: run `devarray observe STORE`.*")]
            return
        selection = {w.label: w.value for w in dim_box if w.value}
        obs_pane[:] = [pn.pane.HoloViews(observable_plot(run["observables"], name, run["stages"], selection),
                                         sizing_mode="stretch_width")]

    def refresh_dims(*_):
        run = state["run"]
        dim_box.clear()
        if obs_select.value:
            da = run["observables"][obs_select.value]
            for d in da.dims:
                if d != "step" and da.sizes[d] > 1:
                    values = list(map(str, da[d].values)) if d in da.coords else list(map(str, range(da.sizes[d])))
                    widget = pn.widgets.MultiChoice(label=d, options=values, value=[])
                    widget.param.watch(refresh_observable, "value")
                    dim_box.append(widget)
        refresh_observable()

    def refresh_run(*_):
        run = load_run(run_select.value)
        state["run"] = run
        main[:] = [pn.pane.HoloViews(p, sizing_mode="stretch_width") for p in main_panels(run)] or [
            pn.pane.Markdown("*Nothing written yet.*")]
        table[:] = [stage_table(run["stages"])]
        names = observable_names(run["observables"])
        obs_select.options = names
        obs_select.value = "attn_entropy" if "attn_entropy" in names else (names[0] if names else None)
        refresh_dims()

    run_select.param.watch(refresh_run, "value")
    obs_select.param.watch(refresh_dims, "value")
    refresh_run()
    return pn.template.FastListTemplate(
        title="devarray — developmental stages",
        sidebar=[run_select, obs_select, dim_box],
        main=[main, pn.pane.Markdown("### Stages"), table, pn.pane.Markdown("### Observable"), obs_pane],
    )


if __name__.startswith("bokeh"):  # `panel serve apps/stages.py`
    build_app(store_paths()).servable()
