"""Run stores with made-up LLC chains, written through the RunStore API, for the app's tests and
benchmark: the app is a reader, and what it needs of a store is its layout (schemas/), not the
numbers. Training the paper's 500k steps or sampling 190 × 10 × 5,000 SGLD draws would take hours
on a CPU; this takes seconds.

The LLC curve rises, peaks and falls over log step (LR1 → LR2 and a falling stage, as in the
quick run), so the stages pipeline finds warm and cold stages in it.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from devarray.store import RunStore


def llc_curve(steps: np.ndarray) -> np.ndarray:
    x = np.log1p(np.asarray(steps, dtype=float)) / np.log1p(max(float(np.max(steps)), 1.0))
    return 30 + 35 / (1 + np.exp(-(x - 0.45) * 14)) - 12 / (1 + np.exp(-(x - 0.8) * 18))


def write_llc(
    store: RunStore, steps=None, *, chains: int = 4, draws: int = 40, seed: int = 0, diverged_chain: int | None = None
) -> None:
    """An ``llc`` group (schemas/llc.yaml) over ``steps`` (default: the done params checkpoints),
    every checkpoint marked done. ``diverged_chain`` is flagged diverged at every checkpoint."""
    steps = store.done_steps("params") if steps is None else np.asarray(steps)
    rng = np.random.default_rng(seed)
    store.create_group(
        "llc",
        {"step": store.steps("params"), "chain": np.arange(chains), "draw": np.arange(draws)},
        attrs={"method": "synthetic", "num_chains": chains, "num_draws": draws},
    )
    level = dict(zip(steps.tolist(), llc_curve(steps)))
    for step in steps.tolist():
        per_chain = level[step] + rng.normal(0, 1.0, chains)
        # traces settle on each chain's estimate the way eqs. 9-12's running means do
        noise = rng.normal(0, 3.0, (chains, draws)).cumsum(axis=1) / np.arange(1, draws + 1)
        trace = (per_chain[:, None] * (1 - np.exp(-np.arange(1, draws + 1) / (draws / 8))) + noise).astype("float32")
        loss = (0.05 + 0.001 * per_chain[:, None] + rng.normal(0, 0.002, (chains, draws))).astype("float32")
        diverged = np.zeros(chains, bool)
        if diverged_chain is not None:
            diverged[diverged_chain] = True
        kept = per_chain[~diverged]
        store.write(
            "llc",
            step,
            {
                "loss": loss,
                "llc_trace": trace,
                "llc_trace_mean": trace[~diverged].mean(0),
                "init_loss": np.float32(0.05),
                "llc_mean": np.float32(kept.mean()),
                "llc_std": np.float32(kept.std()),
                "llc_per_chain": per_chain.astype("float32"),
                "diverged": diverged,
                "not_converged": np.arange(chains) == chains - 1,
                "escaped": np.zeros(chains, bool),
                "llc_ess": np.full(chains, draws / 4, "float32"),
                "diverged_step": np.where(diverged, 7, -1),
                "llc_drift": np.zeros(chains, "float32"),
                "llc_drift_z": np.zeros(chains, "float32"),
            },
        )
        store.mark_done("llc", step)


def write_stages(store: RunStore) -> xr.Dataset:
    """The ``stages`` group as ``devarray stages`` writes it (pipelines/stages.py: the LLC staged,
    test loss and weight norm smoothed, over a ``curve`` dim), made here with devarray.stages so
    that the app's tests need no pipeline (the app never imports one either)."""
    from devarray.stages import find_stages

    def done(group):
        ds = store.dataset(group)
        return ds.isel(step=ds.done.values.astype(bool)).load()

    llc, ev = done("llc"), done("eval")
    curves = {"llc_mean": llc.llc_mean, "test_loss": ev.test_loss, "weight_norm": ev.weight_norm}
    fits = {name: find_stages(da) for name, da in curves.items()}
    main = fits["llc_mean"]
    parts = ["smooth", "slope", "slope_lo", "slope_hi"]
    smooth = xr.concat([f[parts].expand_dims(curve=[n]) for n, f in fits.items()], dim="curve", join="outer")
    ds = main.drop_vars(parts + ["stage"]).merge(smooth, join="outer")
    ds["stage"] = (
        "step",
        1 + np.searchsorted(main.boundary_step.values, ds.step.values, side="right"),
        main.stage.attrs,
    )
    ds.attrs = {**main.attrs, "source": "llc/llc_mean", "source_checkpoints": int(llc.sizes["step"])}
    store.write_group("stages", ds, overwrite=True)
    return ds


def paper_size_store(path, *, chains: int = 10, draws: int = 5000, seed: int = 0) -> RunStore:
    """A store of the "lr" setting's paper preset (190 checkpoints of 500k steps): the
    initial weights plus a small random walk as every checkpoint's params, eval curves, an llc
    group of ``chains`` × ``draws`` and stages found on its LLC."""
    from devarray.settings import setting_for
    from devarray.train import make_config, prepare_store

    config = make_config("lr", "paper", seed=seed)
    store, _ = prepare_store(path, config, overwrite=True)
    state = {k: v.detach().numpy() for k, v in setting_for(store.config).init_model(store.config).state_dict().items()}
    rng = np.random.default_rng(seed)
    steps = store.steps("params")
    k = store.group("eval")["k"].shape[0]
    curve = llc_curve(steps)
    for i, step in enumerate(steps.tolist()):
        state = {n: (v + rng.normal(0, 0.003, v.shape)).astype("float32") for n, v in state.items()}
        store.write("params", step, state)
        store.mark_done("params", step)
        loss = 4.3 - 2.5 * (curve[i] - curve[0]) / np.ptp(curve) + rng.normal(0, 0.01)
        norm = float(np.sqrt(sum(float((v.astype(float) ** 2).sum()) for v in state.values())))
        store.write(
            "eval",
            step,
            {
                "test_loss": np.float32(loss),
                "weight_norm": np.float32(norm),
                "test_loss_k": np.full(k, loss, "float32"),
            },
        )
        store.mark_done("eval", step)
    write_llc(store, steps, chains=chains, draws=draws, seed=seed, diverged_chain=0)
    write_stages(store)
    return store
