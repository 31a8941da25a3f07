"""``devarray redo STORE GROUP --steps S``: recompute a few checkpoints of a computed group with
the settings the group was made with (read back from its attrs), e.g. after ``devarray verify``
found a chunk that no longer decodes. Nothing else of the group is touched; the steps' done flags
are cleared first, so a crash half-way leaves them not done rather than wrong.
"""

from __future__ import annotations

from devarray.errors import StoreError
from devarray.store import RunStore

from . import hessian, llc, observe
from .runner import selected_steps

TRAINING = ("params", "optimizer", "eval", "train")


def run(path, group: str, steps, *, modules=(), **compute) -> list[dict]:
    """Recompute ``steps`` of ``group`` (``llc``, ``hessian`` or ``observables``); ``compute``
    takes the pipelines' runtime options (workers, scheduler, threads, progress, wait)."""
    store = RunStore.open(path)
    if group in TRAINING:
        raise StoreError(
            f"{group} is written by training, not by a pipeline; a damaged checkpoint there is rewritten "
            "by training the run again (devarray train ... --overwrite)",
            argument="group",
        )
    if group == "stages":
        raise StoreError(
            f"stages are one computation over the whole LLC curve; recompute them with devarray stages {path}",
            argument="group",
        )
    if group not in ("llc", "hessian", "observables"):
        raise StoreError(f"cannot redo group {group!r}; choose llc, hessian or observables", argument="group")
    store.check_intact(group)
    if not store.has_group(group):
        raise StoreError(f"{path} has no {group} group to redo; compute it with devarray {group.removesuffix('s')}")
    if not steps:
        raise StoreError("give the checkpoints to recompute, e.g. --steps 100,200", argument="steps")
    selected_steps(store, steps)  # a step that is not a checkpoint is refused before anything changes
    attrs = dict(store.group(group).attrs)
    if group == "llc":
        return llc.run(path, **llc.settings_from_attrs(attrs), steps=steps, redo=True, **compute)
    if group == "hessian":
        return hessian.run(path, **hessian.settings_from_attrs(attrs), steps=steps, redo=True, **compute)
    return observe.run(path, **observe.settings_from_store(store), modules=modules, steps=steps, redo=True, **compute)
