"""Many runs at once: a grid of seeds (and options) trained and analysed as one dask computation.

The paper's claims rest on many runs (B.4: five seeds per setting, "a consistent set of stages
across five seeds"). :func:`run_sweep` trains every run of a grid as a task of its own (one run
per worker process, torch threads set on purpose) and, as each run's training finishes, plans its
LLC, Hessian and observables (the driver allocates the groups and holds their write locks: only
it changes metadata) and submits their per-checkpoint tasks to the same cluster, so W workers stay
busy while any work is left rather than draining one store at a time. When a run's LLC is
complete its stages are fitted as one more task. Each store's ``done`` flags are the truth: the
same sweep started again trains nothing that is complete and recomputes no done checkpoint.

A run that fails (training diverged, a store holding another run, a refused setting) is reported
in the final table with its message; the other runs go on.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from dataclasses import dataclass, field

import dask
import numpy as np
from tqdm.auto import tqdm

from devarray import observables as obs
from devarray.errors import ConfigError, DevarrayError
from devarray.location import Location
from devarray.settings import get
from devarray.store import RunStore

from . import hessian, llc, observe, stages
from .runner import _with_threads

PIPELINES = ("llc", "hessian", "observe", "stages")


# ---------------------------------------------------------------------- the grid
def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3,7"`` and mixtures (``"0-2,9"``) too."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(p) for p in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds += range(lo, hi + 1)
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(
                f"--seeds takes a range or list of non-negative integers (0-4, or 0,2,5), got {text!r}"
            ) from None
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds takes non-negative integers, got {text!r}")
    return list(dict.fromkeys(seeds))


def parse_sets(items: list[str], setting: str) -> dict[str, list]:
    """``["lr=0.001,0.003"]`` -> {"lr": [0.001, 0.003]}: training options of the setting (by
    Python name or flag, ``steps`` is ``num_steps``), each value converted as its flag would be."""
    options = get(setting).train_options
    by_flag = {spec["flag"].lstrip("-").replace("-", "_"): dest for dest, spec in options.items()}
    out: dict[str, list] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        dest = key if key in options else by_flag.get(key)
        if not sep or not values:
            raise ConfigError(f"--set takes KEY=V1,V2,..., got {item!r}")
        if dest is None:
            raise ConfigError(
                f"--set {key}: the {setting} setting has no training option {key!r}; "
                f"choose one of {', '.join(sorted(options))}"
            )
        kind = options[dest]["type"]
        try:
            out[dest] = [kind(v) for v in values.split(",")]
        except ValueError:
            raise ConfigError(f"--set {key}: {values!r} are not all {kind.__name__} values") from None
    return out


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: the setting, preset, seed and option values, and where its store lives."""

    name: str
    setting: str
    preset: str
    seed: int
    options: tuple = ()  # ((name, value), ...) of the --set grid
    location: Location = field(default=None, compare=False)

    def config(self):
        return get(self.setting).config(self.preset, self.seed, **dict(self.options))


def _value_label(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def grid(
    setting: str,
    preset: str,
    seeds: list[int],
    sets: dict[str, list] | None = None,
    out_dir: str = "stores",
    storage_options: dict | None = None,
) -> list[RunSpec]:
    """Every combination of ``seeds`` and the ``sets`` values, each config validated now (a bad
    value stops the sweep before anything runs)."""
    get(setting)  # unknown setting: one-line error
    sets = sets or {}
    keys = list(sets)
    base = Location.of(out_dir, storage_options)
    specs = []
    for seed in seeds:
        for values in itertools.product(*(sets[k] for k in keys)):
            options = tuple(zip(keys, values))
            name = f"{setting}-{preset}-s{seed}" + "".join(f"-{k}{_value_label(v)}" for k, v in options)
            spec = RunSpec(name, setting, preset, seed, options, base.child(f"{name}.zarr"))
            spec.config()
            specs.append(spec)
    return specs


# ---------------------------------------------------------------------- tasks
def _train(location: Location, config) -> dict:
    from devarray.train import train

    summary = train(location, config, progress=False)
    return {"steps_run": summary["steps_run"], "seconds": summary["seconds"]}


def trained(spec: RunSpec) -> bool:
    """Whether the run's store holds this run complete (its last checkpoint done, same config)."""
    if not spec.location.exists("zarr.json"):
        return False
    try:
        store = RunStore.open(spec.location, mode="r", validate=False)
    except DevarrayError:
        return False
    config = spec.config()
    return store.config == config.to_dict() and int(config.checkpoints()[-1]) in set(
        store.done_steps("params").tolist()
    )


# ---------------------------------------------------------------------- the computation
@dataclass
class _Run:
    spec: RunSpec
    error: str | None = None
    pending: dict[str, int] = field(default_factory=dict)  # pipeline -> tasks in flight
    locks: dict[str, contextlib.ExitStack] = field(default_factory=dict)
    failed: set = field(default_factory=set)  # the pipelines that failed (stages need the LLC whole)
    finished: bool = False

    def fail(self, where: str, error: BaseException) -> None:
        self.failed.add(where)
        if self.error is None:
            message = str(error) if isinstance(error, DevarrayError) else f"{type(error).__name__}: {error}"
            self.error = f"{where}: {message}"


@dataclass
class SweepResult:
    """The runs of a sweep, the number of tasks this call computed by kind, and each failure."""

    specs: list[RunSpec]
    computed: dict[str, int]
    errors: dict[str, str]

    def table(self) -> str:
        return sweep_table(self.specs, self.errors)


def _analysis_presets(spec: RunSpec, config: dict, llc_preset: str | None, hessian_preset: str | None):
    setting = get(spec.setting)
    presets = setting.llc_presets_for(config)
    name = llc_preset or (spec.preset if spec.preset in presets else "quick")
    if name not in presets:
        raise ConfigError(f"unknown LLC preset {name!r}; choose one of {', '.join(presets)}")
    hname = hessian_preset or (spec.preset if spec.preset in setting.hessian_presets else "quick")
    if hname not in setting.hessian_presets:
        raise ConfigError(f"unknown Hessian preset {hname!r}; choose one of {', '.join(setting.hessian_presets)}")
    return presets[name], dict(setting.hessian_presets[hname])


def check(specs: list[RunSpec], pipelines=PIPELINES, llc_preset=None, hessian_preset=None) -> None:
    """Refuse an unknown pipeline or analysis preset before any cluster starts or run trains."""
    unknown = sorted(set(pipelines) - set(PIPELINES))
    if unknown:
        raise ConfigError(f"unknown pipeline {unknown[0]!r} in --pipelines; choose from {', '.join(PIPELINES)}")
    for spec in specs:
        _analysis_presets(spec, spec.config().to_dict(), llc_preset, hessian_preset)


def run_sweep(
    specs: list[RunSpec],
    *,
    client,
    pipelines=PIPELINES,
    llc_preset: str | None = None,
    hessian_preset: str | None = None,
    threads: int = 1,
    progress: bool = True,
) -> SweepResult:
    """Train and analyse every run of ``specs`` on ``client``'s cluster (see the module docstring)."""
    from distributed import as_completed

    check(specs, pipelines, llc_preset, hessian_preset)
    runs = {spec.name: _Run(spec) for spec in specs}
    owner: dict = {}  # future -> (run name, kind)
    computed = {"train": 0, **{p: 0 for p in pipelines}}
    queue = as_completed()
    bar_runs = tqdm(total=len(specs), desc="runs", unit="run", disable=not progress, position=0)
    bar_ckpt = tqdm(total=0, desc="checkpoints", unit="ckpt", disable=not progress, position=1)

    def submit(run: _Run, kind: str, fn, *args, **kwargs) -> None:
        key = f"{kind}-{run.spec.name}-{args[1] if len(args) > 1 else 'all'}-{uuid.uuid4().hex[:8]}"
        future = client.submit(_with_threads(fn, threads), *args, key=key, pure=False, **kwargs)
        owner[future] = (run.spec.name, kind)
        run.pending[kind] = run.pending.get(kind, 0) + 1
        queue.add(future)
        if kind != "train":
            bar_ckpt.total += 1
            bar_ckpt.refresh()

    def settle(run: _Run) -> None:
        """Release the locks of finished pipelines; count the run once nothing is left."""
        for kind in [k for k, stack in run.locks.items() if not run.pending.get(k)]:
            run.locks.pop(kind).close()
        if not run.finished and not any(run.pending.values()):
            run.finished = True
            bar_runs.update()

    def analyse(run: _Run) -> None:
        """The run is trained: plan its pipelines under their locks and submit every checkpoint."""
        store_path = run.spec.location
        config = run.spec.config().to_dict()
        lp, hp = _analysis_presets(run.spec, config, llc_preset, hessian_preset)
        requests = {
            "llc": lambda: llc.request(store_path, lp.settings(), dataset_size=lp.dataset_size),
            "hessian": lambda: hessian.request(store_path, **hp),
            "observe": lambda: observe.request(store_path),
        }
        for kind, make in requests.items():
            if kind not in pipelines:
                continue
            stack = contextlib.ExitStack()
            try:
                req = make()
                stack.enter_context(req.store.writing(req.group))
                jobs = req.plan()
            except DevarrayError as e:
                stack.close()
                run.fail(kind, e)
                continue
            run.locks[kind] = stack
            for job in jobs:
                for call in job.calls():
                    submit(run, kind, job.task, *call, **job.kwargs)
        stage_if_ready(run)

    def stage_if_ready(run: _Run) -> None:
        busy = run.pending.get("llc") or run.pending.get("stages")
        if "stages" not in pipelines or busy or {"train", "llc"} & run.failed:
            return
        store = RunStore.open(run.spec.location, mode="r", validate=False)
        if not store.has_group("llc") or stages.is_current(store):
            return
        submit(run, "stages", stages.stages_task, run.spec.location)

    sync = dask.config.set(scheduler="synchronous")  # the driver's reads stay here, off the cluster
    sync.__enter__()
    try:
        for run in runs.values():
            if trained(run.spec):
                analyse(run)
            else:
                submit(run, "train", _train, run.spec.location, run.spec.config())
            settle(run)
        for future in queue:
            name, kind = owner.pop(future)
            run = runs[name]
            run.pending[kind] -= 1
            if future.status == "error":
                run.fail(kind, future.exception())
            else:
                computed[kind] += 1
                if kind == "train":
                    analyse(run)
                elif kind == "llc":
                    stage_if_ready(run)
            if kind != "train":
                bar_ckpt.update()
            settle(run)
    finally:
        sync.__exit__(None, None, None)
        for run in runs.values():
            for stack in run.locks.values():
                stack.close()
        bar_runs.close()
        bar_ckpt.close()
    errors = {name: run.error for name, run in runs.items() if run.error}
    return SweepResult(specs, computed, errors)


# ---------------------------------------------------------------------- the table
def run_row(spec: RunSpec, error: str | None = None) -> dict:
    """One run's state, read from its store (the truth), not from what this process saw."""
    row = {"run": spec.name, "seed": spec.seed, "options": dict(spec.options), "error": error}
    if not spec.location.exists("zarr.json"):
        return {**row, "trained": 0, "checkpoints": 0}
    try:
        store = RunStore.open(spec.location, mode="r", validate=False)
        total = len(store.steps("params"))
        row.update(trained=len(store.done_steps("params")), checkpoints=total)
        for group in ("llc", "hessian"):
            row[group] = len(store.done_steps(group)) if store.has_group(group) else 0
        # checkpoints with every observable registered for the setting done (training writes a few)
        wanted = obs.names(task=get(spec.setting).observables)
        have = set(store.variables("observables")) if store.has_group("observables") else set()
        if wanted and all(f"done_{n}" in have for n in wanted):
            masks = [store.array("observables", f"done_{n}")[:].astype(bool) for n in wanted]
            row["observe"] = int(np.logical_and.reduce(masks).sum())
        else:
            row["observe"] = 0
        ev = store.dataset("eval")
        done_eval = store.done_steps("eval")
        if len(done_eval):
            row["test_loss"] = float(ev.test_loss.sel(step=done_eval[-1]))
        if row.get("llc"):
            row["llc_last"] = float(store.dataset("llc").llc_mean.sel(step=store.done_steps("llc")[-1]))
        if store.has_group("stages"):
            st = store.dataset("stages")
            row["boundaries"] = [int(s) for s in st.boundary_step.values]
    except DevarrayError as e:
        row["error"] = error or str(e)
    return row


def sweep_table(specs: list[RunSpec], errors: dict[str, str] | None = None) -> str:
    """One row per run: trained checkpoints, LLC, Hessian and observables done of all, stage
    boundaries, final test loss and LLC; a failed run's message in its row."""
    errors = errors or {}
    rows = [run_row(s, errors.get(s.name)) for s in specs]
    width = max(len(r["run"]) for r in rows)
    lines = [
        f"{'run':<{width}} {'trained':>9} {'llc':>7} {'hessian':>7} {'observe':>7} {'test loss':>9} "
        f"{'llc last':>8}  stage boundaries / status"
    ]
    for r in rows:
        total = r.get("checkpoints", 0)

        def frac(key, r=r, total=total):
            return f"{r.get(key, 0)}/{total}" if total else "-"

        loss = f"{r['test_loss']:.4f}" if "test_loss" in r else "-"
        last = f"{r['llc_last']:.2f}" if "llc_last" in r else "-"
        status = f"FAILED {r['error']}" if r["error"] else " ".join(map(str, r.get("boundaries", []))) or "-"
        lines.append(
            f"{r['run']:<{width}} {frac('trained'):>9} {frac('llc'):>7} {frac('hessian'):>7} {frac('observe'):>7} "
            f"{loss:>9} {last:>8}  {status}"
        )
    failed = sum(1 for r in rows if r["error"])
    lines.append(f"{len(rows) - failed} of {len(rows)} runs ok" + (f", {failed} failed" if failed else ""))
    return "\n".join(lines)
