"""Registered observables at every checkpoint of a run store, written to ``observables``.

One task per checkpoint computes every requested observable with the weights loaded once, on
the probe fixed by ``probe_seed``. Each observable has its own done flag: done pairs are
skipped, so adding an observable later computes only that one. ``modules`` are Python files or
module names that register observables; workers import them before computing, which is how a
user's own observable reaches a dask cluster.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from devarray import observables as obs
from devarray import store_observables as storage
from devarray.checkpoints import load_model
from devarray.errors import StoreError
from devarray.settings import setting_for
from devarray.store import RunStore

from .runner import Job, Request, raise_first, run_requests, selected_steps


def import_modules(modules: list[str]) -> None:
    """Import each file path or module name (registering the observables it defines)."""
    for m in modules:
        if m.endswith(".py"):
            path = Path(m).resolve()
            if not path.exists():
                raise StoreError(f"observable module {m} does not exist", argument="modules")
            name = f"devarray_user_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            importlib.import_module(m)


def _observe(path: str, step: int, *, names: list[str], probe_seed: int, modules: list[str]) -> dict:
    missing = [n for n in names if n not in obs.names()]
    if missing:
        import_modules(modules)
    store = RunStore.open(path, validate=False)
    probe = setting_for(store.config).probe(store.config, probe_seed)
    ds = obs.compute(load_model(store, step), names, probe)
    storage.write(store, step, storage.values(ds, names))
    return {"step": step, "names": names}


def request(
    path,
    names: list[str] | None = None,
    *,
    probe_seed: int = 0,
    modules: list[str] = (),
    steps=None,
    overwrite: bool = False,
    redo: bool = False,
) -> Request:
    """The observables ``names`` of one store, checked (nothing written yet), to plan under its lock;
    ``redo`` recomputes them at ``steps`` even where done (allocated already, with the same probe)."""
    modules = list(modules)
    import_modules(modules)
    store = RunStore.open(path)
    setting = setting_for(store.config)
    names = obs.names(task=setting.observables) if names is None else list(names)
    unknown = [n for n in names if n not in obs.names()]
    if unknown:
        raise StoreError(
            f"unknown observable {unknown[0]!r}; registered for this run: "
            f"{', '.join(obs.names(task=setting.observables))} (register your own with "
            "@devarray.observables.observable and pass --module FILE)",
            argument="names",
        )
    wanted = selected_steps(store, steps)
    probe = setting.probe(store.config, probe_seed)

    def plan() -> list[Job]:
        if redo:
            store.clear_done(storage.GROUP, wanted, flags=[storage.done_flag(n) for n in names])
        return _plan(store, names, wanted, probe, probe_seed=probe_seed, modules=modules, overwrite=overwrite)

    return Request(store, storage.GROUP, plan)


def run(
    path,
    names: list[str] | None = None,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    wait: bool = False,
    **options,
) -> list[dict]:
    """Compute ``names`` (default: every observable registered for the run's setting) where not
    yet done, at every written checkpoint or at ``steps``; ``options`` are :func:`request`'s."""
    compute = dict(workers=workers, scheduler=scheduler, threads=threads, progress=progress, desc="observe")
    outcomes = run_requests([request(path, names, **options)], wait=wait, **compute)
    raise_first(outcomes)
    return [r for out in outcomes for r in out.results]


def settings_from_store(store: RunStore) -> dict:
    """The arguments of :func:`run` that made the stored observables (what ``redo`` uses)."""
    names = storage.allocated_names(store)
    g = store.group(storage.GROUP) if names else {}
    seeds = {g[k].attrs.get("probe_seed", 0) for k in (g.array_keys() if names else ()) if "observable" in g[k].attrs}
    if len(seeds) > 1:
        raise StoreError(
            f"the observables of {store.path} were measured on probes of several seeds ({sorted(seeds)}); "
            "redo them one seed at a time with devarray observe --probe-seed"
        )
    return {"names": names, "probe_seed": int(seeds.pop()) if seeds else 0}


def _plan(store, names, wanted, probe, *, probe_seed, modules, overwrite) -> list[Job]:
    fresh = [n for n in names if overwrite or not storage.allocated(store, n)]
    for n in names:
        if n not in fresh:
            storage.check_probe(store, n, probe.attrs())
    if fresh:
        example = obs.compute(load_model(store, int(wanted[0])), fresh, probe)
        storage.allocate(store, fresh, example, overwrite=overwrite)
    # group the checkpoints by which observables they still miss, so each task loads weights once
    done = {n: set(store.done_steps(storage.GROUP, storage.done_flag(n)).tolist()) for n in names}
    todo: dict[tuple[str, ...], list[int]] = {}
    for s in wanted:
        need = tuple(n for n in names if s not in done[n])
        if need:
            todo.setdefault(need, []).append(int(s))
    return [
        Job(_observe, store.location, group_steps, dict(names=list(need), probe_seed=probe_seed, modules=modules))
        for need, group_steps in todo.items()
    ]
