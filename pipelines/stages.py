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


def lr1_lr2_check(path) -> dict:
    """Is the first boundary the paper's LR1 → LR2 (§5.1): the end of the context-free stage?

    There the test loss has come down to the zero predictor's (D + σ², on the stored test set:
    ``eval`` attr ``zero_predictor_loss``) and is about to fall below it as the model starts to use
    the context. Criteria: the test loss at the boundary within 5 % of the zero predictor's, never
    below 95 % of it up to the boundary, and below 95 % of it before the second boundary (or the
    end), falling to under 80 % of it by the end of the run. Returns the figures and ``ok``.
    """
    store = RunStore.open(path, mode="r")
    st = store.dataset(GROUP).load()
    ev = _done(store.dataset("eval")).load()
    zero = float(ev.attrs["zero_predictor_loss"])
    out = {"zero_predictor_loss": zero, "ok": False}
    if not st.sizes["boundary"]:
        return out
    b = int(st.boundary_step[0])
    end = int(st.boundary_step[1]) if st.sizes["boundary"] > 1 else int(ev.step[-1])
    loss = ev.test_loss
    below = loss.step[loss < 0.95 * zero]
    out |= {
        "boundary_step": b,
        "boundary_kind": str(st.boundary_kind.values[0]),
        "loss_at_boundary": float(loss.sel(step=b, method="nearest")),
        "min_loss_before": float(loss.sel(step=slice(None, b)).min()),
        "first_step_below": int(below[0]) if below.size else None,
        "final_loss": float(loss[-1]),
    }
    out["ok"] = (
        abs(out["loss_at_boundary"] - zero) <= 0.05 * zero
        and out["min_loss_before"] >= 0.95 * zero
        and out["first_step_below"] is not None and b < out["first_step_below"] <= end
        and out["final_loss"] < 0.8 * zero
    )
    return out


def lr1_lr2_report(path) -> str:
    """One line: where the first boundary falls relative to the LR1 → LR2 transition."""
    c = lr1_lr2_check(path)
    if "boundary_step" not in c:
        return "no stage boundary found on this LLC curve"
    verdict = "the end of LR1 (LR1 -> LR2)" if c["ok"] else "NOT the LR1 -> LR2 transition"
    return (f"first boundary at step {c['boundary_step']} ({c['boundary_kind']}) is {verdict}: test loss "
            f"{c['loss_at_boundary']:.3f} there, zero predictor {c['zero_predictor_loss']:.3f}; below 95% of it "
            f"from step {c['first_step_below']}, {c['final_loss']:.3f} at the end")
