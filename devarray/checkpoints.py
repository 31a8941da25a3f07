"""From a run store back to torch objects: the setting's model with a checkpoint's weights.

Pipelines and observables rebuild everything from the store (the single source of truth) with
these functions, so they need nothing but the store path.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .errors import StoreError
from .settings import setting_for
from .store import RunStore


def load_state(store: RunStore, step: int) -> dict[str, torch.Tensor]:
    """A checkpoint's state_dict from the ``params`` group."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in store.read_params(step).items()}


def load_model(store: RunStore, step: int, model: nn.Module | None = None) -> nn.Module:
    """The run's model with checkpoint ``step``'s weights loaded, in eval mode (float32, CPU).

    Pass ``model`` to reuse one module for many checkpoints (no re-allocation)."""
    model = model or setting_for(store.config).build_model(store.config)
    state = load_state(store, step)
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise StoreError(f"checkpoint {step} lacks parameters {sorted(missing)[:3]}…; was it written by this model?")
    model.load_state_dict(state)
    return model.eval()
