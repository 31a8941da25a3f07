"""Hessian statistics at every checkpoint of a run store, written to ``hessian`` (appendix B.5).

One task per checkpoint: the trace (Hutchinson, with its standard error) and the top
eigenvalues (Lanczos) of the loss on a fixed batch of m contexts (m = 1,024 in the paper, stream
"hessian" of the run's task), seeded the same at every checkpoint. Done steps are skipped;
other settings are refused unless ``overwrite``.
"""

from __future__ import annotations

import numpy as np

from devarray.checkpoints import build_task, load_model
from devarray.slt.hessian import hessian_stats
from devarray.store import RunStore
from devarray.tasks.regression import mse_loss

from .runner import map_checkpoints, prepare_group

GROUP = "hessian"

# paper: B.5's PyHessian budget on m = 1,024; quick: enough for the demo's curve shape in seconds
PRESETS = {
    "paper": {"batch_size": 1024, "num_probes": 100, "top_k": 5, "num_lanczos": 64},
    "quick": {"batch_size": 256, "num_probes": 20, "top_k": 3, "num_lanczos": 24},
}


def _hessian(path: str, step: int, *, batch_size: int, num_probes: int, top_k: int, num_lanczos: int,
             seed: int) -> dict:
    store = RunStore.open(path, validate=False)
    batch = build_task(store.config).dataset(batch_size, "hessian")
    ds = hessian_stats(load_model(store, step), mse_loss, (batch.x, batch.y), num_probes=num_probes, top_k=top_k,
                       num_lanczos=num_lanczos, seed=seed)
    store.write(GROUP, step, {v: ds[v].values for v in ("trace", "trace_sem", "top_eigenvalues")})
    store.mark_done(GROUP, step)
    return {"step": step, "trace": float(ds.trace), "top": float(ds.top_eigenvalues[0])}


def run(path, *, batch_size: int = 1024, num_probes: int = 100, top_k: int = 5, num_lanczos: int = 64,
        seed: int = 0, steps=None, overwrite: bool = False, workers: int = 0, scheduler: str | None = None,
        threads: int | None = None, progress: bool = True) -> list[dict]:
    store = RunStore.open(path)
    attrs = {"batch_size": batch_size, "num_probes": num_probes, "top_k": top_k, "num_lanczos": num_lanczos,
             "seed": seed, "batch": "task stream 'hessian'", "loss": "mean squared error over all K positions (eq. 2)"}
    prepare_group(store, GROUP, {"step": store.steps("params"), "eig": np.arange(top_k)}, attrs,
                  "Hessian statistics", overwrite=overwrite)
    available = store.done_steps("params")
    wanted = available if steps is None else np.intersect1d(available, np.asarray(steps))
    pending = np.setdiff1d(wanted, store.done_steps(GROUP))
    return map_checkpoints(_hessian, path, pending, workers=workers, scheduler=scheduler, threads=threads,
                           progress=progress, desc="hessian", batch_size=batch_size, num_probes=num_probes,
                           top_k=top_k, num_lanczos=num_lanczos, seed=seed)


def as_dataset(path):
    """The done checkpoints of the hessian group."""
    ds = RunStore.open(path, mode="r").dataset(GROUP)
    return ds.isel(step=ds.done.values.astype(bool)).load()
