"""Figure builders: stage colours follow directions, figures render to PNG."""

import colorsys

import holoviews as hv
import matplotlib.colors as mcolors
import matplotlib.image as mimage
import numpy as np
import pytest
import xarray as xr

from devarray.plots import COLD, WARM, finite_difference_slope, run_figure, save_png, stage_colors, stage_overlay
from devarray.schedules import checkpoint_schedule
from devarray.stages import find_stages

STEPS = checkpoint_schedule(500_000, 30, 40)
X = np.log(np.maximum(STEPS, 1))


def hue_degrees(color):
    return 360 * colorsys.rgb_to_hsv(*mcolors.to_rgb(color))[0]


def is_warm(color):  # reds, oranges, yellows
    h = hue_degrees(color)
    return h <= 60 or h >= 330


def is_cold(color):  # cyans, blues, violets
    return 170 <= hue_degrees(color) <= 270


def hand_stages(starts, ends, directions, boundaries):
    return xr.Dataset(
        {
            "stage_start": ("stage_id", starts),
            "stage_end": ("stage_id", ends),
            "stage_direction": ("stage_id", directions),
            "boundary_step": ("boundary", boundaries),
        },
        coords={"stage_id": np.arange(1, len(starts) + 1), "boundary": np.arange(len(boundaries))},
    )


def run_dataset(noise_seed=0):
    llc = 50 / (1 + np.exp(-(X - 4) / 0.4)) + 70 / (1 + np.exp(-(X - 8) / 0.4)) - 40 / (1 + np.exp(-(X - 11) / 0.3))
    llc = llc + 2 * np.random.default_rng(noise_seed).standard_normal(len(X))
    return xr.Dataset(
        {
            "test_loss": ("step", 2 * np.exp(-X / 4) + 0.1, {"long_name": "test loss", "units": "MSE"}),
            "llc_mean": ("step", llc, {"long_name": "LLC", "units": "nats"}),
            "llc_std": ("step", np.full(len(X), 8.0)),
            "weight_norm": ("step", 10 + X, {"long_name": "weight norm"}),
        },
        coords={"step": STEPS},
    )


def mpl_style(element, option):
    return hv.Store.lookup_options("matplotlib", element, "style").kwargs[option]


def test_palettes_are_warm_and_cold():
    assert all(map(is_warm, WARM)) and all(map(is_cold, COLD))


def test_stage_colors_follow_directions():
    directions = ["increasing", "increasing", "decreasing", "decreasing", "increasing", "decreasing"]
    colors = stage_colors(directions)
    assert [is_warm(c) for c in colors] == [d == "increasing" for d in directions]
    assert [is_cold(c) for c in colors] == [d == "decreasing" for d in directions]
    assert all(a != b for a, b in zip(colors, colors[1:]))  # neighbours are told apart
    assert colors[:2] == [WARM[0], WARM[1]] and colors[2:4] == [COLD[0], COLD[1]]
    assert stage_colors(np.array(["decreasing"])) == [COLD[0]]  # numpy strings from a Dataset
    with pytest.raises(ValueError, match="'increasing' or 'decreasing'"):
        stage_colors(["up"])


def test_stage_overlay_shades_by_direction_and_marks_boundaries():
    stages = hand_stages(
        [0, 1000, 40_000], [1000, 40_000, 500_000], ["increasing", "increasing", "decreasing"], [1000, 40_000]
    )
    overlay = stage_overlay(stages)
    spans = [e for e in overlay if isinstance(e, hv.VSpan)]
    lines = [e for e in overlay if isinstance(e, hv.VLine)]
    assert [mpl_style(s, "color") for s in spans] == [WARM[0], WARM[1], COLD[0]]
    assert [list(s.data) for s in spans] == [
        [1.0, 1000.0],
        [1000.0, 40_000.0],
        [40_000.0, 500_000.0],
    ]  # 0 → 1: log axis
    assert [line.data for line in lines] == [1000.0, 40_000.0]


def test_stage_overlay_across_runs():
    # xr.concat pads the run with fewer boundaries with NaN; every run's boundaries are drawn,
    # the first run's stages shaded.
    a = hand_stages([0, 1000], [1000, 500_000], ["increasing", "decreasing"], [1000])
    b = hand_stages([0, 900, 30_000], [900, 30_000, 500_000], ["increasing", "increasing", "decreasing"], [900, 30_000])
    overlay = stage_overlay(xr.concat([a, b], dim="run", join="outer"))
    assert [mpl_style(s, "color") for s in overlay if isinstance(s, hv.VSpan)] == [WARM[0], COLD[0]]
    assert sorted(line.data for line in overlay if isinstance(line, hv.VLine)) == [900.0, 1000.0, 30_000.0]


def test_finite_difference_slope_is_per_log_step():
    da = xr.DataArray(3 * X[1:] + 1, dims="step", coords={"step": STEPS[1:]})
    np.testing.assert_allclose(finite_difference_slope(da), 3.0)


def test_run_figure_renders_png(tmp_path):
    ds = run_dataset()
    stages = find_stages(ds.llc_mean)
    fig = run_figure(ds, stages)
    assert isinstance(fig, hv.Layout) and len(fig) == 6  # 3 curves, 3 slopes
    llc_panel, llc_slope = fig[1], fig[4]
    spans = [e for e in llc_panel if isinstance(e, hv.VSpan)]
    assert [mpl_style(s, "color") for s in spans] == stage_colors(stages.stage_direction.values)
    assert sum(isinstance(e, hv.VLine) for e in llc_panel) == stages.sizes["boundary"]
    # the staged variable gets its GP fit (top) and GP slope (bottom); the others only data
    assert "GP fit" in [e.label for e in llc_panel] and "GP fit" not in [e.label for e in fig[0]]
    assert "GP slope" in [e.label for e in llc_slope]

    path = save_png(fig, tmp_path / "figs" / "run.png", dpi=40)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mimage.imread(path)[..., :3]
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.05
    # the shading reached the pixels: the first warm colour at alpha 0.25 over white
    shade = 0.25 * np.array(mcolors.to_rgb(WARM[0])) + 0.75
    assert (np.abs(image - shade).max(-1) < 0.02).mean() > 0.01


def test_run_figure_overlays_runs(tmp_path):
    runs = xr.concat([run_dataset(seed) for seed in range(3)], dim="run").assign_coords(seed=("run", [10, 11, 12]))
    stages = xr.concat([find_stages(runs.llc_mean.isel(run=i)) for i in range(2)], dim="run", join="outer")
    fig = run_figure(runs, stages, variables=("llc_mean", "weight_norm"))
    assert len(fig) == 4
    curves = [e for e in fig[0] if type(e) is hv.Curve]  # hv.Area is a Curve too
    assert [c.label for c in curves] == ["seed 10", "seed 11", "seed 12"]  # no GP fit with several runs
    assert sum(isinstance(e, hv.Area) for e in fig[0]) == 3  # each run's ± llc_std
    lines = sum(isinstance(e, hv.VLine) for e in fig[0])
    assert lines == int(np.isfinite(stages.boundary_step.values.astype(float)).sum())
    assert save_png(fig, tmp_path / "runs.png", dpi=30).stat().st_size > 5_000


def test_run_figure_bad_input():
    with pytest.raises(ValueError, match="over 'step'"):
        run_figure(xr.Dataset({"llc_mean": ("x", [1.0])}))
    with pytest.raises(ValueError, match="none of"):
        run_figure(xr.Dataset({"other": ("step", [1.0])}, coords={"step": [1]}))
