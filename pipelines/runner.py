"""The per-checkpoint map shared by every pipeline.

A pipeline is a function ``task(path, step, **kwargs) -> dict`` that opens the store, computes
one checkpoint, writes its region and sets its done flag. :func:`map_checkpoints` runs it over
the pending steps with progress: in this process (``workers=0``), on a fresh
``distributed.LocalCluster`` of ``workers`` single-threaded processes, or on the scheduler at
``scheduler``. Torch's thread count is set inside every task on purpose (``threads``): equal
thread counts give bitwise-equal numbers whichever way the pipeline runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from devarray.errors import StoreError
from devarray.store import RunStore, settings_id


def done(ds: xr.Dataset, flag: str = "done") -> xr.Dataset:
    """The checkpoints of a group's dataset whose ``flag`` is set and whose results carry the
    group's settings fingerprint (readers trust ``done``, and ``settings_id`` where recorded)."""
    mask = np.asarray(ds[flag].values, dtype=bool)
    if "settings_id" in ds and "settings_id" in ds.attrs:
        mask &= np.asarray(ds.settings_id.values) == ds.attrs["settings_id"]
    return ds.isel(step=mask)


def write_checkpoint(store: RunStore, group: str, step: int, values: dict, expected_id: int) -> None:
    """One checkpoint's results: the data with the fingerprint of the settings they were made
    with, then — if the group still holds those settings — the done flag."""
    store.write(group, step, {**values, "settings_id": np.int64(expected_id)})
    live = store.group(group).attrs.get("settings_id")
    if live != expected_id:
        raise StoreError(
            f"the settings of {group} in {store.path} changed while step {step} was computed "
            "(another writer passed --overwrite); this result is not marked done"
        )
    store.mark_done(group, step)


def selected_steps(store: RunStore, steps=None) -> np.ndarray:
    """The written checkpoints a pipeline should cover: all of them, or ``steps``, each of which
    must be a written checkpoint (a step that is not is refused, never silently skipped)."""
    available = store.done_steps("params")
    if not len(available):
        raise StoreError(f"{store.path} has no written checkpoint yet; train it first")
    if steps is None:
        return available
    asked = np.unique(np.asarray(list(steps), dtype=np.int64))
    missing = np.setdiff1d(asked, available)
    if len(missing):
        shown = ", ".join(map(str, missing[:5].tolist())) + ("…" if len(missing) > 5 else "")
        raise StoreError(
            f"steps {shown} are not written checkpoints of {store.path} (checkpoints "
            f"{available[0]}…{available[-1]}; `devarray info {store.path}` lists them)",
            argument="steps",
        )
    return asked


def pending_steps(store: RunStore, group: str, steps=None, flag: str = "done") -> np.ndarray:
    """:func:`selected_steps` less those already done in ``group`` (so a rerun resumes)."""
    return np.setdiff1d(selected_steps(store, steps), store.done_steps(group, flag))


def prepare_group(
    store, group: str, coords: dict, attrs: dict, what: str, *, overwrite: bool, variables: dict | None = None
) -> int:
    """Allocate ``group`` with its settings as attrs, or check that the stored one was made with
    the same settings: results made otherwise are never mixed in or replaced without ``overwrite``.
    The attrs get the settings' fingerprint (``settings_id``), returned for the tasks to write.
    ``variables`` (VarSpecs) replace the schema's specs of the same names (e.g. with extra dims)."""
    attrs = {**attrs, "settings_id": settings_id(attrs)}
    if not overwrite:
        store.check_intact(group)
    if store.has_group(group) and not overwrite:
        stored = {k: store.group(group).attrs.get(k) for k in attrs}
        if stored != attrs:
            diff = sorted(k for k in attrs if stored.get(k) != attrs[k])
            raise StoreError(
                f"{store.path} holds {what} made with other settings ({', '.join(diff)}); "
                "pass --overwrite to recompute them all"
            )
        return attrs["settings_id"]
    store.create_group(group, coords, variables=variables, attrs=attrs, overwrite=overwrite)
    return attrs["settings_id"]


def _with_threads(task: Callable, threads: int | None) -> Callable:
    def run(*args, **kwargs):
        if not threads:
            return task(*args, **kwargs)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return task(*args, **kwargs)
        finally:
            torch.set_num_threads(before)  # a task leaves the caller's thread count as it found it

    run.__name__ = getattr(task, "__name__", "task")
    return run


@contextlib.contextmanager
def client_for(workers: int, scheduler: str | None):
    """A dask ``Client``: connected to ``scheduler``, or on a new LocalCluster; None for in-process."""
    if not scheduler and workers <= 0:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def map_checkpoints(
    task: Callable[..., dict],
    path,
    steps: Iterable[int],
    *,
    workers: int = 0,
    scheduler: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    desc: str = "",
    **kwargs,
) -> list[dict]:
    """Run ``task(str(path), step, **kwargs)`` for every step; results in completion order.

    ``threads`` defaults to the machine's cores in-process and to 1 per worker on a cluster."""
    steps = [int(s) for s in steps]
    path = str(path)
    if not steps:
        return []
    distributed = bool(scheduler) or workers > 0
    threads = threads or (1 if distributed else torch.get_num_threads() or os.cpu_count())
    run = _with_threads(task, threads)
    bar = tqdm(total=len(steps), desc=desc, unit="ckpt", disable=not progress)
    results = []
    with client_for(workers, scheduler) as client:
        if client is None:
            for step in steps:
                results.append(run(path, step, **kwargs))
                bar.update()
        else:
            from distributed import as_completed

            futures = [
                client.submit(run, path, step, pure=False, key=f"{desc or 'task'}-{step}", **kwargs) for step in steps
            ]
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
    bar.close()
    return results
