"""Hessian statistics at every checkpoint of a run store, written to ``hessian`` (appendix B.5).

One task per checkpoint: the trace (Hutchinson, with its standard error) and the top
eigenvalues (Lanczos) of the setting's loss on its fixed Hessian batch of m rows (m = 1,024 in
the paper), seeded the same at every checkpoint. Done steps are skipped;
other settings are refused unless ``overwrite``.
"""

from __future__ import annotations

import numpy as np

from devarray import schemas
from devarray.checkpoints import load_model
from devarray.errors import StoreError
from devarray.settings import setting_for
from devarray.slt.hessian import hessian_stats
from devarray.store import RunStore

from .runner import (
    Job,
    Request,
    done,
    pending_steps,
    prepare_group,
    raise_first,
    run_requests,
    selected_steps,
    write_checkpoint,
)

GROUP = "hessian"


def _hessian(
    path: str, step: int, *, batch_size: int, num_probes: int, top_k: int, num_lanczos: int, seed: int, settings_id: int
) -> dict:
    store = RunStore.open(path, validate=False)
    setting = setting_for(store.config)
    ds = hessian_stats(
        load_model(store, step),
        setting.loss,
        setting.hessian_batch(store.config, batch_size),
        num_probes=num_probes,
        top_k=top_k,
        num_lanczos=num_lanczos,
        seed=seed,
    )
    schemas.validate(ds, GROUP)
    write_checkpoint(
        store, GROUP, step, {v: ds[v].values for v in ("trace", "trace_sem", "top_eigenvalues")}, settings_id
    )
    return {"step": step, "trace": float(ds.trace), "top": float(ds.top_eigenvalues[0])}


def request(
    path,
    *,
    batch_size: int = 1024,
    num_probes: int = 100,
    top_k: int = 5,
    num_lanczos: int = 64,
    seed: int = 0,
    steps=None,
    overwrite: bool = False,
    redo: bool = False,
) -> Request:
    """The Hessian statistics of one store, checked (nothing written yet), to plan under its lock;
    ``redo`` recomputes ``steps`` even if done (with the settings the group already holds)."""
    store = RunStore.open(path)
    for name, value, least in (
        ("batch_size", batch_size, 1),
        ("num_probes", num_probes, 2),
        ("top_k", top_k, 1),
        ("num_lanczos", num_lanczos, top_k),
    ):
        if not isinstance(value, int) or value < least:
            raise StoreError(f"{name} must be an integer >= {least}, got {value}", argument=name)
    selected_steps(store, steps)  # refuses steps that are not checkpoints before anything is written
    attrs = {
        "batch_size": batch_size,
        "num_probes": num_probes,
        "top_k": top_k,
        "num_lanczos": num_lanczos,
        "seed": seed,
        "batch": "the setting's fixed Hessian batch (stream 'hessian')",
        "loss": setting_for(store.config).loss_description,
    }

    def plan() -> list[Job]:
        coords = {"step": store.steps("params"), "eig": np.arange(top_k)}
        sid = prepare_group(store, GROUP, coords, attrs, "Hessian statistics", overwrite=overwrite)
        if redo:  # these steps only, done or not (what is damaged may include the done flags)
            pending = selected_steps(store, steps)
            store.clear_done(GROUP, pending)
        else:
            pending = pending_steps(store, GROUP, steps)
        kwargs = dict(
            batch_size=batch_size,
            num_probes=num_probes,
            top_k=top_k,
            num_lanczos=num_lanczos,
            seed=seed,
            settings_id=sid,
        )
        return [Job(_hessian, store.location, pending.tolist(), kwargs)]

    return Request(store, GROUP, plan)


def run(
    path,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    wait: bool = False,
    **options,
) -> list[dict]:
    """Hessian statistics at every written checkpoint (or at ``steps``) not yet done; ``options``
    are :func:`request`'s."""
    compute = dict(workers=workers, scheduler=scheduler, threads=threads, progress=progress, desc="hessian")
    outcomes = run_requests([request(path, **options)], wait=wait, **compute)
    raise_first(outcomes)
    return outcomes[0].results


SETTINGS = ("batch_size", "num_probes", "top_k", "num_lanczos", "seed")


def settings_from_attrs(attrs: dict) -> dict:
    """The arguments of :func:`run` that made a group with these attrs (what ``redo`` uses)."""
    return {k: int(attrs[k]) for k in SETTINGS}


def as_dataset(path):
    """The done checkpoints of the hessian group."""
    return done(RunStore.open(path, mode="r").dataset(GROUP)).load()
