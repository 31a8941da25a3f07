"""The per-checkpoint map shared by every pipeline.

A pipeline is a function ``task(path, step, **kwargs) -> dict`` that opens the store, computes
one checkpoint, writes its region and sets its done flag. :func:`run_jobs` runs the pending steps
of any number of stores as one batch with progress: in this process (``workers=0``), on a fresh
``distributed.LocalCluster`` of ``workers`` single-threaded processes, or on the scheduler at
``scheduler``; :func:`map_checkpoints` is the one-store case. A pipeline given several stores
takes every store's write lock and plans every store (:class:`Request`) before it submits
anything, so all their checkpoints reach the cluster together. Torch's thread count is set
inside every task on purpose (``threads``): equal thread counts give bitwise-equal numbers
whichever way the pipeline runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dask
import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from devarray.errors import DevarrayError, StoreError
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
        # a task's own xarray reads are lazy dask arrays: compute them right here, never as new
        # tasks on the cluster the task runs on (they would queue behind it and wait for it)
        with dask.config.set(scheduler="synchronous"):
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


@dataclass
class Job:
    """One store's share of a pipeline: ``task(path, step, **kwargs)`` for each of ``steps``
    (``steps=None``: one ``task(path, **kwargs)`` for the whole store, e.g. its stages)."""

    task: Callable[..., dict] | None
    path: object  # a str path or a devarray.location.Location (picklable: tasks open the store themselves)
    steps: list[int] | None
    kwargs: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return 1 if self.steps is None else len(self.steps)

    def calls(self) -> list[tuple]:
        """The positional arguments of each of its tasks."""
        return [(self.path,)] if self.steps is None else [(self.path, int(s)) for s in self.steps]


@dataclass
class Outcome:
    """What became of a job: the results of its finished tasks and the first error, if any."""

    job: Job
    results: list[dict] = field(default_factory=list)
    error: BaseException | None = None


@dataclass
class Request:
    """A pipeline asked of one store, checked and not yet started: ``plan()`` allocates or checks
    the group and returns the store's jobs; it runs while the group's write lock is held."""

    store: RunStore
    group: str
    plan: Callable[[], list[Job]]


def run_requests(requests: list[Request], *, wait: bool = False, isolate: bool = False, **compute) -> list[Outcome]:
    """Take every store's write lock, plan every request, then run all their checkpoints as one
    batch (:func:`run_jobs`): a cluster of W workers stays busy until the last checkpoint of the
    last store, instead of draining one store at a time.

    ``isolate=False`` (the CLI's behaviour) stops before any work when one store's plan is refused;
    ``isolate=True`` (sweeps) reports that store's error in its outcome and runs the others."""
    refused: list[Outcome] = []
    jobs: list[Job] = []
    with contextlib.ExitStack() as locks:
        # one order for every process, so two commands waiting on overlapping stores never deadlock
        for req in sorted(requests, key=lambda r: (str(r.store.path), r.group)):
            try:
                locks.enter_context(req.store.writing(req.group, wait=wait))
                jobs += req.plan()
            except DevarrayError as e:
                if not isolate:
                    raise
                refused.append(Outcome(Job(None, req.store.location, []), error=e))
        return refused + run_jobs(jobs, **compute)


def _task_key(desc: str, job: Job, call: tuple) -> str:
    # unique on the cluster: several stores share step numbers, and a rerun must not meet old keys
    name = str(job.path).rstrip("/").rsplit("/", 1)[-1]
    return f"{desc or 'task'}-{name}-{call[1] if len(call) > 1 else 'all'}-{uuid.uuid4().hex[:8]}"


def run_jobs(
    jobs: list[Job],
    *,
    workers: int = 0,
    scheduler: str | None = None,
    client=None,
    threads: int | None = None,
    progress: bool = True,
    desc: str = "",
) -> list[Outcome]:
    """Run every task of every job, in this process (``workers=0``), on a new LocalCluster of
    ``workers`` processes, on the scheduler at ``scheduler`` or on a given ``client``, all of
    them submitted at once. A failing task ends its own job (its error is in the job's outcome;
    in-process the job's remaining steps are skipped); the other jobs go on. Results within a
    job are in completion order.

    ``threads`` defaults to the machine's cores in-process and to 1 per worker on a cluster."""
    outcomes = [Outcome(job) for job in jobs]
    total = sum(job.size for job in jobs)
    if not total:
        return outcomes
    distributed = client is not None or bool(scheduler) or workers > 0
    threads = threads or (1 if distributed else torch.get_num_threads() or os.cpu_count())
    bar = tqdm(total=total, desc=desc, unit="ckpt", disable=not progress)
    given = contextlib.nullcontext(client) if client is not None else client_for(workers, scheduler)
    # the driver's own reads stay in this process too (the Client would make itself their scheduler)
    with given as client, dask.config.set(scheduler="synchronous"):
        if client is None:
            for out in outcomes:
                run = _with_threads(out.job.task, threads)
                for call in out.job.calls():
                    try:
                        out.results.append(run(*call, **out.job.kwargs))
                    except DevarrayError as e:
                        out.error = e
                        bar.update(out.job.size - len(out.results))
                        break
                    bar.update()
        else:
            from distributed import as_completed

            owner = {}
            for out in outcomes:
                run = _with_threads(out.job.task, threads)
                for call in out.job.calls():
                    future = client.submit(run, *call, pure=False, key=_task_key(desc, out.job, call), **out.job.kwargs)
                    owner[future] = out
            for future in as_completed(list(owner)):
                out = owner[future]
                if future.status == "error":
                    out.error = out.error or future.exception()
                else:
                    out.results.append(future.result())
                bar.update()
    bar.close()
    return outcomes


def raise_first(outcomes: list[Outcome]) -> None:
    """Re-raise the first error among ``outcomes`` (the single-store behaviour: stop and say why)."""
    for out in outcomes:
        if out.error is not None:
            raise out.error


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
    """Run ``task(path, step, **kwargs)`` for every step of one store; results in completion order."""
    steps = [int(s) for s in steps]
    outcomes = run_jobs(
        [Job(task, path, steps, kwargs)],
        workers=workers,
        scheduler=scheduler,
        threads=threads,
        progress=progress,
        desc=desc,
    )
    raise_first(outcomes)
    return outcomes[0].results
