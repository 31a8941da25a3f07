"""The demo's claim on the real quick run: its first stage boundary is the paper's LR1 → LR2.

Trains the quick preset (seed 0, as `devarray demo` does), estimates the LLC with the quick
sampler preset at all 47 checkpoints and divides the LLC curve into stages, on two threads as the
demo runs on a 2-core machine: about 6 minutes there (9 on one thread).
"""

import os

import pytest
import torch
from devarray.pipelines import llc, stages
from devarray.pipelines.runner import done

from devarray.settings.regression import LLC_PRESETS as PRESETS
from devarray.settings.regression import lr1_lr2_check
from devarray.store import RunStore
from devarray.train import make_config, train


@pytest.mark.slow
def test_quick_run_first_boundary_is_lr1_to_lr2(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        _check_quick_run(tmp_path)
    finally:
        torch.set_num_threads(before)


def _check_quick_run(tmp_path):
    path = tmp_path / "lr-quick-s0.zarr"
    train(path, make_config("lr", "quick", 0), progress=False)
    preset = PRESETS["quick"]
    llc.run(path, preset.settings(), dataset_size=preset.dataset_size, progress=False)
    stages.run(path)
    check = _check(path)
    assert check["ok"], check
    # the paper's schedule puts it near 1k of 500k steps; this 6k-step schedule compresses LR1
    assert 50 <= check["boundary_step"] <= 400 and check["boundary_kind"] == "plateau"
    assert abs(check["zero_predictor_loss"] - 4.305) < 0.01  # D + σ² = 4.125 in expectation


def _check(path) -> dict:
    store = RunStore.open(path, mode="r")
    return lr1_lr2_check(store.dataset("stages").load(), done(store.dataset("eval")).load())
