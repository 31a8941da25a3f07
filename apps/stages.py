"""Look at training runs: loss, LLC and stages over training, any stored variable, any checkpoint.

    panel serve apps/stages.py                         # every store in stores/
    panel serve apps/stages.py --args stores/lr-quick-s*.zarr
    devarray app stores/lr-quick-s*.zarr               # the same server; prints its address

It reads stores only (through xarray, lazily: only what is shown is read). The one computation is
a forward pass of the shown checkpoint on its setting's probe context, for the attention view;
it goes through the setting seam (``Setting.attention``), so every setting is served alike.

- **Runs**: test loss and LLC (± its spread over chains) over log step with the stages of
  figure 1 (warm hues: LLC rising, cold: falling; dashed lines: boundaries), the GP slope below;
  several runs overlaid (seeds of one config: figure B.3); the stage table links each stage to
  its first and last checkpoint.
- **Variables**: any variable of any group with a ``step`` dim, sliced along its other dims.
- **Checkpoint**: for one stored checkpoint, every head's attention pattern on the probe
  context, the layer-norm parameters and the SGLD chains (LLC traces, flags, R-hat, ESS).

State lives in :class:`StagesExplorer` (a ``pn.viewable.Viewer``): set its parameters from
Python or the widgets and read its data methods; the views only draw what those return.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import sys
import time
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr

from devarray.plots import stage_colors, stage_overlay

hv.extension("bokeh", logo=False)
# inline: every JS/CSS resource is embedded in the page or served by this server, none from a CDN,
# so the app works offline (it is often run on a compute node without internet access)
pn.extension("tabulator", inline=True)
pn.config.inline = True

STORES = os.environ.get("DEVARRAY_STORES", "stores/*.zarr")
MAX_LINES = 40  # more lines than this make an unreadable plot; the explorer asks to narrow the selection
CHOICE_LIMIT = 200  # dims longer than this (e.g. 5,000 draws) get a slider instead of a multi-choice
POLL_SECONDS = 15
STEP = hv.Dimension("step", label="training step", unit="steps")
RUN_COLORS = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22", "#ff7f0e")
# groups of the variable explorer in the order a researcher reads them; others follow sorted
GROUP_ORDER = ("eval", "llc", "hessian", "observables", "stages", "params", "optimizer")


class MissingData(LookupError):
    """What a panel needs is not (yet) in the store: the message says what to run."""


# ---------------------------------------------------------------------------------- store reads
def store_paths(args: list[str] | None = None) -> list[str]:
    """Stores matching the paths/globs in ``args`` (default: ``sys.argv[1:]``, else ``stores/``)."""
    args = args if args is not None else sys.argv[1:]
    paths = [p for a in (args or [STORES]) for p in sorted(glob.glob(str(a)))]
    return list(dict.fromkeys(os.path.normpath(p) for p in paths if os.path.exists(os.path.join(p, "zarr.json"))))


def run_name(path: str) -> str:
    return Path(path).name.removesuffix(".zarr")


def store_token(path: str) -> tuple:
    """Changes when the store gains a group, a variable or a done checkpoint: the modification
    times of the group metadata and of the done flags' chunk folders (a new chunk is a new file).
    Cheap (a few dozen stats), so the app can poll it and reads can be cached under it."""
    stamps = []
    with os.scandir(path) as groups:
        for g in groups:
            if not g.is_dir():
                continue
            for meta in (os.path.join(g.path, "zarr.json"), g.path):
                stamps.append(os.stat(meta).st_mtime_ns if os.path.exists(meta) else 0)
            with os.scandir(g.path) as arrays:
                for a in arrays:
                    if a.name.startswith("done") and os.path.isdir(os.path.join(a.path, "c")):
                        stamps.append(os.stat(os.path.join(a.path, "c")).st_mtime_ns)
    return (os.stat(os.path.join(path, "zarr.json")).st_mtime_ns, *stamps)


# Cached under the store's token: reused across sessions and widgets, re-read after the store changes.
@pn.cache(max_items=128)
def _run_store(path: str, token: tuple):
    """The store, opened once: it keeps its arrays' metadata, so a checkpoint's weights are read
    in half the time of a fresh open."""
    from devarray.store import RunStore

    return RunStore.open(path, mode="r", validate=False)  # clear errors for foreign or newer stores


@pn.cache(max_items=128)
def _store_info(path: str, token: tuple) -> dict:
    store = _run_store(path, token)
    return {"config": dict(store.config), "groups": store.groups()}


@pn.cache(max_items=512)
def _dataset(path: str, group: str, token: tuple) -> xr.Dataset:
    # chunks=None: xarray's lazily indexed arrays, nothing read yet, and a selection reads only
    # its chunks in one zarr call. Not dask: with one checkpoint per chunk, a dask graph per
    # variable (190 tasks) cost more than the reads (1 s to open the llc group, 0.1 s without).
    # Live metadata, not the consolidated copy, since a pipeline may be adding variables.
    return xr.open_zarr(path, group=group, consolidated=False, chunks=None)


@pn.cache(max_items=128)
def _loaded(path: str, group: str, token: tuple) -> xr.Dataset:
    """A small group read whole (stages: every plot's shading and hover read it)."""
    return _dataset(path, group, token).load()


@pn.cache(max_items=512)
def _done_steps(path: str, group: str, flag: str, token: tuple) -> np.ndarray:
    ds = _dataset(path, group, token)
    return ds.step.values[np.asarray(ds[flag].values, dtype=bool)]


@pn.cache(max_items=256)
def _curve(path: str, group: str, name: str, flag: str, token: tuple) -> xr.DataArray:
    """A run's curve at its done checkpoints (step > 0), read once per store state: a run shown
    again (or by another session) costs no read."""
    steps = _done_steps(path, group, flag, token) if flag in _dataset(path, group, token) else None
    da = _plain(_dataset(path, group, token))[name]
    steps = da.step.values if steps is None else steps
    return da.sel(step=steps[steps > 0]).load()


@pn.cache(max_items=64)
def _attention(path: str, step: int, token: tuple) -> xr.DataArray:
    from devarray.checkpoints import load_model
    from devarray.settings import setting_for

    store = _run_store(path, token)
    setting = setting_for(store.config)
    return setting.attention(load_model(store, step), store.config)


def _without_seeds(cfg):
    if isinstance(cfg, dict):
        return {k: _without_seeds(v) for k, v in cfg.items() if k != "seed"}
    return cfg


def _flat(cfg, prefix: str = "") -> dict:
    if not isinstance(cfg, dict):
        return {prefix: cfg}
    out = {}
    for k, v in cfg.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
    return out


def config_difference(cfg: dict, reference: dict) -> list[str]:
    """``key: value`` for every config entry (seeds aside) where ``cfg`` differs from ``reference``."""
    a, b = _flat(_without_seeds(cfg)), _flat(_without_seeds(reference))
    return [f"{k}: {a.get(k)} (vs {b.get(k)})" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _describe(e: Exception) -> str:
    if isinstance(e, (MissingData, LookupError)) and not isinstance(e, KeyError):
        return str(e)
    if isinstance(e, KeyError):
        return f"not in the store: {e}"
    # a corrupt or half-written chunk: zarr's codecs raise all sorts; name it and move on
    return f"{type(e).__name__}: {e}"


def guarded(title: str):
    """A view that fails shows why in its place (a missing group, a corrupt chunk, an unknown
    setting), and every other view keeps working."""

    def wrap(method):
        @functools.wraps(method)
        def view(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any read error becomes a message, never a dead page
                return pn.pane.Alert(f"**{title}** — {_describe(e)}", alert_type="warning", sizing_mode="stretch_width")

        return view

    return wrap


def _plain(ds: xr.Dataset) -> xr.Dataset:
    """A refined llc group (restriction, data dims) at its ordinary LLC: restriction "all" and data
    "train" where it has them, else the first label; other groups unchanged."""
    for dim, plain in (("restriction", "all"), ("data", "train")):
        if dim in ds.dims:
            ds = ds.sel({dim: plain}) if plain in ds[dim].values else ds.isel({dim: 0})
    return ds


def _dim(da: xr.DataArray, name: str | None = None) -> hv.Dimension:
    """An axis named from the variable's CF attributes (long_name and units)."""
    units = da.attrs.get("units")
    return hv.Dimension(
        name or str(da.name),
        label=da.attrs.get("long_name", str(da.name)),
        unit=None if units in (None, "", "1") else units,
    )


def _dim_label(ds: xr.Dataset, dim: str) -> str:
    attrs = ds[dim].attrs if dim in ds.variables else {}
    long_name = attrs.get("long_name")
    units = attrs.get("units")
    label = f"{long_name} ({dim})" if long_name and long_name != dim else dim
    return f"{label} [{units}]" if units not in (None, "", "1") else label


def _labels(ds: xr.Dataset, dim: str) -> list:
    return ds[dim].values.tolist() if dim in ds.variables else list(range(ds.sizes[dim]))


class Frame:
    """One view's data (``(step, what its data method returned)``), and how its drawn panes show
    new data.

    ``key`` is the data's layout (plot elements, heads and tokens, parameter names, chain labels;
    ``LAYOUTS``): while it stays
    the same, new data goes to the drawn plots through ``pipe`` (HoloViews DynamicMaps update their
    Bokeh sources in place) and to ``show`` (texts, tables), instead of new plots being built."""

    def __init__(self, key, data):
        self.key, self.data = key, data
        self.pipe = hv.streams.Pipe(data=data)
        self.show: list = []  # callables of the data, set by the view that draws it

    def send(self, data) -> None:
        self.data = data
        self.pipe.send(data)
        for show in self.show:
            show(data)


# ---------------------------------------------------------------------------------- the state
class StagesExplorer(pn.viewable.Viewer):
    """The app's state. ``runs[0]`` is the *lead* run: its stages shade the plots, its variables
    fill the explorer and its checkpoints the checkpoint view; the other runs are overlaid."""

    runs = param.ListSelector(default=[], objects=[], doc="Stores shown; the first leads.")
    variable = param.Selector(
        default=None, objects=[], allow_None=True, check_on_set=True, doc="'group/name' of the explored variable."
    )
    dims = param.Dict(default={}, doc="Labels chosen along each non-step dim of the variable.")
    step = param.Selector(
        default=None,
        objects=[],
        allow_None=True,
        check_on_set=True,
        doc="Checkpoint of the checkpoint view (one of the stored ones).",
    )
    tab = param.Integer(default=0, bounds=(0, 2), doc="Shown tab: runs, variables, checkpoint.")
    refreshed = param.Integer(default=0, doc="Bumped by refresh(); views redraw.")
    lead_revision = param.Integer(
        default=0, doc="Bumped with the lead run's variable and step in one update: its views redraw once."
    )
    message = param.String(default="", doc="Last refresh's note.")
    # bumped when the runs or variables tab is shown with something new to draw (see _inputs_changed)
    runs_revision = param.Integer(default=0, precedence=-1)
    variables_revision = param.Integer(default=0, precedence=-1)
    # bumped when a view drawn from a Frame needs a new layout (more runs, another model, an
    # error to show); new data of the same layout updates its plots in place
    runs_layout = param.Integer(default=0, precedence=-1)
    attention_layout = param.Integer(default=0, precedence=-1)
    ln_layout = param.Integer(default=0, precedence=-1)
    sgld_layout = param.Integer(default=0, precedence=-1)

    def __init__(self, patterns: list[str] | None = None, **params):
        super().__init__(**params)
        self.patterns = list(patterns) if patterns else [STORES]
        self.tokens: dict[str, tuple] = {}
        self.frames: dict[str, Frame] = {}
        self.stale: set[int] = set()  # tabs whose views wait to be shown before they redraw
        self._scan()
        if not self.runs:
            self.runs = self.paths[:1]
        self.param.watch(self._lead_changed, "runs")
        self.param.watch(self._inputs_changed, ["tab", *set().union(*TAB_INPUTS)])
        self._lead_changed()
        for tab in FRAMES:
            self._update_frames(tab)
        self.stale.clear()  # the first page draws every tab from this state

    # ----------------------------------------------------------------- runs and refresh
    @property
    def paths(self) -> list[str]:
        return list(self.tokens)

    @property
    def lead(self) -> str | None:
        return self.runs[0] if self.runs else None

    def _scan(self) -> None:
        tokens = {}
        for p in store_paths(self.patterns):
            try:
                tokens[p] = store_token(p)
            except OSError:
                continue  # vanished between glob and stat
        self.tokens = tokens
        self.param.runs.objects = {self.run_label(p): p for p in tokens}
        self.runs = [p for p in self.runs if p in tokens]

    def info(self, path: str) -> dict:
        return _store_info(path, self.tokens[path])

    def dataset(self, path: str, group: str) -> xr.Dataset:
        info = self.info(path)
        if group not in info["groups"]:
            cmd = {"eval": "train", "params": "train"}.get(group, group)
            raise MissingData(f"{run_name(path)} has no `{group}` group yet: run `devarray {cmd} {path}`")
        return _dataset(path, group, self.tokens[path])

    def done_steps(self, path: str, group: str, flag: str = "done") -> np.ndarray:
        ds = self.dataset(path, group)
        if flag not in ds:
            return ds.step.values
        return _done_steps(path, group, flag, self.tokens[path])

    def config_groups(self) -> dict[str, str]:
        """A letter per distinct config (seeds aside) over every store, in path order."""
        keys, out = {}, {}
        for p in self.paths:
            try:
                key = json.dumps(_without_seeds(self.info(p)["config"]), sort_keys=True)
            except Exception:  # noqa: BLE001 - an unreadable store gets its own group
                key = f"unreadable:{p}"
            out[p] = keys.setdefault(key, chr(ord("A") + len(keys)))
        return out

    def run_label(self, path: str) -> str:
        try:
            cfg = self.info(path)["config"]
            group = self.config_groups()[path]
            return f"{run_name(path)} · config {group}, seed {cfg.get('seed', '?')}"
        except Exception:  # noqa: BLE001
            return f"{run_name(path)} · unreadable"

    def legend_label(self, path: str) -> str:
        """A run's name in plot legends; a run whose config differs from the lead's says how."""
        if self.lead is None or path == self.lead:
            return run_name(path)
        try:
            diff = config_difference(self.info(path)["config"], self.info(self.lead)["config"])
        except Exception:  # noqa: BLE001
            return run_name(path)
        return (
            f"{run_name(path)} (other config: {'; '.join(diff[:2])}{'…' if len(diff) > 2 else ''})"
            if diff
            else run_name(path)
        )

    def refresh(self, *_) -> None:
        """Re-read what changed on disk: new stores, groups, variables and done checkpoints."""
        before = dict(self.tokens)
        self._scan()
        changed = [run_name(p) for p in self.tokens if before.get(p) != self.tokens[p]]
        note = ", ".join(changed) + " changed" if changed else "nothing new"
        self._lead_changed(refreshed=self.refreshed + 1, message=f"refreshed {time.strftime('%H:%M:%S')}: {note}")

    def poll(self) -> None:
        """The periodic callback: refresh only when a store changed."""
        now = {}
        for p in store_paths(self.patterns):
            try:
                now[p] = store_token(p)
            except OSError:
                continue
        if now != self.tokens:
            self.refresh()

    def _lead_changed(self, *_, **also) -> None:
        """A new lead run (or a refresh): its variables and checkpoints become the choices, and
        the variable and step change with ``lead_revision`` (and ``also``) in one update,
        so every view that shows the lead redraws once, not once per parameter."""
        lead = self.lead
        try:
            variables = self.variable_options() if lead else {}
        except Exception:  # noqa: BLE001 - an unreadable lead run: its panels say why
            variables = {}
        try:
            steps = [int(s) for s in self.done_steps(lead, "params")] if lead else []
        except Exception:  # noqa: BLE001 - shown by the checkpoint view itself
            steps = []
        self.param.variable.objects = variables
        self.param.step.objects = steps
        values = list(variables.values())
        variable = self.variable
        if variable not in values:
            default = [v for v in values if v.startswith("observables/")] or values
            variable = default[0] if default else None
        step = self.step if self.step in steps else (steps[-1] if steps else None)
        self.param.update(
            variable=variable,
            step=step,
            lead_revision=self.lead_revision + 1,
            **also,
        )

    # ----------------------------------------------------------------- the runs tab
    def _stages(self, path: str) -> xr.Dataset:
        self.dataset(path, "stages")  # says what to run when it is missing
        ds = _loaded(path, "stages", self.tokens[path])
        if "stage_start" not in ds:
            raise MissingData(f"{run_name(path)}: the stages group has no stages; rerun `devarray stages {path}`")
        return ds

    def stage_shading(self) -> hv.Overlay | None:
        """Figure 1's shading from the lead run's stages, with every shown run's boundaries."""
        parts = []
        for p in self.runs:
            try:
                s = self._stages(p)
            except MissingData:
                continue
            parts.append(s[["stage_start", "stage_end", "stage_direction", "boundary_step"]].load())
        if not parts:
            return None
        if len(parts) == 1:
            return stage_overlay(parts[0])
        return stage_overlay(xr.concat(parts, dim="run", join="outer"))

    def stage_of(self, path: str, steps: np.ndarray) -> np.ndarray:
        """'2 (increasing)' for each step, from the run's boundaries (a boundary starts the next stage)."""
        try:
            s = self._stages(path)
        except MissingData:
            return np.full(len(steps), "no stages yet", dtype=object)
        ids = 1 + np.searchsorted(s.boundary_step.values, steps, side="right")
        direction = dict(zip(s.stage_id.values.tolist(), map(str, s.stage_direction.values)))
        return np.array([f"{i} ({direction.get(int(i), '?')})" for i in ids], dtype=object)

    def curve_data(self, path: str, group: str, name: str, flag: str = "done") -> xr.DataArray:
        """One run's curve over its done checkpoints (step > 0: the step axis is logarithmic); of
        refined LLCs the plain one (restriction "all", else the first; the explorer shows them all)."""
        ds = _plain(self.dataset(path, group))
        if name not in ds:
            raise MissingData(f"{run_name(path)}: {group} has no variable `{name}`")
        steps = self.done_steps(path, group, flag)
        steps = steps[steps > 0]
        if not len(steps):
            raise MissingData(
                f"{run_name(path)}: no done {group} checkpoint yet (training or `devarray {group}` "
                "still running?); refresh when it has written one"
            )
        return _curve(path, group, name, flag, self.tokens[path])

    def run_curves(self) -> dict[str, dict]:
        """Per shown run: ``test_loss``, ``llc_mean``, ``llc_std`` and ``slope`` (the GP's, with
        ``slope_lo``/``slope_hi``), each a DataArray or the message saying why it is missing."""
        out = {}
        for p in self.runs:
            row = {}
            for key, group, name in (
                ("test_loss", "eval", "test_loss"),
                ("llc_mean", "llc", "llc_mean"),
                ("llc_std", "llc", "llc_std"),
            ):
                try:
                    row[key] = self.curve_data(p, group, name)
                except Exception as e:  # noqa: BLE001
                    row[key] = _describe(e)
            try:
                s = self._stages(p)
                variable = s.attrs.get("variable", "llc_mean")
                fit = s[["slope", "slope_lo", "slope_hi"]].sel(curve=variable).load()
                fit = fit.isel(step=np.isfinite(fit.slope.values) & (fit.step.values > 0))
                for k in ("slope", "slope_lo", "slope_hi"):
                    row[k] = fit[k].assign_attrs(long_name=f"GP slope of {variable} in log step", units="1 / log step")
            except Exception as e:  # noqa: BLE001
                row["slope"] = _describe(e)
            out[p] = row
        return out

    def _run_curve(self, path: str, da: xr.DataArray, y: hv.Dimension, color: str, label: str) -> hv.Curve:
        steps = da.step.values
        data = pd.DataFrame(
            {"step": steps, y.name: da.values, "stage": self.stage_of(path, steps), "run": run_name(path)}
        )
        return hv.Curve(data, STEP, [y, hv.Dimension("stage"), hv.Dimension("run")], label=label).opts(
            color=color, tools=["hover"], line_width=2
        )

    def _panel(self, rows: dict, key: str, band: tuple[str, str] | None, title: str) -> tuple[hv.Overlay | None, list]:
        items, notes, legend = [], [], {}
        for i, (p, row) in enumerate(rows.items()):
            da = row.get(key)
            if not isinstance(da, xr.DataArray):
                notes.append(da or f"{run_name(p)}: no {key}")
                continue
            color = RUN_COLORS[i % len(RUN_COLORS)]
            y = _dim(da, key)
            if band is not None:
                lo, hi = band
                if isinstance(row.get(lo), xr.DataArray) and isinstance(row.get(hi), xr.DataArray):
                    a, b = row[lo], row[hi]
                elif lo == "±" and isinstance(row.get(hi), xr.DataArray):
                    s = row[hi].sel(step=da.step)
                    a, b = da - s, da + s
                else:
                    a = b = None
                if a is not None:
                    items.append(
                        hv.Area((da.step.values, a.values, b.values), STEP, [y, f"{key}_upper"]).opts(
                            color=color, alpha=0.2, line_width=0
                        )
                    )
            # labelled by position, named in the legend (legend_labels): another run in the same
            # place is then the same plot with other data, which HoloViews redraws in place
            label = f"run {i}"
            legend[label] = self.legend_label(p)
            items.append(self._run_curve(p, da, y, color, label))
            da_shown = da
        if not items:
            return None, notes
        plot = hv.Overlay(items)
        shade = self.stage_shading()
        if shade is not None:
            plot = shade * plot  # under the curves
        if key == "slope":
            plot = plot * hv.HLine(0).opts(color="grey", line_width=1)
        # name the axes: the shading drawn first would label them x and y
        return plot.opts(
            title=title,
            logx=True,
            responsive=True,
            height=250,
            show_grid=True,
            xlabel=STEP.pprint_label,
            ylabel=_dim(da_shown, key).pprint_label,
            legend_position="top_left",
            show_legend=True,
            legend_labels=legend,
        ), notes

    def run_plots(self) -> tuple[dict[str, hv.Overlay], list[str]]:
        """The runs tab's plots of the shown runs (test loss, LLC, GP slope), and notes on what
        is missing."""
        rows = self.run_curves()
        plots, notes = {}, []
        for key, band, title in (
            ("test_loss", None, "Test loss"),
            ("llc_mean", ("±", "llc_std"), "LLC (band: ± std over chains)"),
            ("slope", ("slope_lo", "slope_hi"), "Slope of the LLC's GP fit in log step (zero at the boundaries)"),
        ):
            plot, why = self._panel(rows, key, band, title)
            notes += why
            if plot is not None:
                plots[key] = plot
        return plots, list(dict.fromkeys(notes))

    @param.depends("runs_layout")
    @guarded("Runs")
    def runs_view(self) -> pn.viewable.Viewable:
        if not self.runs:
            return pn.pane.Markdown("*Select one or more runs in the sidebar.*")
        frame = self._frame("runs")
        plots, notes = frame.data[1]
        panes = [
            pn.pane.HoloViews(
                hv.DynamicMap(functools.partial(_run_plot, key=key), streams=[frame.pipe]),
                sizing_mode="stretch_width",
                linked_axes=True,
            )
            for key in plots
        ]
        legend = pn.pane.Markdown(
            "Shading: the lead run's stages — **warm** hues where the LLC rises, **cold** where it falls; "
            "dashed lines: stage boundaries of every shown run. Hover a curve for step, value and stage.",
            sizing_mode="stretch_width",
        )
        alerts = [pn.pane.Alert("\n".join(f"- {n}" for n in notes), alert_type="info")] if notes else []
        return pn.Column(legend, *alerts, *panes, sizing_mode="stretch_width")

    # ----------------------------------------------------------------- stage table
    def stage_rows(self) -> pd.DataFrame:
        """The lead run's stages: start, end, direction, change of the LLC and of the test loss,
        and the first and last stored checkpoint inside each stage."""
        from devarray.stages import stage_table

        s = self._stages(self.lead)
        ev = self.dataset(self.lead, "eval")
        loss = ev[["test_loss"]].sel(step=self.done_steps(self.lead, "eval")).load()
        table = stage_table(s, loss).rename(
            columns={f"Δ{s.attrs.get('variable', 'y')}": "Δ LLC", "Δtest_loss": "Δ test loss"}
        )
        steps = np.asarray(self.param.step.objects, dtype=np.int64)
        first, last = [], []
        for a, b in zip(table.start.values, table.end.values):
            inside = steps[(steps >= a) & (steps <= b)]
            first.append(int(inside[0]) if len(inside) else None)
            last.append(int(inside[-1]) if len(inside) else None)
        table["first checkpoint"], table["last checkpoint"] = first, last
        return table

    def goto_stage(self, stage: int, which: str = "first") -> int | None:
        """Show the first or last checkpoint of ``stage`` in the checkpoint view."""
        row = self.stage_rows().loc[int(stage)]
        step = row[f"{which} checkpoint"]
        if step is None or pd.isna(step):
            return None
        self.param.update(step=int(step), tab=2)
        return int(step)

    @param.depends("runs_revision")
    @guarded("Stage table")
    def stage_table_view(self) -> pn.viewable.Viewable:
        if not self.lead:
            return pn.pane.Markdown("")
        table = self.stage_rows()
        colors = stage_colors(table.direction.values)
        table.insert(0, "colour", ["■"] * len(table))
        widget = pn.widgets.Tabulator(
            table,
            disabled=True,
            show_index=True,
            sizing_mode="stretch_width",
            height=min(60 + 34 * len(table), 320),
            buttons={
                "first": "<u title='open the first checkpoint of this stage'>first</u>",
                "last": "<u title='open the last checkpoint of this stage'>last</u>",
            },
            formatters={"Δ LLC": {"type": "money", "precision": 3}, "Δ test loss": {"type": "money", "precision": 3}},
        )
        widget.style.apply(lambda col: [f"color: {c}; font-size: 18px" for c in colors], subset=["colour"])

        def click(event):
            if event.column in ("first", "last"):
                self.goto_stage(table.index[event.row], event.column)

        widget.on_click(click)
        return pn.Column(
            pn.pane.Markdown(
                f"### Stages of {run_name(self.lead)}  \n"
                "Changes between the stage's ends; *first* / *last* open its first / last "
                "checkpoint in the *Checkpoint* tab."
            ),
            widget,
            sizing_mode="stretch_width",
        )

    # ----------------------------------------------------------------- variable explorer
    def variable_options(self) -> dict[str, str]:
        """Every numeric variable with a ``step`` dim in every group of the lead run (done flags
        aside): a newly registered observable appears here with no change to the app."""
        options = {}
        groups = self.info(self.lead)["groups"]
        ordered = [g for g in GROUP_ORDER if g in groups] + sorted(set(groups) - set(GROUP_ORDER))
        for group in ordered:
            try:
                ds = self.dataset(self.lead, group)
            except Exception:  # noqa: BLE001 - a broken group lists nothing; its panels say why
                continue
            for name in sorted(ds.data_vars):
                da = ds[name]
                if "step" in da.dims and da.dtype.kind in "fiub" and not str(name).startswith("done"):
                    long_name = da.attrs.get("long_name", name)
                    label = f"{group} / {name}" + (f" — {long_name}" if long_name != name else "")
                    options[label] = f"{group}/{name}"
        return options

    def variable_array(self, variable: str | None = None) -> xr.DataArray:
        """The explored variable (or ``variable``) over the lead run's done checkpoints (still lazy)."""
        variable = variable or self.variable
        if not variable:
            raise MissingData("no variable with a step dim in this run yet")
        group, name = variable.split("/", 1)
        ds = self.dataset(self.lead, group)
        da = ds[name]
        observable = da.attrs.get("observable", name)
        flag = f"done_{observable}" if f"done_{observable}" in ds else "done"
        return da.sel(step=self.done_steps(self.lead, group, flag))

    def selected_dims(self) -> dict[str, list]:
        """The labels shown along each non-step dim of the variable: the user's choice (``dims``)
        where it names labels of that dim, else all labels of a short dim and the first of a long
        one. Derived, not stored, so a new variable redraws once (and keeps a choice that fits)."""
        try:
            da = self.variable_array()
        except Exception:  # noqa: BLE001
            return {}
        ds = self.dataset(self.lead, self.variable.split("/", 1)[0])
        out = {}
        for d in da.dims:
            if d == "step":
                continue
            labels = _labels(ds, d)
            chosen = [v for v in self.dims.get(d, ()) if v in labels]
            out[d] = chosen or (labels if len(labels) <= 8 else labels[:1])
        return out

    def variable_data(self) -> xr.DataArray:
        """The selection (``dims``) of the explored variable, read: only these chunks, only these
        labels, stacked into ``line`` when it has other dims."""
        da = self.variable_array()
        group = self.variable.split("/", 1)[0]
        if not da.sizes["step"]:
            command = {"observables": "observe", "eval": "train", "params": "train"}.get(group, group)
            raise MissingData(
                f"no checkpoint of {self.variable} is done yet in {run_name(self.lead)}; "
                f"`devarray {command}` computes it"
            )
        ds = self.dataset(self.lead, group)
        for d, chosen in self.selected_dims().items():
            labels = _labels(ds, d)
            da = da.isel({d: [labels.index(v) for v in chosen]})
        other = [d for d in da.dims if d != "step"]
        n = int(np.prod([da.sizes[d] for d in other])) if other else 1
        if n > MAX_LINES:
            raise MissingData(f"{n} lines selected; choose at most {MAX_LINES} (fewer labels per dim)")
        da = da.isel(step=da.step.values > 0)
        return (da.stack(line=other) if other else da.expand_dims(line=[str(da.name)])).transpose("step", "line").load()

    def dim_widgets(self) -> list[pn.widgets.Widget]:
        """A widget per non-step dim of the variable, labelled from its coordinate's attrs."""
        selected = self.selected_dims()  # {} when the variable cannot be read: its view says why
        if not selected:
            return []
        ds = self.dataset(self.lead, self.variable.split("/", 1)[0])
        widgets = []
        for d, chosen in selected.items():
            labels = _labels(ds, d)
            if len(labels) > CHOICE_LIMIT:
                w = pn.widgets.DiscreteSlider(
                    label=_dim_label(ds, d),
                    options={str(v): v for v in labels},
                    value=chosen[0] if chosen else labels[0],
                    sizing_mode="stretch_width",
                )
                w.param.watch(lambda e, d=d: self.param.update(dims={**self.selected_dims(), d: [e.new]}), "value")
            else:
                w = pn.widgets.MultiChoice(
                    label=_dim_label(ds, d),
                    options={str(v): v for v in labels},
                    value=[v for v in chosen if v in labels],
                    sizing_mode="stretch_width",
                )
                w.param.watch(lambda e, d=d: self.param.update(dims={**self.selected_dims(), d: list(e.new)}), "value")
            widgets.append(w)
        return widgets

    @param.depends("variables_revision")
    @guarded("Variable")
    def variable_view(self) -> pn.viewable.Viewable:
        da = self.variable_data()
        y = _dim(da, "value")
        other = [d for d in da.indexes["line"].names if d != "line"] if "line" in da.indexes else []
        lines = []
        stage = self.stage_of(self.lead, da.step.values)
        for i in range(da.sizes["line"]):
            key = da.line.values[i]
            label = " ".join(f"{d}={v}" for d, v in zip(other, np.atleast_1d(key))) if other else str(da.name)
            data = pd.DataFrame(
                {"step": da.step.values, "value": da.isel(line=i).values.astype(float), "stage": stage, "line": label}
            )
            lines.append(hv.Curve(data, STEP, [y, "stage", "line"], label=label).opts(tools=["hover"]))
        plot = hv.Overlay(lines)
        shade = self.stage_shading()
        plot = (shade * plot) if shade is not None else plot
        group = self.variable.split("/", 1)[0]
        title = f"{da.attrs.get('long_name', da.name)} ({group}/{da.name}) — {run_name(self.lead)}"
        plot = plot.opts(
            title=title,
            logx=True,
            responsive=True,
            height=460,
            show_grid=True,
            xlabel=STEP.pprint_label,
            ylabel=y.pprint_label,
            legend_position="right",
            show_legend=len(lines) > 1,
            legend_opts={"label_text_font_size": "8pt", "spacing": 0, "glyph_height": 12},
        )
        about = da.attrs.get("description", "")
        return pn.Column(
            pn.pane.HoloViews(plot, sizing_mode="stretch_width"),
            pn.pane.Markdown(f"*{about}*" if about else "", sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    @param.depends("variable", "lead_revision")
    def explorer_controls(self) -> pn.viewable.Viewable:
        select = pn.widgets.Select.from_param(
            self.param.variable, label="variable (group / name — long name)", sizing_mode="stretch_width"
        )
        return pn.Column(select, *self.dim_widgets(), sizing_mode="stretch_width")

    # ----------------------------------------------------------------- checkpoint view
    def _lead_step(self) -> int:
        if self.lead is None:
            raise MissingData("no run selected")
        if self.step is None:
            raise MissingData(
                f"{run_name(self.lead)} has no written checkpoint yet (training just started?); refresh when it has one"
            )
        return int(self.step)

    def attention_data(self) -> xr.DataArray:
        """Every head's attention on the setting's probe context at the shown checkpoint."""
        return _attention(self.lead, self._lead_step(), self.tokens[self.lead])

    def _inputs_changed(self, *events) -> None:
        """A change marks the tabs that show it stale; the shown tab redraws now, a hidden one
        when it is shown, so a click costs only the views in sight (and a tab is drawn once
        however many clicks it missed)."""
        names = {e.name for e in events}
        self.stale |= {tab for tab, inputs in enumerate(TAB_INPUTS) if names & inputs}
        if self.tab not in self.stale:
            return
        if self.tab == 1:
            self.stale.discard(1)
            self.variables_revision += 1
        else:
            self._update_frames(self.tab)

    def _update_frames(self, tab: int) -> None:
        """The tab's views' data is read once (runs: their plots built); a view whose layout
        fits the new data updates its plots in place, the others are rebuilt."""
        self.stale.discard(tab)  # first: a view rebuilt below reads its frame
        if tab == 0:
            self.runs_revision += 1  # the stage table
        for name, read in FRAMES[tab].items():
            try:
                data = (self.step, getattr(self, read)())
                key = LAYOUTS[name](data[1])
            except Exception as e:  # noqa: BLE001 - the view shows it in its place
                data, key = e, None
            frame = self.frames.get(name)
            if frame is not None and key is not None and frame.key == key:
                frame.send(data)
            else:
                self.frames[name] = Frame(key, data)
                self.param.update({f"{name}_layout": getattr(self, f"{name}_layout") + 1})

    def _frame(self, name: str) -> Frame:
        tab = next(t for t, frames in FRAMES.items() if name in frames)
        if tab in self.stale:  # called directly (not drawn) while its tab is hidden
            self._update_frames(tab)
        frame = self.frames[name]
        if isinstance(frame.data, Exception):
            raise frame.data
        return frame

    def _attention_note(self, step: int) -> str:
        try:
            from devarray.settings import setting_for

            title = setting_for(self.info(self.lead)["config"]).title
        except Exception:  # noqa: BLE001
            title = "its setting"
        return (
            f"**Attention at step {step}** on the probe context of {title} "
            "(rows: query token, columns: key token; 0 = dark, 1 = bright)."
        )

    @param.depends("attention_layout")
    @guarded("Attention")
    def attention_view(self) -> pn.viewable.Viewable:
        frame = self._frame("attention")
        a = frame.data[1]
        heads = [
            hv.DynamicMap(functools.partial(_head_image, layer=layer, head=head), streams=[frame.pipe])
            for layer in a["layer"].values
            for head in a["head"].values  # a.head is DataArray.head()
        ]
        note = pn.pane.Markdown(self._attention_note(frame.data[0]))
        frame.show = [lambda data: setattr(note, "object", self._attention_note(data[0]))]
        layout = hv.Layout(heads).cols(a.sizes["head"]).opts(shared_axes=False)
        return pn.Column(note, pn.pane.HoloViews(layout), sizing_mode="stretch_width")

    def ln_data(self) -> dict[str, xr.DataArray]:
        """The layer-norm parameters (params variables whose name contains 'ln') at the shown step."""
        step = self._lead_step()
        ds = self.dataset(self.lead, "params")
        names = [v for v in ds.data_vars if "ln" in str(v) and "step" in ds[v].dims]
        if not names:
            raise MissingData(f"{run_name(self.lead)}'s model has no layer-norm parameters ('ln' in the name)")
        return {v: ds[v].sel(step=step).load() for v in sorted(names)}

    @param.depends("ln_layout")
    @guarded("Layer norms")
    def ln_view(self) -> pn.viewable.Viewable:
        frame = self._frame("ln")
        kinds = [k for k in ("weight", "bias") if k in {_ln_kind(n) for n in frame.data[1]}]
        plots = [hv.DynamicMap(functools.partial(_ln_overlay, kind=k), streams=[frame.pipe]) for k in kinds]
        return pn.Column(
            *[pn.pane.HoloViews(p, sizing_mode="stretch_width") for p in plots], sizing_mode="stretch_width"
        )

    def chain_data(self) -> tuple[xr.DataArray, pd.DataFrame, dict]:
        """At the shown step: the per-chain LLC traces (chain, draw) — one checkpoint's slab,
        nothing else of the llc group — a table of the chains' flags, LLC, ESS and split R-hat,
        and a summary (mean, std, R-hat over the kept chains)."""
        step = self._lead_step()
        ds = _plain(self.dataset(self.lead, "llc"))
        done = self.done_steps(self.lead, "llc")
        if step not in set(done.tolist()):
            raise MissingData(
                f"no LLC estimate at step {step} ({len(done)} of {ds.sizes['step']} checkpoints done); "
                f"run `devarray llc {self.lead}`"
            )
        at = ds.sel(step=step)
        trace = at.llc_trace.load()
        per_chain = [v for v in ("llc_per_chain", "diverged", "not_converged", "escaped", "llc_ess") if v in at]
        table = at[per_chain].load().to_dataframe()[per_chain]
        loss = at["loss"].load().values if "loss" in at else None
        summary = {"llc_mean": float(at.llc_mean.values), "llc_std": float(at.llc_std.values)}
        try:
            import arviz as az

            # R-hat of one chain is split-R-hat of its halves: does the chain agree with itself?
            if loss is not None and loss.shape[1] >= 8:
                half = loss.shape[1] // 2
                table["split R-hat"] = [float(az.rhat(row[: 2 * half].reshape(2, half))) for row in loss]
                table["arviz ESS"] = [float(az.ess(row[None, :])) for row in loss]
                kept = ~table["diverged"].values.astype(bool) if "diverged" in table else slice(None)
                if np.count_nonzero(kept) >= 2:
                    summary["rhat"] = float(az.rhat(loss[kept]))
        except ImportError:
            pass  # llc_ess is stored per chain; R-hat needs arviz
        return trace, table, summary

    @param.depends("sgld_layout")
    @guarded("SGLD chains")
    def sgld_view(self) -> pn.viewable.Viewable:
        frame = self._frame("sgld")
        _, table, _ = frame.data[1]
        summary = pn.pane.Markdown(_chain_summary(frame.data[1]))
        widget = pn.widgets.Tabulator(
            table.reset_index(),
            disabled=True,
            show_index=False,
            sizing_mode="stretch_width",
            formatters={c: {"type": "money", "precision": 3} for c in table.columns if table[c].dtype.kind == "f"},
        )
        frame.show = [
            lambda data: setattr(summary, "object", _chain_summary(data[1])),
            lambda data: setattr(widget, "value", data[1][1].reset_index()),
        ]
        plot = hv.DynamicMap(_chain_overlay, streams=[frame.pipe])
        return pn.Column(
            pn.pane.HoloViews(plot, sizing_mode="stretch_width"), summary, widget, sizing_mode="stretch_width"
        )

    # ----------------------------------------------------------------- layout
    def status_view(self) -> pn.viewable.Viewable:
        return pn.panel(self._status, sizing_mode="stretch_width")

    @param.depends("runs", "refreshed", "message")
    def _status(self) -> pn.viewable.Viewable:
        lines = []
        groups = self.config_groups()
        lead_cfg = None
        for p in self.runs:
            try:
                info = self.info(p)
            except Exception as e:  # noqa: BLE001
                lines.append(f"- **{run_name(p)}**: cannot be read — {_describe(e)}")
                continue
            lead_cfg = lead_cfg or info["config"]
            diff = config_difference(info["config"], lead_cfg)
            parts = []
            for g in ("params", "llc", "observables", "stages"):
                if g not in info["groups"]:
                    parts.append(f"no {g}")
                elif g in ("params", "llc"):
                    try:
                        parts.append(f"{g} {len(self.done_steps(p, g))}/{self.dataset(p, g).sizes['step']}")
                    except Exception:  # noqa: BLE001
                        parts.append(f"{g} unreadable")
            shown = "; ".join(f"`{d}`" for d in diff)  # code spans: markdown would turn schedule.lr into a link
            cfg = f"config {groups.get(p, '?')}" + (f" — **differs**: {shown}" if diff else "")
            lines.append(
                f"- **{run_name(p)}** ({info['config'].get('setting', '?')}, "
                f"{info['config'].get('preset', '?')}, seed {info['config'].get('seed', '?')}; {cfg}): "
                + ", ".join(parts)
            )
        note = f"\n\n<small>{self.message}</small>" if self.message else ""
        return pn.pane.Markdown("\n".join(lines) + note, sizing_mode="stretch_width")

    def __panel__(self) -> pn.template.BaseTemplate:
        runs = pn.widgets.MultiSelect.from_param(
            self.param.runs, label="runs (first selected leads)", size=8, sizing_mode="stretch_width"
        )
        refresh = pn.widgets.Button(label="↻ refresh stores", color="primary", sizing_mode="stretch_width")
        refresh.on_click(self.refresh)
        slider = pn.widgets.DiscreteSlider.from_param(
            self.param.step, label="checkpoint (training step)", sizing_mode="stretch_width"
        )
        tabs = pn.Tabs(
            ("Runs", pn.Column(self.runs_view, self.stage_table_view, sizing_mode="stretch_width")),
            (
                "Variables",
                pn.Row(
                    pn.Column(self.explorer_controls, width=320),
                    pn.Column(self.variable_view, sizing_mode="stretch_width"),
                    sizing_mode="stretch_width",
                ),
            ),
            (
                "Checkpoint",
                pn.Column(
                    slider,
                    self.attention_view,
                    self.ln_view,
                    pn.pane.Markdown("### SGLD chains"),
                    self.sgld_view,
                    sizing_mode="stretch_width",
                ),
            ),
            sizing_mode="stretch_width",
            dynamic=False,
        )
        tabs.link(self, active="tab", bidirectional=True)
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            # a store that gains a checkpoint while the page is open shows it without a click
            pn.state.add_periodic_callback(self.poll, period=POLL_SECONDS * 1000)
        settings = sorted({str(self.info(p)["config"].get("setting", "?")) for p in self.paths if self._readable(p)})
        # Bootstrap, not Fast: the Fast design always links a Google font, and the page must work offline
        return pn.template.BootstrapTemplate(
            title="devarray — developmental stages" + (f" ({', '.join(settings)})" if settings else ""),
            sidebar=[runs, refresh, self.status_view()],
            main=[tabs],
            sidebar_width=360,
        )

    def _readable(self, path: str) -> bool:
        try:
            self.info(path)
            return True
        except Exception:  # noqa: BLE001
            return False


# ---------------------------------------------------------------------------------- checkpoint plots
# Callbacks of the checkpoint views' DynamicMaps: each draws one plot from a Frame's data,
# ``(step, what the view's *_data method returned)``, first when built, then at every new step.
def _ticks(labels) -> list[tuple[int, str]]:
    labels = [str(v) for v in labels]
    # repeated tokens (language contexts) would share an axis tick: number them
    return list(enumerate(labels if len(set(labels)) == len(labels) else [f"{i}:{t}" for i, t in enumerate(labels)]))


def _head_image(data, *, layer, head) -> hv.Image:
    a = data[1]
    z = a.sel(layer=layer, head=head).values
    img = hv.Image(
        (np.arange(a.sizes["key_pos"]), np.arange(a.sizes["query_pos"]), z), ["key", "query"], _dim(a, "weight")
    )
    return img.opts(
        title=f"layer {layer} · head {head}",
        cmap="viridis",
        clim=(0, 1),
        xticks=_ticks(a.key_pos.values),
        yticks=_ticks(a.query_pos.values),
        invert_yaxis=True,
        xlabel="key token",
        ylabel="query token",
        xrotation=90,
        tools=["hover"],
        frame_width=190,
        frame_height=190,
        colorbar=False,
        fontsize={"ticks": 7},
    )


def _ln_kind(name) -> str:
    return "bias" if str(name).endswith("bias") else "weight"


def _ln_overlay(data, *, kind) -> hv.Overlay:
    step, arrays = data
    curves = []
    for name, da in arrays.items():
        if _ln_kind(name) == kind:
            values = da.values.ravel()
            curves.append(
                hv.Curve(
                    (np.arange(len(values)), values),
                    hv.Dimension("i", label="feature index"),
                    hv.Dimension(kind, label=f"layer-norm {kind}"),
                    label=str(name),
                )
            )
    plural = {"weight": "weights", "bias": "biases"}[kind]
    return hv.Overlay(curves).opts(
        title=f"Layer-norm {plural} at step {step}",
        responsive=True,
        height=260,
        show_grid=True,
        legend_position="right",
        framewise=True,  # each checkpoint's own range
    )


def _chain_labels(trace: xr.DataArray, table: pd.DataFrame) -> list[tuple[str, bool]]:
    """Each chain's legend label, with its flags, and whether it is flagged (drawn dashed)."""
    out = []
    for c in trace.chain.values:
        flags = [f for f in ("diverged", "not_converged", "escaped") if f in table and bool(table.loc[c, f])]
        out.append(
            (f"chain {c}" + (f" ({', '.join(f.replace('_', ' ') for f in flags)})" if flags else ""), bool(flags))
        )
    return out


def _chain_overlay(data) -> hv.Overlay:
    step, (trace, table, _) = data
    curves = [
        hv.Curve(
            (trace.draw.values, trace.sel(chain=c).values), _dim(trace.draw, "draw"), _dim(trace, "llc"), label=label
        ).opts(line_dash="dashed" if flagged else "solid")
        for c, (label, flagged) in zip(trace.chain.values, _chain_labels(trace, table))
    ]
    return hv.Overlay(curves).opts(
        title=f"Online LLC estimate of each SGLD chain at step {step} (figure A.5; dashed: flagged chains)",
        responsive=True,
        height=300,
        show_grid=True,
        legend_position="right",
        tools=["hover"],
        framewise=True,
    )


def _chain_summary(chains) -> str:
    _, _, summary = chains
    rhat = f", R-hat over kept chains {summary['rhat']:.3f}" if "rhat" in summary else ""
    return (
        f"LLC {summary['llc_mean']:.3f} ± {summary['llc_std']:.3f} over non-diverged chains"
        f"{rhat}. Per chain: the stored flags and effective draws (`llc_ess`), and split R-hat "
        "(near 1: the chain's two halves agree) of its SGLD losses."
    )


# What each tab (runs, variables, checkpoint) shows: a change of one redraws the tab when shown
TAB_INPUTS = ({"runs", "refreshed"}, {"variable", "dims", "lead_revision"}, {"step", "lead_revision"})


def _run_plot(data, *, key) -> hv.Overlay:
    plots, _ = data[1]
    return plots[key].opts(framewise=True)  # each run's own range


def _elements(plot: hv.Overlay) -> tuple:
    return tuple((type(el).__name__, el.group, el.label) for el in plot)


# The views drawn from a Frame, by tab, and the *_data method each reads
FRAMES = {
    0: {"runs": "run_plots"},
    2: {"attention": "attention_data", "ln": "ln_data", "sgld": "chain_data"},
}
# A view's layout: new data of the same layout is drawn in place (Frame)
LAYOUTS = {
    "runs": lambda plots: ({k: _elements(p) for k, p in plots[0].items()}, tuple(plots[1])),
    "attention": lambda a: (a.sizes, tuple(map(str, a.query_pos.values)), tuple(map(str, a.key_pos.values))),
    "ln": lambda arrays: tuple((str(n), da.shape) for n, da in arrays.items()),
    "sgld": lambda chains: (
        chains[0].shape,
        tuple(_chain_labels(chains[0], chains[1])),
        tuple(chains[1].columns),
    ),
}


def build_app(paths: list[str] | None = None) -> pn.viewable.Viewable:
    """The page for the stores matching ``paths`` (globs allowed; default ``stores/*.zarr``)."""
    patterns = list(paths) if paths else [STORES]
    explorer = StagesExplorer(patterns)
    if not explorer.paths:
        return pn.Column(
            pn.pane.Markdown(
                "## No run stores found\nTrain one: `devarray demo` or `devarray train SETTING --preset quick`, "
                f"then reload (looked for `{' '.join(patterns)}`)."
            )
        )
    return explorer.__panel__()


if __name__.startswith("bokeh"):  # `panel serve apps/stages.py [--args PATHS]`
    build_app(sys.argv[1:]).servable()
