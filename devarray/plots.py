"""HoloViews figures of training runs: the paper's figure 1 / B.2, and B.3 for several seeds.

Builders take xarray objects (never stores) and return HoloViews objects, so the same figure is
a PNG here (:func:`save_png`, matplotlib backend) and an interactive plot in a Panel app (bokeh).
Styles are set for the matplotlib backend, and for bokeh too when it is loaded.

Figure B.2's layout: a top row with the curves over log step (test loss, LLC with its spread over
chains, weight norm), each with its GP fit as a red dotted line when given; a bottom row with
their slopes in log step — finite differences (transparent blue) and the GP's slope with its
credible band (red dotted). Every panel is shaded by stage, warm hues where the LLC increases and
cold where it decreases (figure 1), with the boundaries as dashed vertical lines.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import holoviews as hv
import numpy as np
import xarray as xr

# Oranges, reds and yellows for increasing LLC; blues, teals and violets for decreasing (figure 1).
WARM = ("#f4a261", "#e63946", "#e9c46a", "#f77f00", "#c1121f")
COLD = ("#457b9d", "#2a9d8f", "#5e60ce", "#48cae4", "#1d3557")
FIT_COLOR = "#d62728"  # the paper's red dotted GP lines
DIFF_COLOR = "#1f77b4"  # and its transparent blue finite differences


def stage_colors(directions: Sequence[str]) -> list[str]:
    """A colour per stage: warm for ``"increasing"``, cold for ``"decreasing"``; successive stages of
    one direction take successive hues, so neighbours never share a colour."""
    counts = {"increasing": 0, "decreasing": 0}
    colors = []
    for d in map(str, directions):
        if d not in counts:
            raise ValueError(f"stage direction must be 'increasing' or 'decreasing', got {d!r}")
        palette = WARM if d == "increasing" else COLD
        colors.append(palette[counts[d] % len(palette)])
        counts[d] += 1
    return colors


def _style(element, dash: str | None = None, **common):
    """Set options for matplotlib (always) and bokeh (when loaded); ``dash`` is ':' or '--'.

    Colours go in ``color``, which both backends read: with bokeh loaded first, HoloViews gives
    matplotlib spans a default colour cycle in ``color``, which would override a ``facecolor``.
    """
    import holoviews.plotting.mpl  # noqa: F401  registers the backend without switching to it

    mpl = dict(common)
    if "line_width" in mpl:
        mpl["linewidth"] = mpl.pop("line_width")
    if dash:
        mpl["linestyle"] = dash
    element = element.opts(backend="matplotlib", **mpl)
    if "bokeh" in hv.Store.renderers:
        bokeh = dict(common)
        if dash:
            bokeh["line_dash"] = {":": "dotted", "--": "dashed"}[dash]
        element = element.opts(backend="bokeh", **bokeh)
    return element


def _runs(stages: xr.Dataset) -> list[xr.Dataset]:
    """One stages Dataset per run; a ``run`` dim from ``xr.concat`` pads boundaries with NaN."""
    if "run" not in stages.dims:
        return [stages]
    out = []
    for i in range(stages.sizes["run"]):
        s = stages.isel(run=i)
        s = s.isel(boundary=np.isfinite(s.boundary_step.values.astype(float)))
        out.append(s.isel(stage_id=np.isfinite(s.stage_start.values.astype(float))))
    return out


def stage_overlay(stages: xr.Dataset) -> hv.Overlay:
    """Stage shading (figure 1) and dashed boundary lines, over ``step``.

    With a ``run`` dim (``xr.concat(per_run, dim="run", join="outer")``, which pads runs with
    fewer boundaries with NaN) the first run is shaded and every run's boundaries are drawn
    (figure B.3)."""
    runs = _runs(stages)
    first = runs[0]
    starts = np.maximum(first.stage_start.values.astype(float), 1.0)  # log axis: no step 0
    ends = first.stage_end.values.astype(float)
    spans = [
        _style(hv.VSpan(a, b), color=c, alpha=0.25, line_width=0)  # `color`, not `facecolor`: see _style
        for a, b, c in zip(starts, ends, stage_colors(first.stage_direction.values))
    ]
    lines = [
        _style(hv.VLine(float(s)), dash="--", color="black", alpha=0.7, line_width=1)
        for r in runs
        for s in r.boundary_step.values
    ]
    return hv.Overlay(spans + lines)


def matched_overlay(matched: xr.Dataset, stages: xr.Dataset | None = None) -> hv.Overlay:
    """Boundaries matched across runs (``devarray.stages_across.match_runs``, B.4): a band over
    each group's spread, a solid line at its median, and every run's own boundaries dashed."""
    spans = [
        _style(hv.VSpan(max(float(a), 1.0), max(float(b), 1.0)), color="grey", alpha=0.25, line_width=0)
        for a, b in zip(matched.first_step.values, matched.last_step.values)
    ]
    medians = [_style(hv.VLine(float(m)), color="black", alpha=0.8, line_width=1.5) for m in matched.median_step.values]
    lines = [
        _style(hv.VLine(float(s)), dash="--", color="black", alpha=0.4, line_width=0.8)
        for s in matched.step.values.ravel()
        if np.isfinite(s)
    ]
    return hv.Overlay(spans + medians + lines)


def _dim(da: xr.DataArray) -> hv.Dimension:
    return hv.Dimension(str(da.name), label=da.attrs.get("long_name", str(da.name)), unit=da.attrs.get("units") or None)


def _positive(da: xr.DataArray) -> xr.DataArray:
    return da.isel(step=da.step.values > 0)  # log step axis


def _by_run(da: xr.DataArray) -> list[tuple[int | None, str | None, xr.DataArray]]:
    """(run index, legend label, curve) per run; index and label None without a ``run`` dim."""
    if "run" not in da.dims:
        return [(None, None, da)]
    key = "seed" if "seed" in da.coords else "run"
    labels = da[key].values if key in da.coords else range(da.sizes["run"])
    return [(i, f"{key} {labels[i]}", da.isel(run=i)) for i in range(da.sizes["run"])]


def finite_difference_slope(da: xr.DataArray) -> np.ndarray:
    """d(da)/d(log step) by second-order differences on the (uneven) checkpoint grid."""
    return np.gradient(da.values, np.log(da.step.values))


def _curve_panel(ds: xr.Dataset, name: str, fit: xr.Dataset | None, band: str | None) -> hv.Overlay:
    da = _positive(ds[name])
    y = _dim(da)
    items = []
    for i, label, d in _by_run(da):
        if band is not None:
            spread = _positive(ds[band])
            spread = spread.isel(run=i) if "run" in spread.dims else spread
            area = hv.Area((d.step.values, (d - spread).values, (d + spread).values), "step", [y, f"{name}_upper"])
            items.append(_style(area, alpha=0.15, line_width=0))
        # no label equal to a dimension's name: HoloViews would read it as a column to map
        items.append(hv.Curve((d.step.values, d.values), "step", y, label=label or "estimate"))
    if fit is not None:
        f = _positive(fit.smooth)
        items.append(
            _style(
                hv.Curve((f.step.values, f.values), "step", y, label="GP fit"), dash=":", color=FIT_COLOR, line_width=2
            )
        )
    return hv.Overlay(items)


def _slope_panel(ds: xr.Dataset, name: str, fit: xr.Dataset | None) -> hv.Overlay:
    da = _positive(ds[name])
    y = hv.Dimension(f"{name}_slope")
    items = [_style(hv.HLine(0.0), color="grey", line_width=0.8)]
    for _, label, d in _by_run(da):
        color = {} if label else {"color": DIFF_COLOR}  # several runs: one colour per run
        items.append(
            _style(
                hv.Curve((d.step.values, finite_difference_slope(d)), "step", y, label=label or "finite differences"),
                alpha=0.35,
                **color,
            )
        )
    if fit is not None:
        f = fit.isel(step=fit.step.values > 0)
        items.append(
            _style(
                hv.Area((f.step.values, f.slope_lo.values, f.slope_hi.values), "step", [y, f"{name}_slope_hi"]),
                color=FIT_COLOR,
                alpha=0.15,
                line_width=0,
            )
        )
        items.append(
            _style(
                hv.Curve((f.step.values, f.slope.values), "step", y, label="GP slope"),
                dash=":",
                color=FIT_COLOR,
                line_width=2,
            )
        )
    return hv.Overlay(items)


def run_figure(
    ds: xr.Dataset,
    stages: xr.Dataset | None = None,
    *,
    fits: Mapping[str, xr.Dataset] | None = None,
    variables: Sequence[str] = ("test_loss", "llc_mean", "weight_norm"),
    bands: Mapping[str, str] | None = None,
    matched: xr.Dataset | None = None,
) -> hv.Layout:
    """Figure 1 / B.2 of a run (or B.3 when ``ds`` has a ``run`` dim: the runs overlaid).

    ``ds`` holds the curves over ``step`` (merge the ``eval`` and ``llc`` groups); ``stages`` is
    :func:`devarray.stages.find_stages`'s result, which also supplies the GP fit of the variable it
    staged; ``fits`` adds GP fits of other variables (any ``find_stages`` result); ``bands`` maps a
    variable to its ± spread (default ``llc_mean`` ↦ ``llc_std``); ``matched`` (several runs'
    boundaries matched, B.4) replaces the first run's shading by the matched boundaries and their
    spread. Variables absent from ``ds`` are left out. Returns a two-row layout: curves on top,
    slopes in log step below."""
    if "step" not in ds.dims:
        raise ValueError(f"run_figure needs a Dataset over 'step'; got dims {tuple(ds.dims)}")
    names = [v for v in variables if v in ds]
    if not names:
        raise ValueError(f"none of {list(variables)} is in the Dataset (it has {list(ds.data_vars)})")
    fits = dict(fits or {})
    if stages is not None and "run" not in stages.dims and "smooth" in stages:
        fits.setdefault(stages.attrs.get("variable", ""), stages)
    bands = {"llc_mean": "llc_std"} if bands is None else dict(bands)
    if matched is not None:
        shade = matched_overlay(matched)
    else:
        shade = stage_overlay(stages) if stages is not None else hv.Overlay([])
    top = [_curve_panel(ds, n, fits.get(n), bands.get(n) if bands.get(n) in ds else None) for n in names]
    bottom = [_slope_panel(ds, n, fits.get(n)) for n in names]
    panels = []
    for row, items in enumerate((top, bottom)):
        for i, (n, panel) in enumerate(zip(names, items)):
            label = ds[n].attrs.get("long_name", n)
            units = f" ({ds[n].attrs['units']})" if ds[n].attrs.get("units") else ""
            opts = {
                "title": label if row == 0 else f"slope of {label}",
                "xlabel": "step",
                "ylabel": f"{label}{units}" if row == 0 else f"d/d log step{units}",
                "show_legend": i == 0,
            }
            if row == 1:
                opts["ylim"] = _slope_limits(ds[n], fits.get(n))
            # the shading goes first so the curves draw over it; it would name the axes x and y
            # aspect "auto": a numeric aspect on a log axis is read in data units and squashes the panel
            panels.append((shade * panel).opts(logx=True, aspect="auto", backend="matplotlib", **opts))
    return (
        hv.Layout(panels)
        .cols(len(names))
        .opts(sublabel_format="", fig_inches=(4.5 * len(names), 6), backend="matplotlib")
    )


def _restriction_panels(names: Sequence[str]) -> dict[str, list[str]]:
    """Restrictions by panel: each layer's heads ("head 1.3" -> "layer 1 heads") together, every
    other restriction in one panel."""
    panels: dict[str, list[str]] = {}
    for n in names:
        parts = n.split()
        key = f"layer {parts[1].split('.')[0]} heads" if parts[0] == "head" and len(parts) == 2 else "other"
        panels.setdefault(key, []).append(n)
    return panels


def refined_figure(llc: xr.Dataset, stages: xr.Dataset | None = None) -> hv.Layout:
    """Refined LLC curves over log step (Wang et al. 2025's head specialisation figure): one panel
    per layer with a curve per head, one for the other restrictions, shaded by ``stages``; with a
    ``data`` dim one row per dataset. ``llc`` is the done checkpoints of a refined llc group."""
    if "restriction" not in llc.dims:
        raise ValueError("refined_figure needs an llc group with a restriction dim (devarray llc --restrict ...)")
    shade = stage_overlay(stages) if stages is not None else hv.Overlay([])
    datasets = list(llc.data.values) if "data" in llc.dims else [None]
    groups = _restriction_panels([str(r) for r in llc.restriction.values])
    y = _dim(llc.llc_mean)
    panels = []
    for d in datasets:
        da = _positive(llc.llc_mean if d is None else llc.llc_mean.sel(data=d))
        for title, names in groups.items():
            curves = [hv.Curve((da.step.values, da.sel(restriction=n).values), "step", y, label=n) for n in names]
            label = title if d is None else f"{title}, data {d}"
            opts = {"title": label, "xlabel": "step", "ylabel": "refined LLC", "show_legend": True}
            panels.append((shade * hv.Overlay(curves)).opts(logx=True, aspect="auto", backend="matplotlib", **opts))
    return (
        hv.Layout(panels)
        .cols(len(groups))
        .opts(
            sublabel_format="",
            fig_inches=(4.5 * len(groups), 3.5 * len(datasets)),
            shared_axes=False,
            backend="matplotlib",
        )
    )


def _slope_limits(da: xr.DataArray, fit: xr.Dataset | None) -> tuple[float, float]:
    """Finite differences of noisy, densely spaced checkpoints swing wildly (noise / tiny Δlog
    step); frame the GP's band when there is one, else the central 96% of the differences."""
    if fit is not None:
        lo, hi = float(np.nanmin(fit.slope_lo)), float(np.nanmax(fit.slope_hi))
    else:
        d = np.concatenate([finite_difference_slope(c) for _, _, c in _by_run(_positive(da))])
        lo, hi = np.nanpercentile(d, [2, 98])
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # always show zero: boundaries are where slopes meet it
    pad = 0.15 * (hi - lo) or 1.0
    return float(lo - pad), float(hi + pad)


def save_png(obj: hv.core.Dimensioned, path: str | Path, *, dpi: int = 100) -> Path:
    """Render a HoloViews object to PNG with the matplotlib backend (loaded on first use)."""
    import holoviews.plotting.mpl  # noqa: F401

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # HoloViews' own VSpan defaults carry a facecolor; our `color` wins, as intended
        warnings.filterwarnings("ignore", "Setting the 'color' property will override", UserWarning)
        hv.save(obj, path, backend="matplotlib", dpi=dpi, fmt="png")
    return path
