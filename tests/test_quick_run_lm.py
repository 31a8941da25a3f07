"""The quick language preset's claims on the real quick run (paper §6, LM1 and LM4): the test
loss comes down to the synthetic language's exact bigram entropy early, and induction forms
well before the end (late tokens predicted by copying).

Trains the quick preset (seed 0, as `devarray demo lm` does) on two threads, as the demo runs on
a 2-core machine: a few minutes there. Whether the LLC curve's boundaries fall at these two
events is `lm_stage_check`'s question, printed by the demo.
"""

import os

import numpy as np
import pytest
import torch
from devarray.pipelines.runner import done

from devarray.settings.language import icl_score
from devarray.store import RunStore
from devarray.train import make_config, train


@pytest.mark.slow
def test_quick_lm_run_learns_bigrams_then_forms_induction(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        path = tmp_path / "lm-quick-s0.zarr"
        train(path, make_config("lm", "quick", 0), progress=False)
    finally:
        torch.set_num_threads(before)
    evaluation = done(RunStore.open(path, mode="r").dataset("eval")).load()
    h2, h1 = evaluation.attrs["bigram_entropy"], evaluation.attrs["unigram_entropy"]
    loss, icl = evaluation.test_loss, icl_score(evaluation)

    # LM1: the loss passes the unigram optimum, then reaches the exact bigram entropy by step ~1,000
    reached = loss.step[loss <= h2 + 0.05 * (h1 - h2)]
    assert loss.sel(step=43) < h1 + 0.1 and 400 <= int(reached[0]) <= 1100
    # no copying before it: the ICL score is not negative while the model learns bigrams
    assert float(icl.sel(step=slice(None, int(reached[0]))).min()) > -0.1
    # LM4: the ICL score drops below −0.1 for good between steps 1,500 and 3,000, to below −0.8
    above = np.flatnonzero(icl.values >= -0.1)
    formed = int(icl.step[above[-1] + 1])
    assert 1500 <= formed <= 3000
    assert float(icl[-1]) < -0.8 and float(loss[-1]) < h2 - 0.8
