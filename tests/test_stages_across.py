"""Stage boundaries matched across runs (B.4): groups, spread, missing and split stages, the table."""

import numpy as np
import pytest
import xarray as xr

from devarray.stages_across import across_table, default_tolerance, match_runs


def _stages(steps, kinds=None):
    kinds = kinds or ["max"] * len(steps)
    return xr.Dataset(
        {"boundary_step": ("boundary", np.asarray(steps, dtype=np.int64)), "boundary_kind": ("boundary", kinds)}
    )


RUNS = {
    "s0": _stages([100, 1000, 10000]),
    "s1": _stages([120, 1100, 9000], ["max", "plateau", "min"]),
    "s2": _stages([90, 1000]),  # the last boundary is missing
    "s3": _stages([110, 135, 1000, 10000]),  # the first stage is split in two
}


def test_boundaries_are_grouped_in_log_step_with_missing_and_split_runs():
    m = match_runs(RUNS, tolerance=0.3)
    assert m.sizes["matched"] == 3
    np.testing.assert_array_equal(m.step.sel(run="s0").values, [100, 1000, 10000])
    np.testing.assert_array_equal(m["count"].sel(run="s3").values, [2, 1, 1])
    assert np.isnan(m.step.sel(run="s2", matched=3))
    assert m.missing.values.tolist() == ["", "", "s2"]
    assert m.split.values.tolist() == ["s3", "", ""]
    # spread: largest minus smallest step of the group; median over every member
    assert m.spread.values.tolist() == [135 - 90, 1100 - 1000, 10000 - 9000]
    assert m.median_step.values.tolist() == [float(np.median([100, 120, 90, 110, 135])), 1000.0, 10000.0]
    assert m.kinds.values.tolist() == ["max", "max/plateau", "max/min"]


def test_default_tolerance_is_half_the_median_gap_within_runs():
    gaps = np.concatenate([np.diff(np.log10(np.sort(r.boundary_step.values))) for r in RUNS.values()])
    assert default_tolerance([r.boundary_step.values for r in RUNS.values()]) == pytest.approx(np.median(gaps) / 2)
    assert match_runs(RUNS).attrs["tolerance_decades"] == pytest.approx(np.median(gaps) / 2)
    assert default_tolerance([np.array([50.0])]) == 0.25  # nothing to learn from: the stated fallback


def test_a_tight_tolerance_separates_what_a_loose_one_joins():
    assert match_runs({"a": _stages([100]), "b": _stages([200])}, tolerance=0.2).sizes["matched"] == 2
    assert match_runs({"a": _stages([100]), "b": _stages([200])}, tolerance=0.4).sizes["matched"] == 1


def test_padded_and_empty_runs_are_handled():
    padded = xr.Dataset(
        {"boundary_step": ("boundary", [100.0, np.nan]), "boundary_kind": ("boundary", ["max", ""])}
    )  # xr.concat pads runs with fewer boundaries with NaN
    m = match_runs({"a": padded, "b": _stages([]), "c": _stages([105])}, tolerance=0.3)
    assert m.sizes["matched"] == 1 and m.missing.values.tolist() == ["b"]


def test_the_table_prints_the_matched_numbers():
    m = match_runs(RUNS, tolerance=0.3)
    text = across_table(m)
    lines = text.splitlines()
    assert "4 runs" in lines[0] and "0.3 decades" in lines[0]
    row1 = lines[2].split()
    assert row1[:3] == ["1", f"{m.median_step.values[0]:.0f}", "45"]
    assert "split: s3" in lines[2] and "110*" in lines[2]
    assert "missing: s2" in lines[4] and lines[4].split()[6] == "-"  # s2's column
    assert lines[-1].startswith("1 of 3 boundaries appear exactly once in every run")
