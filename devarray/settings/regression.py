"""The in-context linear regression setting, ``"lr"`` (paper §3, appendices A.3.2, D, F.2).

Training (Table 4, F.2.3): Adam without weight decay, a OneCycle learning-rate schedule with
linear annealing (peak 0.003 at half the run), batch 256, MSE over all K positions; checkpoints
at the union of linearly and logarithmically spaced steps. Presets change the schedule, never
the model: ``tiny`` (tests, seconds), ``quick`` (minutes on a 2-core CPU, past LR1 → LR2),
``paper`` (500k steps, 190 checkpoints).

LLC presets: ``paper`` is appendix A.3.2 / Table 2 exactly — a fixed SGLD dataset of 2²⁰
contexts, C = 10 chains of T_SGLD = 5,000 steps of which 1,000 are burn-in, ε = 0.0003,
β̃ = εnβ/2 = 0.01 (nβ ≈ 66.7), γ̃ = εγ/2 = 0.01, m = 1,024. ``quick`` estimates the ~50
checkpoints of a quick run in minutes on a 2-core CPU: 4 chains of 40 burn-in + 120 kept steps,
m = 64 from 2¹³ contexts, ε = 0.003, β̃ = 0.023 (nβ ≈ 15.3, just under m/log m), γ̃ = 0.03. It was
chosen on the 47 checkpoints of a quick run: larger ε diverged, smaller had not converged in 200
steps, and a larger γ̃ pulled the estimates down (A.4.3 asks for the smallest γ that does not
escape); with these settings every checkpoint came out finite, positive and unflagged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import xarray as xr
from torch import nn

from devarray.errors import ConfigError
from devarray.models.regression import RegressionConfig, RegressionTransformer
from devarray.observables.regression.probes import make_probe
from devarray.schedules import checkpoint_schedule
from devarray.seeding import generator
from devarray.slt.presets import LLCPreset
from devarray.slt.restrictions import ALL, Restriction, everything, from_masks, from_names
from devarray.tasks.regression import RegressionTask, mse_loss, per_position_mse, ridge_predict

from .base import Setting, register


@dataclass(frozen=True)
class Schedule:
    """What a training preset changes: the length of the run and where checkpoints fall."""

    num_steps: int
    n_linear: int
    n_log: int
    batch_size: int = 256
    lr: float = 0.003
    pct_start: float = 0.5
    n_test: int = 2048


PRESETS: dict[str, Schedule] = {
    "tiny": Schedule(num_steps=100, n_linear=10, n_log=10),
    "quick": Schedule(num_steps=6000, n_linear=20, n_log=30),
    "paper": Schedule(num_steps=500_000, n_linear=100, n_log=100),
}

LLC_PRESETS: dict[str, LLCPreset] = {
    "paper": LLCPreset(
        dataset_size=2**20,
        batch_size=1024,
        num_chains=10,
        num_draws=4000,
        num_burnin_steps=1000,
        epsilon=3e-4,
        beta_tilde=0.01,
        gamma_tilde=0.01,
    ),
    "quick": LLCPreset(
        dataset_size=2**13,
        batch_size=64,
        num_chains=4,
        num_draws=120,
        num_burnin_steps=40,
        epsilon=3e-3,
        beta_tilde=0.023,
        gamma_tilde=0.03,
    ),
    # a smoke run in seconds (the demo's --preset tiny, tests): too short to trust its numbers
    "tiny": LLCPreset(
        dataset_size=512,
        batch_size=32,
        num_chains=2,
        num_draws=12,
        num_burnin_steps=4,
        epsilon=1e-3,
        beta_tilde=0.01,
        gamma_tilde=0.01,
    ),
}

# paper: B.5's PyHessian budget on m = 1,024; quick: enough for the demo's curve shape in seconds
HESSIAN_PRESETS = {
    "paper": {"batch_size": 1024, "num_probes": 100, "top_k": 5, "num_lanczos": 64},
    "quick": {"batch_size": 256, "num_probes": 20, "top_k": 3, "num_lanczos": 24},
    "tiny": {"batch_size": 64, "num_probes": 4, "top_k": 2, "num_lanczos": 8},
}


@dataclass
class RegressionRun:
    """Everything that determines a regression run's numbers; stored as JSON in the root attrs."""

    seed: int = 0
    preset: str = "quick"
    schedule: Schedule = field(default_factory=lambda: PRESETS["quick"])
    model: RegressionConfig = field(default_factory=RegressionConfig)
    num_tasks: int | None = None
    noise_var: float = 0.125
    setting: str = "lr"

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    @property
    def task(self) -> RegressionTask:
        return RegressionTask(
            D=self.model.D, K=self.model.K, noise_var=self.noise_var, num_tasks=self.num_tasks, seed=self.seed
        )

    def checkpoints(self) -> np.ndarray:
        s = self.schedule
        return checkpoint_schedule(s.num_steps, s.n_linear, s.n_log)

    def to_dict(self) -> dict:
        return {
            "setting": self.setting,
            "seed": self.seed,
            "preset": self.preset,
            "schedule": asdict(self.schedule),
            "model": self.model.to_dict(),
            "task": self.task.to_dict(),
            "optimizer": {
                "name": "Adam",
                "betas": [0.9, 0.999],
                "weight_decay": 0.0,
                "scheduler": "OneCycleLR",
                "anneal_strategy": "linear",
                "cycle_momentum": False,
            },
        }


def onecycle_lr(step: int, schedule: Schedule, div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """The learning rate of optimiser step ``step`` (0-based) under PyTorch's ``OneCycleLR`` with
    ``anneal_strategy="linear"`` and its default factors: linear from max_lr/25 up to max_lr at
    ``pct_start`` of the run, then linear down to max_lr/25/1e4 at the last step.

    Momentum is not cycled: Adam keeps Table 4's betas (0.9, 0.999) throughout."""
    initial = schedule.lr / div_factor
    final = initial / final_div_factor
    peak_step = float(schedule.pct_start * schedule.num_steps) - 1
    last_step = schedule.num_steps - 1
    if step <= peak_step:
        return (schedule.lr - initial) * (step / peak_step) + initial
    return (final - schedule.lr) * ((step - peak_step) / (last_step - peak_step)) + schedule.lr


class RegressionEvaluator:
    """Test loss per position on the fixed test set (N_test contexts from the 'test' stream)."""

    def __init__(self, task: RegressionTask, n_test: int):
        batch = task.dataset(n_test, "test")
        self.tokens, self.y = batch.tokens, batch.y
        x = batch.x
        ridge = ridge_predict(x, self.y, task.noise_var)
        self.coords = {"k": np.arange(1, task.K + 1)}
        # the reference levels of LR1 (the zero predictor, D + σ² in expectation) and of perfect ICL
        self.attrs = {
            "zero_predictor_loss": float((self.y**2).mean()),
            "ridge_loss": float(((ridge - self.y) ** 2).mean()),
        }

    @torch.no_grad()
    def __call__(self, model) -> dict[str, np.ndarray]:
        per_k = per_position_mse(model.predict(self.tokens), self.y)
        norm = torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters()))
        return {"test_loss": per_k.mean().numpy(), "test_loss_k": per_k.numpy(), "weight_norm": norm.float().numpy()}


def ood_data(name: str) -> tuple[str, float]:
    """("inputs" | "tasks", g) of an OOD dataset name ``ood-inputs-g<G>`` / ``ood-tasks-g<G>``
    (eqs. 18–19: x ~ N(0, gI) or t ~ N(0, gI)); KeyError for any other name."""
    for kind in ("inputs", "tasks"):
        prefix = f"ood-{kind}-g"
        if name.startswith(prefix):
            try:
                g = float(name.removeprefix(prefix))
            except ValueError:
                break
            if np.isfinite(g) and g > 0:
                return kind, g
    raise KeyError(name)


def restriction_vocabulary(model: RegressionTransformer) -> dict[str, Restriction]:
    """Restrictions by the parts of the regression transformer (F.2.1): embed (token embedding),
    pos_embed, layer L, layer L attn, layer L mlp, head L.H (the head's rows of the fused q, k and v
    projection and its columns of the output projection), ln_final, unembed."""
    names = [k for k, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    C, H = model.cfg.d_embed, model.cfg.H
    dh = C // H
    vocab = {
        ALL: everything(model),
        "embed": from_names(model, ["token_embedding.weight"], "embed"),
        "pos_embed": from_names(model, ["position_embedding.weight"], "pos_embed"),
    }
    for i in range(model.cfg.L):
        b = f"blocks.{i}."
        vocab[f"layer {i}"] = from_names(model, [k for k in names if k.startswith(b)], f"layer {i}")
        for part in ("attn", "mlp"):
            vocab[f"layer {i} {part}"] = from_names(
                model, [k for k in names if k.startswith(f"{b}{part}.")], f"layer {i} {part}"
            )
    for i in range(model.cfg.L):
        qkv, out = params[f"blocks.{i}.attn.qkv.weight"], params[f"blocks.{i}.attn.out.weight"]
        for h in range(H):
            rows = torch.zeros(qkv.shape, dtype=torch.bool)
            for third in range(3):  # q, k, v each take C rows; the head owns dh of each
                rows[third * C + h * dh : third * C + (h + 1) * dh] = True
            cols = torch.zeros(out.shape, dtype=torch.bool)
            cols[:, h * dh : (h + 1) * dh] = True  # the head's slice of the concatenated head outputs
            name = f"head {i}.{h}"
            vocab[name] = from_masks(
                model, {f"blocks.{i}.attn.qkv.weight": rows, f"blocks.{i}.attn.out.weight": cols}, name
            )
    vocab["ln_final"] = from_names(model, ["ln_out.weight", "ln_out.bias"], "ln_final")
    vocab["unembed"] = from_names(model, ["unembedding.weight", "unembedding.bias"], "unembed")
    return vocab


class RegressionSetting(Setting):
    name = "lr"
    title = "in-context linear regression"
    eval_schema = "eval_lr"
    observables = "regression"
    training_presets = tuple(PRESETS)
    llc_presets = LLC_PRESETS
    hessian_presets = HESSIAN_PRESETS
    loss_description = "mean squared error over all K positions (eq. 2)"
    train_options = {
        "num_steps": {"flag": "--steps", "type": int, "help": "override the preset's number of training steps"},
        "lr": {"flag": "--lr", "type": float, "help": "override the peak learning rate"},
        "batch_size": {"flag": "--batch-size", "type": int, "help": "override the batch size"},
        "num_tasks": {"flag": "--num-tasks", "type": int, "help": "finite task set of size M (default M = ∞)"},
    }

    def config(self, preset: str = "quick", seed: int = 0, **overrides) -> RegressionRun:
        sched, given = self._overrides(PRESETS, preset, seed, overrides, Schedule.__dataclass_fields__, ["num_tasks"])
        num_tasks = given.get("num_tasks")
        if num_tasks is not None and num_tasks < 1:
            raise ConfigError(f"num_tasks must be positive (omit it for M = ∞), got {num_tasks}", argument="num_tasks")
        return RegressionRun(seed=seed, preset=preset, schedule=replace(PRESETS[preset], **sched), num_tasks=num_tasks)

    @staticmethod
    def task(config: dict) -> RegressionTask:
        return RegressionTask(**config["task"])

    @staticmethod
    def schedule(config: dict) -> Schedule:
        return Schedule(**config["schedule"])

    def build_model(self, config: dict) -> RegressionTransformer:
        return RegressionTransformer(RegressionConfig(**config["model"]))

    def optimizer(self, model: nn.Module, config: dict) -> torch.optim.Adam:
        return torch.optim.Adam(
            model.parameters(), lr=self.learning_rate(0, config), betas=(0.9, 0.999), weight_decay=0.0
        )

    def learning_rate(self, step: int, config: dict) -> float:
        return onecycle_lr(step, self.schedule(config))

    def train_batch(self, config: dict, step: int) -> tuple[torch.Tensor, ...]:
        batch = self.task(config).batch_for_step(step, config["schedule"]["batch_size"])
        return batch.x, batch.y

    def loss(self, model: nn.Module, *batch: torch.Tensor) -> torch.Tensor:
        return mse_loss(model, *batch)

    def evaluator(self, config: dict) -> RegressionEvaluator:
        return RegressionEvaluator(self.task(config), config["schedule"]["n_test"])

    def sgld_dataset(self, config: dict, n: int, data: str = "train") -> tuple[torch.Tensor, ...]:
        task = self.task(config)
        if data == "train":
            batch = task.dataset(n, "sgld")
        else:
            kind, g = ood_data(data)
            if kind == "tasks":  # eq. 19: fresh tasks t ~ N(0, gI), as the OOD observables
                task = replace(task, num_tasks=None)
            scale = {"x_scale": g} if kind == "inputs" else {"t_scale": g}
            batch = task.sample(n, generator(task.seed, f"sgld-{data}"), **scale)
        return batch.x, batch.y

    def sgld_data(self, config: dict) -> dict[str, str]:
        return super().sgld_data(config) | {
            "ood-inputs-g<G>": "OOD inputs x ~ N(0, G·I), the run's tasks (eq. 18), e.g. ood-inputs-g10",
            "ood-tasks-g<G>": "OOD tasks t ~ N(0, G·I) (eq. 19), e.g. ood-tasks-g0.1",
        }

    def restrictions(self, model: nn.Module) -> dict[str, Restriction]:
        return restriction_vocabulary(model)

    def restriction_groups(self, model: nn.Module) -> dict[str, list[str]]:
        L, H = model.cfg.L, model.cfg.H
        return {
            "heads": [f"head {i}.{h}" for i in range(L) for h in range(H)],
            "layers": [f"layer {i}" for i in range(L)],
        }

    def hessian_batch(self, config: dict, m: int) -> tuple[torch.Tensor, ...]:
        batch = self.task(config).dataset(m, "hessian")
        return batch.x, batch.y

    def probe(self, config: dict, seed: int = 0):
        return make_probe(self.task(config), seed)

    def probe_context(self, config: dict, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
        """One probe context and a label per token (x₁, y₁, x₂, …), for attention views."""
        p = make_probe(self.task(config), seed, n=1, n_ood=1)
        K = p.x.shape[1]
        return p.tokens, [f"{c}{k}" for k in range(1, K + 1) for c in "xy"]

    def stage_report(self, stages: xr.Dataset, evaluation: xr.Dataset) -> str | None:
        return lr1_lr2_report(lr1_lr2_check(stages, evaluation))


def lr1_lr2_check(stages: xr.Dataset, evaluation: xr.Dataset) -> dict:
    """Is the first boundary the paper's LR1 → LR2 (§5.1): the end of the context-free stage?

    There the test loss has come down to the zero predictor's (D + σ², on the stored test set:
    ``eval`` attr ``zero_predictor_loss``) and is about to fall below it as the model starts to use
    the context. Criteria: the test loss at the boundary (at the last checkpoint up to it) within
    5 % of the zero predictor's, never
    below 95 % of it up to the boundary, and below 95 % of it before the second boundary (or the
    end), falling to under 80 % of it by the end of the run. ``evaluation`` holds the done
    checkpoints of the eval group. Returns the figures and ``ok``.
    """
    zero = float(evaluation.attrs["zero_predictor_loss"])
    out = {"zero_predictor_loss": zero, "ok": False}
    if not stages.sizes.get("boundary", 0):
        return out
    b = int(stages.boundary_step[0])
    end = int(stages.boundary_step[1]) if stages.sizes["boundary"] > 1 else int(evaluation.step[-1])
    loss = evaluation.test_loss
    below = loss.step[loss < 0.95 * zero]
    out |= {
        "boundary_step": b,
        "boundary_kind": str(stages.boundary_kind.values[0]),
        # the last checkpoint at or before it: a boundary between checkpoints has not yet seen the fall
        "loss_at_boundary": float(loss.sel(step=b, method="pad")),
        "min_loss_before": float(loss.sel(step=slice(None, b)).min()),
        "first_step_below": int(below[0]) if below.size else None,
        "final_loss": float(loss[-1]),
    }
    out["ok"] = (
        abs(out["loss_at_boundary"] - zero) <= 0.05 * zero
        and out["min_loss_before"] >= 0.95 * zero
        and out["first_step_below"] is not None
        and b < out["first_step_below"] <= end
        and out["final_loss"] < 0.8 * zero
    )
    return out


def lr1_lr2_report(c: dict) -> str:
    """One line: where the first boundary falls relative to the LR1 → LR2 transition."""
    if "boundary_step" not in c:
        return "no stage boundary found on this LLC curve"
    verdict = "the end of LR1 (LR1 -> LR2)" if c["ok"] else "NOT the LR1 -> LR2 transition"
    return (
        f"first boundary at step {c['boundary_step']} ({c['boundary_kind']}) is {verdict}: test loss "
        f"{c['loss_at_boundary']:.3f} there, zero predictor {c['zero_predictor_loss']:.3f}; below 95% of it "
        f"from step {c['first_step_below']}, {c['final_loss']:.3f} at the end"
    )


register(RegressionSetting())
