"""Stage boundaries matched across runs (paper appendix B.4, figure B.3).

B.4 reads the same stages off five seeds ("LR1–LR5 in each seed"; "in three of the five seeds,
stage LM5 is subdivided"). :func:`match_runs` makes that reading mechanical: every run's
boundaries are pooled on the log-step axis (the axis stages are found on, B.1) and cut into
groups wherever two neighbours lie more than ``tolerance`` decades apart. A group is one stage
boundary across runs: a run with no boundary in it *misses* it, a run with two or more *splits*
it. The default tolerance comes from the data: half the median gap between neighbouring
boundaries of the same run, so one run's own boundaries almost never merge (0.25 decades when
no run has two boundaries).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["across_table", "match_runs"]

DEFAULT_TOLERANCE = 0.25  # decades of step, when no run has two boundaries to learn from


def _boundaries(stages: xr.Dataset) -> tuple[np.ndarray, np.ndarray]:
    steps = np.asarray(stages.boundary_step.values, dtype=float) if "boundary_step" in stages else np.array([])
    # stored text comes back as numpy's variable-length StringDType, which will not cast to "<U"
    kinds = np.array([str(k) for k in stages.boundary_kind.values] if "boundary_kind" in stages else [], dtype=object)
    keep = np.isfinite(steps) & (steps > 0)  # padded runs (NaN) and step 0 have no log step
    return steps[keep], kinds[keep]


def default_tolerance(per_run: list[np.ndarray]) -> float:
    """Half the median gap, in decades, between neighbouring boundaries of one run."""
    gaps = np.concatenate([np.diff(np.log10(np.sort(s))) for s in per_run if len(s) > 1] or [np.array([])])
    return float(np.median(gaps) / 2) if len(gaps) else DEFAULT_TOLERANCE


def match_runs(runs: dict[str, xr.Dataset], tolerance: float | None = None) -> xr.Dataset:
    """Match the boundaries of several runs' ``stages`` datasets (name -> dataset).

    Returns a Dataset over (``matched``, ``run``): ``step`` (the run's boundary in that group, its
    first if split, NaN if missing) and ``count`` (how many of the run's boundaries fell in the
    group); over ``matched``: ``median_step``, ``spread`` (largest minus smallest step of the
    group, in steps), ``first_step``, ``last_step``, ``kinds`` (the kinds seen, e.g. "max" or
    "max/plateau"), ``missing`` and ``split`` (comma-separated run names). ``tolerance`` is in
    decades of step (default: :func:`default_tolerance`)."""
    names = list(runs)
    found = [_boundaries(runs[n]) for n in names]
    tol = default_tolerance([s for s, _ in found]) if tolerance is None else float(tolerance)
    pooled = sorted((np.log10(s), i, s, k) for i, (steps, kinds) in enumerate(found) for s, k in zip(steps, kinds))
    groups: list[list[tuple]] = []
    for entry in pooled:
        if groups and entry[0] - groups[-1][-1][0] <= tol:
            groups[-1].append(entry)
        else:
            groups.append([entry])
    n, r = len(groups), len(names)
    step = np.full((n, r), np.nan)
    count = np.zeros((n, r), dtype=np.int64)
    for g, members in enumerate(groups):
        for _, i, s, _ in members:
            count[g, i] += 1
            if count[g, i] == 1:
                step[g, i] = s
    members_steps = [np.array([m[2] for m in members]) for members in groups]
    attrs = {"units": "step"}
    return xr.Dataset(
        {
            "step": (("matched", "run"), step, {"long_name": "boundary step of the run in this group", **attrs}),
            "count": (("matched", "run"), count, {"long_name": "boundaries of the run in this group", "units": "1"}),
            "median_step": ("matched", [float(np.median(m)) for m in members_steps], {"long_name": "median", **attrs}),
            "spread": ("matched", [float(m.max() - m.min()) for m in members_steps], {"long_name": "spread", **attrs}),
            "first_step": ("matched", [float(m.min()) for m in members_steps], attrs),
            "last_step": ("matched", [float(m.max()) for m in members_steps], attrs),
            "kinds": ("matched", ["/".join(sorted({m[3] for m in members})) for members in groups]),
            "missing": ("matched", [", ".join(names[i] for i in range(r) if count[g, i] == 0) for g in range(n)]),
            "split": ("matched", [", ".join(names[i] for i in range(r) if count[g, i] > 1) for g in range(n)]),
        },
        coords={"matched": np.arange(1, n + 1), "run": names},
        attrs={"tolerance_decades": tol},
    )


def across_table(matched: xr.Dataset) -> str:
    """The B.4 table: one row per matched boundary, each run's step, the spread, and where the
    boundary is missing or split; then whether every run shows every boundary."""
    runs = [str(r) for r in matched.run.values]
    width = max([9, *map(len, runs)])
    head = f"{'boundary':>8} {'median':>9} {'spread':>8} {'kinds':<14}" + "".join(f" {r:>{width}}" for r in runs)
    lines = [
        f"stage boundaries of {len(runs)} runs matched in log step "
        f"(within {matched.tolerance_decades:.3g} decades; B.4)",
        head + "  missing in / split in",
    ]
    for g in range(matched.sizes["matched"]):
        row = matched.isel(matched=g)
        cells = "".join(
            f" {'-' if c == 0 else f'{s:.0f}' + ('*' if c > 1 else ''):>{width}}"
            for s, c in zip(row.step.values, row["count"].values)
        )
        notes = "; ".join(
            part
            for part in (
                f"missing: {row.missing.item()}" if row.missing.item() else "",
                f"split: {row.split.item()}" if row.split.item() else "",
            )
            if part
        )
        lines.append(
            f"{int(row.matched):>8} {float(row.median_step):>9.0f} {float(row.spread):>8.0f} "
            f"{str(row.kinds.item()):<14}{cells}  {notes or '-'}"
        )
    everywhere = int(((matched["count"] == 1).all("run")).sum()) if matched.sizes["matched"] else 0
    split = " (* a run with several boundaries in one group: the stage is split there)"
    lines.append(
        f"{everywhere} of {matched.sizes['matched']} boundaries appear exactly once in every run"
        + (split if (matched["count"] > 1).any() else "")
    )
    return "\n".join(lines)
