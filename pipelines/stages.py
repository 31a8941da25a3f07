"""Stages of a run from its LLC curve, written to the ``stages`` group (paper §5, appendix B.1).

The LLC (``llc/llc_mean`` at its done checkpoints) is smoothed by a GP over log step, and the
boundaries are where its slope vanishes (:func:`devarray.stages.find_stages`). The test loss and
the weight norm get the same GP treatment (figure B.2 shows all three with their slopes); every
smoothed curve is labelled by the ``curve`` dimension (its source variable's name), and stages
and boundaries come from the staged variable alone.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from devarray.errors import StoreError
from devarray.settings import setting_for
from devarray.stages import find_stages, stage_table
from devarray.store import RunStore

from .runner import done

GROUP = "stages"
CURVE_VARS = ("smooth", "slope", "slope_lo", "slope_hi")
EXTRA_CURVES = ("test_loss", "weight_norm")  # every setting's eval group has these


def _curve(ds: xr.Dataset, name: str) -> xr.Dataset:
    """The GP curves of one fit, labelled by a ``curve`` coordinate."""
    return ds[list(CURVE_VARS)].expand_dims(curve=[name])


def standard_error(source: xr.Dataset, name: str) -> xr.DataArray | None:
    """Each checkpoint's standard error of ``name``, the GP's per-point noise: for the LLC the
    spread of the non-divergent chains over their number, llc_std / √chains; None otherwise."""
    if name != "llc_mean" or "llc_std" not in source:
        return None
    chains = (~source.diverged.astype(bool)).sum("chain") if "diverged" in source else source.sizes["chain"]
    return (source.llc_std / np.sqrt(np.maximum(chains, 1))).load()


NOISE = ("learned", "chains")


def _unrefined(source: xr.Dataset) -> xr.Dataset:
    """A refined llc group's ordinary LLC: restriction "all" on the training data, where the group
    has them (``devarray llc --restrict heads,all`` keeps the curve that stages divide)."""
    for dim, plain in (("restriction", "all"), ("data", "train")):
        if dim in source.dims and plain in source[dim].values:
            source = source.sel({dim: plain})
    return source


def staged_curve(store: RunStore, variable: str = "llc/llc_mean", noise: str = "learned"):
    """(group, name, done source dataset, finite curve, left-out steps) of the curve to divide;
    every user mistake (no such group or variable, too few usable checkpoints) is raised here, so
    a command can check all its stores before it starts any work."""
    if noise not in NOISE:
        raise StoreError(f"noise must be one of {', '.join(NOISE)}, got {noise!r}", argument="noise")
    group, name = variable.split("/", 1) if "/" in variable else ("llc", variable)
    if not store.has_group(group) or not len(store.done_steps(group)):
        raise StoreError(f"{store.path} has no done {group} checkpoints; run `devarray {group} {store.path}` first")
    source = _unrefined(done(store.dataset(group)))
    if name not in source or source[name].dims != ("step",):
        over_step = [v for v in source.data_vars if source[v].dims == ("step",) and v != "done"]
        raise StoreError(
            f"{store.path}: group {group!r} has no variable {name!r} over step alone; "
            f"choose one of {', '.join(over_step)}",
            argument="variable",
        )
    curve = source[name].load()
    usable = np.isfinite(curve.values)
    left_out = curve.step.values[~usable].tolist()  # e.g. checkpoints whose SGLD chains all diverged
    curve = curve.isel(step=usable)
    source = source.isel(step=usable)
    if curve.sizes["step"] < 5:
        note = f" ({len(left_out)} more left out: no finite value, e.g. every SGLD chain diverged)" if left_out else ""
        raise StoreError(
            f"{store.path}: {curve.sizes['step']} usable checkpoints are too few for a stage division (need 5){note}"
        )
    return group, name, source, curve, left_out


def compute(store: RunStore, variable: str = "llc/llc_mean", *, noise: str = "learned", **options) -> xr.Dataset:
    """The stages Dataset of one run (nothing written).

    ``noise="learned"`` (default) lets the GP learn one noise level from the curve; ``"chains"``
    passes each checkpoint's chain standard error (:func:`standard_error`) as fixed noise. The
    default is learned because every checkpoint's chains use the same seeds (A.4.2): the chain
    spread is mostly an error shared by neighbouring checkpoints, which moves the curve's level but
    not its shape, so as independent noise it overstates what the slope must beat (on the demo's
    curve it hides LR1's stall: the chains' ~2.5 LLC units against checkpoint-to-checkpoint
    jitter of ~0.2)."""
    group, name, source, curve, left_out = staged_curve(store, variable, noise)
    main = find_stages(curve, noise=standard_error(source, name) if noise == "chains" else None, **options)
    ev = done(store.dataset("eval")).load()
    fits = [_curve(main, name)] + [_curve(find_stages(ev[e], **options), e) for e in EXTRA_CURVES if e != name]
    curves = xr.concat(fits, dim="curve", join="outer", combine_attrs="drop_conflicts")
    ds = main.drop_vars(list(CURVE_VARS) + ["stage"]).merge(curves, join="outer")
    # every step of the union gets its stage from the boundaries (a boundary step starts the next)
    stage = 1 + np.searchsorted(main.boundary_step.values, ds.step.values, side="right")
    ds["stage"] = ("step", stage, main.stage.attrs)
    for v in CURVE_VARS:
        ds[v].attrs = {k: a.replace(f" of {main.attrs.get('variable', name)}", "") for k, a in main[v].attrs.items()}
    ds["curve"].attrs = {
        "long_name": "smoothed curve",
        "units": "1",
        "description": "Source variable of the GP-smoothed curve (the staged one first).",
    }
    ds.attrs = {
        **main.attrs,
        "source": f"{group}/{name}",
        "source_checkpoints": int(curve.sizes["step"]) + len(left_out),
        "left_out_steps": left_out,
    }
    return ds


def run(
    path, variable: str = "llc/llc_mean", *, overwrite: bool = True, noise: str = "learned", **options
) -> xr.Dataset:
    """Compute and write the ``stages`` group. It is derived data, cheap to recompute, so by
    default a new division replaces the old one."""
    store = RunStore.open(path)
    ds = compute(store, variable, noise=noise, **options)
    with store.writing(GROUP):
        store.write_group(GROUP, ds, overwrite=overwrite)
    return ds


def fit(stages: xr.Dataset, curve: str) -> xr.Dataset | None:
    """The GP curves (smooth, slope and its band) of one ``curve`` at the steps it was fitted on."""
    if "curve" not in stages.dims or curve not in stages.curve.values:
        return None
    part = stages[list(CURVE_VARS)].sel(curve=curve, drop=True)
    return part.isel(step=np.isfinite(part.smooth.values)).assign_attrs(variable=curve)


def table(path) -> str:
    """The stage table: stage, start, end, direction, change of the LLC (smoothed) and of the
    test loss (between the checkpoints at the stage's ends)."""
    store = RunStore.open(path, mode="r")
    stages = store.dataset(GROUP).load()
    ev = done(store.dataset("eval")).load()
    return stage_table(stages, ev[["test_loss"]]).to_string(float_format=lambda v: f"{v:.3f}")


def report(path) -> str | None:
    """The setting's own reading of the stages (e.g. whether the first boundary is the paper's LR1 → LR2)."""
    store = RunStore.open(path, mode="r")
    return setting_for(store.config).stage_report(store.dataset(GROUP).load(), done(store.dataset("eval")).load())


def stages_task(path, *, variable: str = "llc/llc_mean", noise: str = "learned", **options) -> dict:
    """One store's stages as a cluster task (:class:`devarray.pipelines.runner.Job` with no steps):
    a GP fit per run, so several runs' fits run side by side."""
    ds = run(path, variable, noise=noise, **options)
    return {"path": str(path), "boundaries": ds.boundary_step.values.tolist(), "stages": int(ds.stage.max())}


def is_current(store: RunStore, variable: str = "llc/llc_mean") -> bool:
    """Whether the stored stages were made from every done checkpoint of their source now
    (a rerun of a finished sweep then leaves them alone)."""
    if not store.has_group(GROUP):
        return False
    group, name = variable.split("/", 1) if "/" in variable else ("llc", variable)
    attrs = store.group(GROUP).attrs
    return attrs.get("source") == f"{group}/{name}" and attrs.get("source_checkpoints") == len(store.done_steps(group))
