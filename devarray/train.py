"""The generic training loop: a setting's model trained into a run store, checkpoint by checkpoint.

The setting (``devarray.settings``) gives the model, the optimiser, the learning rate of each
step, the training batch of each step, the loss and the evaluation; this loop owns what every
setting shares. At every checkpoint of the schedule it writes every parameter tensor
(``params``), the setting's evaluation (``eval``), the cheap train-time observables
(``observables``) and the per-step loss and learning rate since the last checkpoint (``train``);
then the ``done`` flags; then the optimiser's moments (``optimizer``).

Resuming is exact: each step's batch is a pure function of (seed, step) and the learning rate of
the step, so the only state is the model and the optimiser's moments (Adam and AdamW keep
``exp_avg`` and ``exp_avg_sq``), both kept in the store. A run killed at any moment and started
again continues from the last checkpoint whose weights and optimiser state are both done, and
writes the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import observables as obs
from . import store_observables
from .checkpoints import load_state
from .errors import StoreError, TrainingDiverged
from .location import Location, is_url
from .settings import RunConfig, get, setting_for
from .store import RunStore, VarSpec

PROBE_SEED = 0  # the probe of train-time observables; pipelines/observe.py defaults to the same
MOMENTS = ("exp_avg", "exp_avg_sq")  # the optimiser state kept per checkpoint (Adam, AdamW)

__all__ = ["PROBE_SEED", "TrainingDiverged", "format_summary", "make_config", "prepare_store", "train"]


def make_config(setting: str, preset: str = "quick", seed: int = 0, **overrides) -> RunConfig:
    """The run config of ``setting``'s ``preset`` with ``overrides`` (None values are ignored)."""
    return get(setting).config(preset, seed, **overrides)


def prepare_store(path, config: RunConfig, *, overwrite: bool = False) -> tuple[RunStore, bool]:
    """Open the store of this run to resume it, or create and allocate it.

    Returns (store, resumed). A store made with another config is never touched without
    ``overwrite``."""
    cfg = config.to_dict()
    setting = setting_for(cfg)
    if Location.of(path).exists() and not overwrite:
        store = RunStore.open(path)
        if store.config != cfg:
            diff = sorted(k for k in set(cfg) | set(store.config) if cfg.get(k) != store.config.get(k))
            raise StoreError(
                f"{path} holds a run with a different config ({', '.join(diff)} differ); "
                "pass --overwrite to replace it or choose another --out"
            )
        return store, True
    store = RunStore.create(path, cfg, overwrite=overwrite)
    model = setting.init_model(cfg)
    steps = config.checkpoints()
    dims = model.param_dims()
    state = model.state_dict()
    specs = {
        name: VarSpec(
            ("step", *d), "float32", {"long_name": name, "units": "1", "description": f"parameter tensor {name}"}
        )
        for name, d in dims.items()
    }
    coords = {"step": steps}
    for name, d in dims.items():
        for dim, n in zip(d, state[name].shape):
            coords.setdefault(dim, np.arange(n))
    store.create_group("params", coords, specs)
    n_params = sum(p.numel() for p in model.parameters())
    store.create_group(
        "optimizer",
        {"step": steps, "flat_param": np.arange(n_params)},
        attrs={"order": [n for n, _ in model.named_parameters()]},
    )
    evaluator = setting.evaluator(cfg)
    store.create_group("eval", {"step": steps, **evaluator.coords}, attrs=evaluator.attrs, schema=setting.eval_schema)
    store.create_group("train", {"train_step": np.arange(1, config.num_steps + 1)})
    store.create_group("observables", {"step": steps})
    names = obs.names(train_time=True, task=setting.observables)
    if names:  # shapes from the initial model; values are written at every checkpoint
        model.eval()
        store_observables.allocate(store, names, obs.compute(model, names, setting.probe(cfg, PROBE_SEED)))
    return store, False


def train(
    path,
    config: RunConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    write: bool = True,
) -> dict:
    """Train (or resume) the run of ``config`` into the store at ``path``. Returns a summary.

    Checkpoints are evaluated in the training thread, then written by one background thread
    while training goes on (data first, done flags after, in order, so a kill at any moment
    leaves a consistent store). ``write=False`` runs the identical loop, evaluation included,
    with no store at all: the throughput baseline of ``benchmarks/train_throughput.py``."""
    setting = setting_for(config.to_dict())
    if write:
        config = setting.prepare(config, path, local=not is_url(path))
    cfg = config.to_dict()
    model = setting.init_model(cfg)
    opt = setting.optimizer(model, cfg)
    start = 0
    if not write:
        return _loop(None, setting, cfg, config, model, opt, 0, progress)
    store, resumed = prepare_store(path, config, overwrite=overwrite)
    with store.writing("train"):  # one trainer per store
        if resumed:
            start = _restore(store, model, opt)
        if start >= config.num_steps and config.checkpoints()[-1] in store.done_steps("params"):
            return _summary(store, 0.0, resumed_from=start, steps_run=0)
        return _loop(store, setting, cfg, config, model, opt, start, progress)


def _loop(store, setting, cfg: dict, config: RunConfig, model, opt, start: int, progress: bool) -> dict:
    """The training steps from ``start`` to the end, writing every checkpoint (none without a store)."""
    num_steps = config.num_steps
    checkpoints = config.checkpoints()
    evaluator = setting.evaluator(cfg)
    train_obs = obs.names(train_time=True, task=setting.observables)
    probe = setting.probe(cfg, PROBE_SEED) if train_obs else None
    losses = torch.empty(num_steps)
    lrs = np.empty(num_steps, dtype=np.float32)
    flushed = start  # train/ holds every step before this one
    pending = set(checkpoints[checkpoints >= start].tolist())
    bar = _progress(num_steps, start, progress)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devarray-writer") as writer:
        in_flight = None
        for step in range(start, num_steps + 1):
            if step in pending:
                if in_flight is not None and not torch.isfinite(losses[flushed:step]).all():
                    in_flight.result()  # the message below names the last checkpoint kept: let it land
                _check_finite(losses, flushed, step, store)
                snapshot = _snapshot(model, opt, evaluator, probe, train_obs)
                if in_flight is not None:
                    in_flight.result()  # one checkpoint in flight at most; re-raises write errors
                if store is not None:
                    in_flight = writer.submit(
                        _write_checkpoint,
                        store,
                        step,
                        snapshot,
                        losses[flushed:step].numpy().copy(),
                        lrs[flushed:step].copy(),
                        flushed,
                    )
                flushed = step
            if step == num_steps:
                break
            loss = setting.loss(model, *setting.train_batch(cfg, step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lrs[step] = lr = setting.learning_rate(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            losses[step] = loss.detach()
            if bar is not None and (step + 1) % 50 == 0:
                bar.update(50)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if in_flight is not None:
            in_flight.result()
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0
    if store is None:
        return {"steps_run": num_steps - start, "seconds": elapsed}
    return _summary(store, elapsed, resumed_from=start, steps_run=num_steps - start)


def _check_finite(losses: torch.Tensor, first: int, step: int, store: RunStore | None) -> None:
    """Stop before writing a checkpoint whose preceding steps saw a non-finite loss."""
    window = losses[first:step]
    if torch.isfinite(window).all():
        return
    bad = first + int(torch.nonzero(~torch.isfinite(window))[0])
    done = store.done_steps("params") if store is not None else []
    kept = f"every checkpoint up to step {done[-1]} is kept" if len(done) else "no checkpoint was written"
    raise TrainingDiverged(
        f"training loss became {losses[bad].item()} at step {bad + 1}; {kept}; "
        "retrain with a lower lr or another seed, replacing this store",
        argument="lr",
    )


@torch.no_grad()
def _snapshot(model, opt: torch.optim.Optimizer, evaluator, probe, train_obs) -> dict[str, dict[str, np.ndarray]]:
    """Copies of everything a checkpoint writes, so training can go on while it is written."""
    model.eval()
    snap = {
        "params": {k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
        "eval": evaluator(model),
        "optimizer": {m: torch.cat([opt.state[p][m].reshape(-1) for p in model.parameters()]).numpy() for m in MOMENTS}
        if opt.state
        else {},
    }
    if train_obs:
        snap["observables"] = store_observables.values(obs.compute(model, train_obs, probe), train_obs)
    model.train()
    return snap


def _write_checkpoint(store: RunStore, step: int, snap: dict, losses, lrs, first: int) -> None:
    """Every array's data in one concurrent batch, then every done flag in a second: a kill at any
    moment leaves each checkpoint either done with all its data or not done."""
    steps = slice(first, first + len(losses))
    observables, observables_done = store_observables.regions(step, snap.get("observables", {}))
    store.write_regions(
        [
            ("train", steps, {"loss": losses, "lr": lrs}),
            ("params", step, snap["params"]),
            ("eval", step, snap["eval"]),
            *observables,
            *([("optimizer", step, snap["optimizer"])] if snap["optimizer"] else []),
        ]
    )
    store.write_regions(
        [
            ("train", steps, {"done": np.ones(len(losses), bool)}),
            ("params", step, {"done": True}),
            ("eval", step, {"done": True}),
            *observables_done,
            ("optimizer", step, {"done": True}),
        ]
    )


def _restore(store: RunStore, model, opt: torch.optim.Optimizer) -> int:
    """Load the latest checkpoint that has both weights and optimiser state; return its step."""
    both = np.intersect1d(store.done_steps("params"), store.done_steps("optimizer"))
    if not len(both):
        return 0
    step = int(both[-1])
    model.load_state_dict(load_state(store, step))
    if step > 0:
        i = store.index_of("optimizer", step)
        flat = {m: torch.from_numpy(np.array(store.array("optimizer", m)[i])) for m in MOMENTS}
        offset = 0
        for p in model.parameters():
            n = p.numel()
            opt.state[p] = {
                "step": torch.tensor(float(step)),
                **{m: v[offset : offset + n].view_as(p).clone() for m, v in flat.items()},
            }
            offset += n
    return step


def _summary(store: RunStore, seconds: float, *, resumed_from: int, steps_run: int) -> dict:
    # two small arrays, not the eval group as a Dataset: opening that through xarray cost about as
    # much as all the run's checkpoint writes together (benchmarks/train_throughput.py)
    steps = store.steps("eval")
    done = np.isin(steps, store.done_steps("eval"))
    loss = store.array("eval", "test_loss")[:][done]
    return {
        "store": str(store.path),
        "final_step": int(steps[done][-1]),
        "checkpoints": int(done.sum()),
        "test_loss": float(loss[-1]),
        "min_test_loss": float(loss.min()),
        "resumed_from": resumed_from,
        "steps_run": steps_run,
        "seconds": seconds,
    }


def _progress(total: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="train", mininterval=1.0)


def format_summary(s: dict) -> str:
    if not s["steps_run"]:
        return (
            f"{s['store']} is complete: step {s['final_step']}, {s['checkpoints']} checkpoints, "
            f"test loss {s['test_loss']:.4f} (min {s['min_test_loss']:.4f})"
        )
    rate = s["steps_run"] / s["seconds"]
    resumed = f", resumed from step {s['resumed_from']}" if s["resumed_from"] else ""
    return (
        f"trained to step {s['final_step']} ({s['checkpoints']} checkpoints{resumed}): "
        f"test loss {s['test_loss']:.4f} (min {s['min_test_loss']:.4f}), "
        f"{s['steps_run']} steps in {s['seconds']:.1f}s ({rate:.0f} steps/s) -> {s['store']}"
    )
