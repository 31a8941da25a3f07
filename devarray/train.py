"""Training the regression transformer into a run store (paper §3, appendix F.2.3, Table 4).

Adam without weight decay, a OneCycle learning-rate schedule with linear annealing (peak 0.003
at half the run), batch 256, MSE over all K positions. At every checkpoint of the schedule the
loop writes every parameter tensor (``params``), the test loss per position and overall on a
fixed test set plus the weight norm (``eval``), the cheap train-time observables
(``observables``) and the per-step loss and learning rate since the last checkpoint (``train``);
then the ``done`` flags; then Adam's moments (``optimizer``).

Resuming is exact: each step's batch is drawn from a generator seeded by (seed, step) and the
learning rate is a function of the step, so the only state is the model and Adam's moments,
both kept in the store (``params``, ``optimizer``). A run killed at any moment and started
again continues from the last checkpoint whose weights and optimiser state are both done, and
writes the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from . import observables as obs
from .observables import storage as obs_storage
from .checkpoints import build_model, checkpoint_schedule, load_state
from .models.regression import RegressionConfig
from .store import RunStore, StoreError, VarSpec
from .tasks.regression import RegressionTask, derive_seed, per_position_mse, ridge_predict



@dataclass(frozen=True)
class Schedule:
    """What a preset changes: the length of the run and where checkpoints fall."""

    num_steps: int
    n_linear: int
    n_log: int
    batch_size: int = 256
    lr: float = 0.003
    pct_start: float = 0.5
    n_test: int = 2048


PROBE_SEED = 0  # the probe of train-time observables; pipelines/observe.py defaults to the same

PRESETS: dict[str, Schedule] = {
    # seconds: for tests
    "tiny": Schedule(num_steps=100, n_linear=10, n_log=10),
    # a few minutes on a 2-core CPU; long enough to pass the LR1 -> LR2 transition
    "quick": Schedule(num_steps=6000, n_linear=20, n_log=30),
    # Table 4 and F.2.3 exactly: 500k steps, 190 checkpoints
    "paper": Schedule(num_steps=500_000, n_linear=100, n_log=100),
}


class TrainingDiverged(StoreError):
    pass


@dataclass
class TrainConfig:
    """Everything that determines a run's numbers; stored as JSON in the store's root attrs."""

    seed: int = 0
    preset: str = "quick"
    schedule: Schedule = field(default_factory=lambda: PRESETS["quick"])
    model: RegressionConfig = field(default_factory=RegressionConfig)
    num_tasks: int | None = None
    noise_var: float = 0.125

    @classmethod
    def from_preset(cls, preset: str, seed: int = 0, **overrides) -> "TrainConfig":
        if preset not in PRESETS:
            raise StoreError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if seed < 0:
            raise StoreError(f"seed must be a non-negative integer, got {seed}")
        schedule = PRESETS[preset]
        sched_over = {k: v for k, v in overrides.items() if k in Schedule.__dataclass_fields__ and v is not None}
        for k, v in sched_over.items():
            flag = {"num_steps": "--steps", "batch_size": "--batch-size"}.get(k, k)
            if k in ("num_steps", "batch_size", "n_test", "n_linear", "n_log") and v <= 0:
                raise StoreError(f"{flag} must be positive, got {v}")
            if k == "lr" and not v > 0:
                raise StoreError(f"--lr must be positive, got {v}")
        num_tasks = overrides.get("num_tasks")
        if num_tasks is not None and num_tasks < 1:
            raise StoreError(f"--num-tasks must be positive (omit it for M = ∞), got {num_tasks}")
        return cls(seed=seed, preset=preset, schedule=replace(schedule, **sched_over), num_tasks=num_tasks)

    @property
    def task(self) -> RegressionTask:
        return RegressionTask(D=self.model.D, K=self.model.K, noise_var=self.noise_var,
                              num_tasks=self.num_tasks, seed=self.seed)

    def to_dict(self) -> dict:
        return {
            "task_name": "lr",
            "seed": self.seed,
            "preset": self.preset,
            "schedule": asdict(self.schedule),
            "model": self.model.to_dict(),
            "task": self.task.to_dict(),
            "optimizer": {"name": "Adam", "betas": [0.9, 0.999], "weight_decay": 0.0,
                          "scheduler": "OneCycleLR", "anneal_strategy": "linear", "cycle_momentum": False},
        }

    def checkpoints(self) -> np.ndarray:
        s = self.schedule
        return checkpoint_schedule(s.num_steps, s.n_linear, s.n_log)


def onecycle_lr(step: int, schedule: Schedule, div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """The learning rate of optimiser step ``step`` (0-based) under PyTorch's ``OneCycleLR`` with
    ``anneal_strategy="linear"`` and its default factors: linear from max_lr/25 up to max_lr at
    ``pct_start`` of the run, then linear down to max_lr/25/1e4 at the last step.

    A pure function of the step, so resuming needs no scheduler state. Momentum is not cycled:
    Adam keeps Table 4's betas (0.9, 0.999) throughout."""
    initial = schedule.lr / div_factor
    final = initial / final_div_factor
    peak_step = float(schedule.pct_start * schedule.num_steps) - 1
    last_step = schedule.num_steps - 1
    if step <= peak_step:
        return (schedule.lr - initial) * (step / peak_step) + initial
    return (final - schedule.lr) * ((step - peak_step) / (last_step - peak_step)) + schedule.lr


def _make_optimizer(model, schedule: Schedule) -> torch.optim.Adam:
    return torch.optim.Adam(model.parameters(), lr=onecycle_lr(0, schedule), betas=(0.9, 0.999), weight_decay=0.0)


def _init_model(config: dict):
    torch.manual_seed(derive_seed(config["seed"], "init"))
    return build_model(config)


def prepare_store(path, config: TrainConfig, *, overwrite: bool = False) -> tuple[RunStore, bool]:
    """Open the store of this run to resume it, or create and allocate it.

    Returns (store, resumed). A store made with another config is never touched without
    ``overwrite``."""
    cfg = config.to_dict()
    if Path(path).exists() and not overwrite:
        store = RunStore.open(path)
        if store.config != cfg:
            diff = sorted(k for k in set(cfg) | set(store.config) if cfg.get(k) != store.config.get(k))
            raise StoreError(f"{path} holds a run with a different config ({', '.join(diff)} differ); "
                             "pass --overwrite to replace it or choose another --out")
        return store, True
    store = RunStore.create(path, cfg, overwrite=overwrite)
    model = _init_model(cfg)
    steps = config.checkpoints()
    task = config.task
    specs = {name: VarSpec(("step", *dims), "float32",
                           {"long_name": name, "units": "1", "description": f"parameter tensor {name}"})
             for name, dims in model.param_dims().items()}
    coords = {"step": steps}
    for name, dims in model.param_dims().items():
        for d, n in zip(dims, model.state_dict()[name].shape):
            coords.setdefault(d, np.arange(n))
    store.create_group("params", coords, specs)
    n_params = sum(p.numel() for p in model.parameters())
    store.create_group("optimizer", {"step": steps, "flat_param": np.arange(n_params)},
                       attrs={"order": [n for n, _ in model.named_parameters()]})
    store.create_group("eval", {"step": steps, "k": np.arange(1, task.K + 1)},
                       attrs=_Evaluator(task, config.schedule.n_test).baselines())
    n = config.schedule.num_steps
    store.create_group("train", {"train_step": np.arange(1, n + 1)})
    store.create_group("observables", {"step": steps})
    names = obs.names(train_time=True)
    if names:  # shapes from the initial model; values are written at every checkpoint
        model.eval()
        obs_storage.allocate(store, names, obs.compute(model, names, obs.make_probe(task, PROBE_SEED)))
    return store, False


class _Evaluator:
    """Test loss per position on the fixed test set (N_test contexts from the 'test' stream)."""

    def __init__(self, task: RegressionTask, n_test: int):
        batch = task.dataset(n_test, "test")
        self.tokens, self.y, self.noise_var = batch.tokens, batch.y, task.noise_var

    def baselines(self) -> dict[str, float]:
        """Test losses of the zero predictor (D + σ² in expectation) and of the Bayes-optimal
        ridge predictor on the same test set: the reference levels of LR1 and of perfect ICL."""
        x, y = self.tokens[:, 0::2, 1:], self.y
        ridge = ridge_predict(x, y, self.noise_var)
        return {"zero_predictor_loss": float((y**2).mean()), "ridge_loss": float(((ridge - y) ** 2).mean())}

    @torch.no_grad()
    def __call__(self, model) -> dict[str, np.ndarray]:
        per_k = per_position_mse(model.predict(self.tokens), self.y)
        norm = torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters()))
        return {"test_loss": per_k.mean().numpy(), "test_loss_k": per_k.numpy(), "weight_norm": norm.float().numpy()}


def train(
    path,
    config: TrainConfig,
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
    cfg = config.to_dict()
    schedule = config.schedule
    task = config.task
    checkpoints = config.checkpoints()
    model = _init_model(cfg)
    opt = _make_optimizer(model, schedule)
    start = 0
    store = None
    if write:
        store, resumed = prepare_store(path, config, overwrite=overwrite)
        if resumed:
            start = _restore(store, model, opt)
        if start >= schedule.num_steps and checkpoints[-1] in store.done_steps("params"):
            return _summary(store, 0.0, resumed_from=start, steps_run=0)

    evaluator = _Evaluator(task, schedule.n_test)
    train_obs = obs.names(train_time=True)
    probe = obs.make_probe(task, PROBE_SEED) if train_obs else None
    losses = torch.empty(schedule.num_steps)
    lrs = np.empty(schedule.num_steps, dtype=np.float32)
    flushed = start  # train/ holds every step before this one
    pending = set(checkpoints[checkpoints >= start].tolist())
    bar = _progress(schedule.num_steps, start, progress)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devarray-writer") as writer:
        in_flight = None
        for step in range(start, schedule.num_steps + 1):
            if step in pending:
                _check_finite(losses, flushed, step, store)
                snapshot = _snapshot(model, opt, evaluator, probe, train_obs)
                if in_flight is not None:
                    in_flight.result()  # one checkpoint in flight at most; re-raises write errors
                if store is not None:
                    in_flight = writer.submit(_write_checkpoint, store, step, snapshot,
                                              losses[flushed:step].numpy().copy(), lrs[flushed:step].copy(), flushed)
                flushed = step
            if step == schedule.num_steps:
                break
            batch = task.batch_for_step(step, schedule.batch_size)
            loss = ((model.predict(batch.tokens) - batch.y) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lrs[step] = lr = onecycle_lr(step, schedule)
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
        return {"steps_run": schedule.num_steps - start, "seconds": elapsed}
    return _summary(store, elapsed, resumed_from=start, steps_run=schedule.num_steps - start)


def _check_finite(losses: torch.Tensor, first: int, step: int, store: RunStore | None) -> None:
    """Stop before writing a checkpoint whose preceding steps saw a non-finite loss."""
    window = losses[first:step]
    if torch.isfinite(window).all():
        return
    bad = first + int(torch.nonzero(~torch.isfinite(window))[0])
    done = store.done_steps("params") if store is not None else []
    kept = f"every checkpoint up to step {done[-1]} is kept" if len(done) else "no checkpoint was written"
    raise TrainingDiverged(f"training loss became {losses[bad].item()} at step {bad + 1}; {kept}; "
                           "retrain with a lower --lr or another --seed (add --overwrite)")


@torch.no_grad()
def _snapshot(model, opt: torch.optim.Adam, evaluator, probe, train_obs) -> dict[str, dict[str, np.ndarray]]:
    """Copies of everything a checkpoint writes, so training can go on while it is written."""
    model.eval()
    snap = {
        "params": {k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
        "eval": evaluator(model),
        "optimizer": {m: torch.cat([opt.state[p][m].reshape(-1) for p in model.parameters()]).numpy()
                      for m in ("exp_avg", "exp_avg_sq")} if opt.state else {},
    }
    if train_obs:
        snap["observables"] = obs_storage.values(obs.compute(model, train_obs, probe), train_obs)
    model.train()
    return snap


def _write_checkpoint(store: RunStore, step: int, snap: dict, losses, lrs, first: int) -> None:
    """Data first, done flags last; Adam's moments after the weights they belong to."""
    store.write_slice("train", first, {"loss": losses, "lr": lrs})
    store.write_slice("train", first, {"done": np.ones(len(losses), bool)})
    store.write("params", step, snap["params"])
    store.write("eval", step, snap["eval"])
    store.mark_done("params", step)
    store.mark_done("eval", step)
    if "observables" in snap:
        obs_storage.write(store, step, snap["observables"])
    if snap["optimizer"]:
        store.write("optimizer", step, snap["optimizer"])
    store.mark_done("optimizer", step)


def _restore(store: RunStore, model, opt: torch.optim.Adam) -> int:
    """Load the latest checkpoint that has both weights and optimiser state; return its step."""
    both = np.intersect1d(store.done_steps("params"), store.done_steps("optimizer"))
    if not len(both):
        return 0
    step = int(both[-1])
    model.load_state_dict(load_state(store, step))
    if step > 0:
        i = store.index_of("optimizer", step)
        flat = {m: torch.from_numpy(np.array(store.array("optimizer", m)[i])) for m in ("exp_avg", "exp_avg_sq")}
        offset = 0
        for p in model.parameters():
            n = p.numel()
            opt.state[p] = {"step": torch.tensor(float(step)),
                            **{m: v[offset:offset + n].view_as(p).clone() for m, v in flat.items()}}
            offset += n
    return step


def _summary(store: RunStore, seconds: float, *, resumed_from: int, steps_run: int) -> dict:
    ev = store.dataset("eval")
    done = ev.sel(step=store.done_steps("eval"))
    final = done.isel(step=-1)
    return {
        "store": str(store.path),
        "final_step": int(final.step),
        "checkpoints": int(done.sizes["step"]),
        "test_loss": float(final.test_loss),
        "min_test_loss": float(done.test_loss.min()),
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
        return (f"{s['store']} is complete: step {s['final_step']}, {s['checkpoints']} checkpoints, "
                f"test loss {s['test_loss']:.4f} (min {s['min_test_loss']:.4f})")
    rate = s["steps_run"] / s["seconds"]
    resumed = f", resumed from step {s['resumed_from']}" if s["resumed_from"] else ""
    return (f"trained to step {s['final_step']} ({s['checkpoints']} checkpoints{resumed}): "
            f"test loss {s['test_loss']:.4f} (min {s['min_test_loss']:.4f}), "
            f"{s['steps_run']} steps in {s['seconds']:.1f}s ({rate:.0f} steps/s) -> {s['store']}")
