"""Stages of a run from its LLC curve, written to the ``stages`` group (paper §5, appendix B.1).

The LLC (``llc/llc_mean`` at its done checkpoints) is smoothed by a GP over log step, and the
boundaries are where its slope vanishes (:func:`devarray.stages.find_stages`). The test loss and
the weight norm get the same GP treatment (figure B.2 shows all three with their slopes), as
``test_loss_*`` and ``weight_norm_*`` variables; stages and boundaries come from the LLC alone.
"""

from __future__ import annotations

import xarray as xr

from devarray.stages import find_stages, stage_table
from devarray.store import RunStore, StoreError

GROUP = "stages"
CURVE_VARS = ("smooth", "slope", "slope_lo", "slope_hi")


def _done(ds: xr.Dataset) -> xr.Dataset:
    return ds.isel(step=ds.done.values.astype(bool))


def compute(store: RunStore, variable: str = "llc/llc_mean", **options) -> xr.Dataset:
    """The stages Dataset of one run (nothing written)."""
    group, name = variable.split("/", 1) if "/" in variable else ("llc", variable)
    if not store.has_group(group) or not len(store.done_steps(group)):
        raise StoreError(f"{store.path} has no done {group} checkpoints; run `devarray {group} {store.path}` first")
    source = _done(store.dataset(group))
    if name not in source:
        raise StoreError(f"{store.path}: group {group!r} has no variable {name!r}")
    curve = source[name].load()
    if curve.sizes["step"] < 5:
        raise StoreError(f"{store.path}: {curve.sizes['step']} done checkpoints are too few for a stage division (need 5)")
    main = find_stages(curve, **options)
    prefix = name.removesuffix("_mean")
    ds = main.rename({v: f"{prefix}_{v}" for v in CURVE_VARS})
    ev = _done(store.dataset("eval")).load()
    for extra in ("test_loss", "weight_norm"):
        fit = find_stages(ev[extra], **options)
        ds = ds.merge(fit[list(CURVE_VARS)].rename({v: f"{extra}_{v}" for v in CURVE_VARS}), join="outer")
    ds.attrs = {**main.attrs, "source": f"{group}/{name}"}
    return ds


def run(path, variable: str = "llc/llc_mean", *, overwrite: bool = True, **options) -> xr.Dataset:
    """Compute and write the ``stages`` group. It is derived data, cheap to recompute, so by
    default a new division replaces the old one."""
    store = RunStore.open(path)
    ds = compute(store, variable, **options)
    store.write_group(GROUP, ds, overwrite=overwrite)
    return ds


def table(path) -> str:
    """The stage table: stage, start, end, direction, change of the LLC (smoothed) and of the
    test loss (between the checkpoints at the stage's ends)."""
    store = RunStore.open(path, mode="r")
    stages = store.dataset(GROUP).load()
    ev = _done(store.dataset("eval")).load()
    return stage_table(stages, ev[["test_loss"]]).to_string(float_format=lambda v: f"{v:.3f}")
