"""Where checkpoints fall in a run (appendix F.2.3)."""

from __future__ import annotations

import numpy as np


def checkpoint_schedule(num_steps: int, n_linear: int, n_log: int) -> np.ndarray:
    """The union of linearly and logarithmically spaced steps (appendix F.2.3), sorted, unique.

    For 500k steps with 100 + 100 points this gives the paper's 190 checkpoints. Step 0 (the
    initialisation) and the final step are always included."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    lin = np.linspace(0, num_steps, max(n_linear, 2))
    log = np.geomspace(1, num_steps, n_log) if n_log > 0 else np.array([])
    return np.unique(np.round(np.concatenate([lin, log])).astype(np.int64))
