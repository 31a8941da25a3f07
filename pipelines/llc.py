"""The LLC of every checkpoint of a run store, written to its ``llc`` group (paper §4, A.3.2).

One task per checkpoint: read the weights, draw the SGLD dataset (a fixed set of contexts from
the run's task, stream "sgld"), run the chains with the same seed at every checkpoint (A.4.2),
write the (step, chain, draw) region and the done flag. Done steps are skipped; a store holding
estimates made with other settings is refused unless ``overwrite``.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import schemas
import xarray as xr

from devarray.checkpoints import build_task, load_model
from devarray.slt import SGLDSettings, estimate_llc
from devarray.store import RunStore, StoreError
from devarray.tasks.regression import mse_loss

from .runner import map_checkpoints, prepare_group

GROUP = "llc"


def sgld_dataset(config: dict, n: int):
    """The fixed SGLD dataset: n contexts (x, y) of the run's task from the stream "sgld"."""
    batch = build_task(config).dataset(n, "sgld")
    return batch.x, batch.y


def _estimate(path: str, step: int, *, settings: dict, seed: int, dataset_size: int,
              init_loss_rows: int | None, method: str, compile: bool = False) -> dict:
    store = RunStore.open(path, validate=False)
    model = load_model(store, step)
    model.fused_attention = True  # SGLD needs first derivatives only
    ds = estimate_llc(model, mse_loss, sgld_dataset(store.config, dataset_size), SGLDSettings(**settings),
                      seed=seed, method=method, compile=compile, init_loss_rows=init_loss_rows, label=f"step {step}",
                      warn=False)
    names = [v for v in schemas.load(GROUP)["variables"] if v != "done"]
    store.write(GROUP, step, {v: ds[v].values for v in names})
    store.mark_done(GROUP, step)
    return {"step": step, "llc_mean": float(ds.llc_mean), "llc_std": float(ds.llc_std),
            "init_loss": float(ds.init_loss), "method": ds.attrs["method"],
            **{flag: np.flatnonzero(ds[flag].values).tolist() for flag in ("diverged", "not_converged", "escaped")}}


def sampler_attrs(settings: SGLDSettings, seed: int, dataset_size: int, init_loss_rows: int | None) -> dict:
    """Everything that determines the stored numbers (the path chosen and ``compile`` are not:
    they only round)."""
    return {**settings.to_dict(), "seed": seed, "dataset_size": dataset_size,
            "init_loss_rows": dataset_size if init_loss_rows is None else init_loss_rows,
            "dataset": "task stream 'sgld'", "loss": "mean squared error over all K positions (eq. 2)"}


def prepare(store: RunStore, attrs: dict, num_chains: int, num_draws: int, *, overwrite: bool) -> None:
    """Allocate the llc group, or check that the existing one was made with the same settings."""
    coords = {"step": store.steps("params"), "chain": np.arange(num_chains), "draw": np.arange(num_draws)}
    prepare_group(store, GROUP, coords, attrs, "LLC estimates", overwrite=overwrite)


def run(path, settings: SGLDSettings, *, seed: int = 0, dataset_size: int, init_loss_rows: int | None = None,
        steps=None, method: str = "auto", compile: bool = False, overwrite: bool = False, workers: int = 0,
        scheduler: str | None = None, threads: int | None = None, progress: bool = True) -> list[dict]:
    """Estimate the LLC at every done checkpoint (or at ``steps``) not yet done; returns one
    summary dict per checkpoint computed now.

    ``compile=True`` runs the gradient under ``torch.compile`` (with the explicit attention, which
    it fuses itself) for about 10–20 s of compiling per checkpoint; it paid off for long chains at
    small batches, but at m = 1,024 the eager loop with the fused attention kernel is faster
    (benchmarks/llc_throughput.py --compile); numbers agree within rounding."""
    store = RunStore.open(path)
    if dataset_size < settings.batch_size:
        raise StoreError(f"the SGLD dataset ({dataset_size}) is smaller than the batch ({settings.batch_size})")
    attrs = sampler_attrs(settings, seed, dataset_size, init_loss_rows)
    prepare(store, attrs, settings.num_chains, settings.num_draws, overwrite=overwrite)
    available = store.done_steps("params")
    wanted = available if steps is None else np.intersect1d(available, np.asarray(steps))
    if steps is not None and len(wanted) < len(np.unique(steps)):
        missing = sorted(set(np.asarray(steps).tolist()) - set(available.tolist()))
        raise StoreError(f"steps {missing[:5]} are not written checkpoints of {path}")
    pending = np.setdiff1d(wanted, store.done_steps(GROUP))
    return map_checkpoints(_estimate, path, pending, workers=workers, scheduler=scheduler, threads=threads,
                           progress=progress, desc="llc", settings=asdict(settings), seed=seed,
                           dataset_size=dataset_size, init_loss_rows=init_loss_rows, method=method,
                           compile=compile)


def summary_table(path) -> str:
    """One line per done checkpoint: LLC, its spread over chains, ℓ_n(w*) and flagged chains."""
    ds = RunStore.open(path, mode="r").dataset(GROUP)
    ds = ds.sel(step=ds.step[ds.done.values])
    lines = [f"{'step':>8} {'llc':>9} {'± std':>8} {'init loss':>10}  flags"]
    for s in ds.step.values:
        d = ds.sel(step=s)
        flags = ", ".join(f"{f} {np.flatnonzero(d[f].values).tolist()}" for f in ("diverged", "not_converged", "escaped")
                          if d[f].values.any())
        lines.append(f"{int(s):>8} {float(d.llc_mean):>9.2f} {float(d.llc_std):>8.2f} {float(d.init_loss):>10.4f}  {flags}")
    return "\n".join(lines)


def flagged(results: list[dict]) -> str | None:
    """A one-paragraph warning naming the checkpoints and chains whose diagnostics failed."""
    parts = []
    for r in sorted(results, key=lambda r: r["step"]):
        bad = [f"{flag} chains {r[flag]}" for flag in ("diverged", "not_converged", "escaped") if r[flag]]
        if bad:
            parts.append(f"step {r['step']}: " + "; ".join(bad))
    return ("LLC diagnostics flagged " + " | ".join(parts)) if parts else None


def as_dataset(path) -> xr.Dataset:
    return RunStore.open(path, mode="r").dataset(GROUP)
