"""Figure 4 of the paper for a language-model run: its behavioural and structural metrics over log step.

Six panels, each shaded by LLC stage (:func:`devarray.plots.stage_overlay`) when a ``stages`` Dataset is
given: (a) the bigram score with its floor, the bigram entropy (C.1.1); (b) the positional-ablation gap,
the probe loss with W_pos zero-ablated minus without, per measured position (C.2.1, figure C.2);
(c) the n-gram scores (C.1.2); (d) the previous-token matching score of every first-layer head (C.2.3);
(e) the prefix-matching score of every second-layer head (C.2.4; the one layer of a one-layer model);
(f) the ICL score (C.1.3). The builder takes the ``observables`` group as xarray; :func:`store_metrics_figure`
reads a store and writes the PNG.
"""

from __future__ import annotations

from pathlib import Path

import holoviews as hv
import numpy as np
import xarray as xr

from devarray.plots import _style, save_png, stage_overlay

METRICS = ("bigram_score", "loss_by_position", "ngram_score", "prev_token_score", "prefix_matching_score", "icl_score")


def _curve(da: xr.DataArray, label: str, **style) -> hv.Curve:
    keep = da.step.values > 0  # log axis
    return _style(hv.Curve((da.step.values[keep], da.values[keep]), "step", "value", label=label), **style)


def _colors(n: int, cmap: str = "viridis") -> list[str]:
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    return [matplotlib.colors.to_hex(cm(x)) for x in np.linspace(0.0, 0.9, max(n, 1))]


def metrics_figure(ds: xr.Dataset, stages: xr.Dataset | None = None) -> hv.Layout:
    """Figure 4 from the ``observables`` group (only checkpoints whose values are written), over log step."""
    missing = [m for m in METRICS if m not in ds]
    if missing:
        raise ValueError(f"the Dataset lacks {', '.join(missing)}; run `devarray observe STORE` first")
    shade = stage_overlay(stages) if stages is not None else hv.Overlay([])
    panels = []

    a = [
        _curve(ds.bigram_score, "bigram score", color="#1f77b4", line_width=2),
        _curve(ds.bigram_entropy, "bigram entropy (floor)", color="black", dash="--", line_width=1),
    ]
    panels.append(("(a) bigram score", "nats", a))

    gap = ds.loss_by_position.sel(ablation="pos_embed") - ds.loss_by_position.sel(ablation="none")
    positions = gap.position.values
    b = [
        _curve(gap.sel(position=k), f"position {k}", color=c, line_width=1.2)
        for k, c in zip(positions, _colors(len(positions), "plasma"))
    ]
    b.append(_curve(gap.mean("position"), "mean", color="#d62728", line_width=2.5))
    panels.append(("(b) loss with W_pos ablated − without", "nats", b))

    c = [
        _curve(ds.ngram_score.sel(n=n), f"n = {int(n)}", color=col, line_width=2)
        for n, col in zip(ds.n.values, _colors(ds.sizes["n"], "tab10"))
    ]
    panels.append(("(c) n-gram score", "ℓ_test / ℓ_gram", c))

    last = int(ds.layer.values[-1])
    for title, da, layer in (
        ("(d) previous-token score, layer 0", ds.prev_token_score, 0),
        (f"(e) prefix-matching score, layer {last}", ds.prefix_matching_score, last),
    ):
        heads = da["head"].values
        panels.append(
            (
                title,
                "attention",
                [
                    _curve(da.sel(layer=layer, head=h), f"{layer}:{int(h)}", color=col, line_width=1.5)
                    for h, col in zip(heads, _colors(len(heads)))
                ],
            )
        )

    panels.append(
        (
            "(f) ICL score",
            "nats",
            [
                _curve(ds.icl_score, "ICL score", color="#1f77b4", line_width=2),
                _style(hv.HLine(0.0), color="grey", line_width=0.8),
            ],
        )
    )
    out = []
    for title, units, items in panels:
        # the shading goes first so the curves draw over it; aspect "auto" keeps a log axis from squashing
        out.append(
            (shade * hv.Overlay(items)).opts(
                title=title,
                xlabel="step",
                ylabel=units,
                logx=True,
                aspect="auto",
                show_legend=True,
                legend_position="best",
                fontsize={"legend": 6},
                backend="matplotlib",
            )
        )
    return hv.Layout(out).cols(3).opts(sublabel_format="", fig_inches=(13.5, 7.5), backend="matplotlib")


def store_inputs(path) -> tuple[xr.Dataset, xr.Dataset | None]:
    """(observables at the checkpoints where every figure metric is done, stages or None) of a store."""
    from devarray.store import RunStore

    store = RunStore.open(path, mode="r")
    if not store.has_group("observables"):
        raise ValueError(f"{path} has no observables; run `devarray observe {path}` first")
    ds = store.dataset("observables")
    names = (
        "bigram_score",
        "loss_by_position",
        "ngram_score",
        "prev_token_score",
        "prefix_matching_score",
        "icl_score",
    )
    flags = [f"done_{n}" for n in names if f"done_{n}" in ds]
    if len(flags) < len(names):
        raise ValueError(f"{path} lacks some language metrics; run `devarray observe {path}` first")
    done = np.logical_and.reduce([ds[f].values for f in flags])
    ds = ds.isel(step=np.flatnonzero(done)).load()
    stages = store.dataset("stages").load() if store.has_group("stages") else None
    return ds, stages


def store_metrics_figure(path, out) -> Path:
    """Figure 4 of the run store at ``path``, written as a PNG to ``out``."""
    ds, stages = store_inputs(path)
    return save_png(metrics_figure(ds, stages), out)
