"""From a run store's config and weights back to torch objects: the model, the task, a checkpoint.

Pipelines and observables rebuild everything from the store (the single source of truth) with
these functions, so they need nothing but the store path.
"""

from __future__ import annotations

import numpy as np
import torch

from .models.regression import RegressionConfig, RegressionTransformer
from .store import RunStore, StoreError
from .tasks.regression import RegressionTask


def checkpoint_schedule(num_steps: int, n_linear: int, n_log: int) -> np.ndarray:
    """The union of linearly and logarithmically spaced steps (appendix F.2.3), sorted, unique.

    For 500k steps with 100 + 100 points this gives the paper's 190 checkpoints. Step 0 (the
    initialisation) and the final step are always included."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    lin = np.linspace(0, num_steps, max(n_linear, 2))
    log = np.geomspace(1, num_steps, n_log) if n_log > 0 else np.array([])
    return np.unique(np.round(np.concatenate([lin, log])).astype(np.int64))


def build_task(config: dict) -> RegressionTask:
    return RegressionTask(**config["task"])


def build_model(config: dict) -> RegressionTransformer:
    return RegressionTransformer(RegressionConfig(**config["model"]))


def load_state(store: RunStore, step: int) -> dict[str, torch.Tensor]:
    """A checkpoint's state_dict from the ``params`` group."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in store.read_params(step).items()}


def load_model(store: RunStore, step: int, model: RegressionTransformer | None = None) -> RegressionTransformer:
    """The model with checkpoint ``step``'s weights loaded, in eval mode (float32, CPU).

    Pass ``model`` to reuse one module for many checkpoints (no re-allocation)."""
    model = model or build_model(store.config)
    state = load_state(store, step)
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise StoreError(f"checkpoint {step} lacks parameters {sorted(missing)[:3]}…; was it written by this model?")
    model.load_state_dict(state)
    return model.eval()
