"""The quick language preset's claims on the real quick run (paper §6, LM1 and LM4): the test
loss comes down to the synthetic language's exact bigram entropy early, and induction forms
well before the end (late tokens predicted by copying, an induction head in the second layer);
and appendix E's contrast: the one-layer model learns the bigrams too but never forms an
induction head (prefix matching stays at chance).

Trains the quick preset (seed 0, as `devarray demo lm` does) on two threads, as the demo runs on
a 2-core machine: a few minutes each there. The two-layer run is trained once and shared: its LLC
curve's boundaries must fall at these two events (`lm_stage_check`, which the demo prints).
"""

import os

import numpy as np
import pytest
import torch
from devarray.pipelines import llc, observe, stages
from devarray.pipelines.runner import done

from devarray.observables.language.structure import INDUCTION_THRESHOLD
from devarray.settings import get
from devarray.settings.language import icl_score, lm_stage_check, lm_stage_report
from devarray.store import RunStore
from devarray.train import make_config, train


def _train_quick(tmp_path, **overrides):
    """The quick run (two threads), its eval group and the step its loss reaches the bigram entropy."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        path = tmp_path / "lm-quick-s0.zarr"
        train(path, make_config("lm", "quick", 0, **overrides), progress=False)
    finally:
        torch.set_num_threads(before)
    evaluation = done(RunStore.open(path, mode="r").dataset("eval")).load()
    h2, h1 = evaluation.attrs["bigram_entropy"], evaluation.attrs["unigram_entropy"]
    loss = evaluation.test_loss
    # LM1: the loss passes the unigram optimum, then reaches the exact bigram entropy by step ~1,000
    reached = loss.step[loss <= h2 + 0.05 * (h1 - h2)]
    assert loss.sel(step=33) < h1 + 0.1 and 400 <= int(reached[0]) <= 1100
    return path, evaluation, int(reached[0])


def _prefix_matching(path, steps=None):
    """(step, layer, head) prefix-matching scores (C.2.4) at ``steps`` (default every checkpoint)."""
    observe.run(path, ["prefix_matching_score"], steps=steps, progress=False)
    ds = RunStore.open(path, mode="r").dataset("observables")
    return done(ds, "done_prefix_matching_score").prefix_matching_score.load()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return _train_quick(tmp_path_factory.mktemp("lm-quick"))


@pytest.mark.slow
def test_quick_lm_run_learns_bigrams_then_forms_induction(quick_run):
    path, evaluation, reached = quick_run
    h2 = evaluation.attrs["bigram_entropy"]
    loss, icl = evaluation.test_loss, icl_score(evaluation)
    # no copying before it: the ICL score is not negative while the model learns bigrams
    assert float(icl.sel(step=slice(None, reached)).min()) > -0.1
    # LM4: the ICL score drops below −0.1 for good between steps 1,500 and 3,000, to below −0.8
    above = np.flatnonzero(icl.values >= -0.1)
    formed = int(icl.step[above[-1] + 1])
    assert 1500 <= formed <= 3000
    assert float(icl[-1]) < -0.8 and float(loss[-1]) < h2 - 0.8
    # ... by an induction head in the second layer (the first has no earlier layer to compose with)
    pm = _prefix_matching(path, steps=[int(evaluation.step[-1])]).isel(step=-1)
    assert float(pm.sel(layer=1).max()) >= INDUCTION_THRESHOLD > float(pm.sel(layer=0).max())


@pytest.mark.slow
def test_quick_one_layer_run_learns_bigrams_and_never_forms_induction(tmp_path):
    # appendix E: one attention layer cannot compose a previous-token head with an induction head
    path, evaluation, reached = _train_quick(tmp_path, n_layers=1)
    pm = _prefix_matching(path)
    # uniform attention over the earlier tokens gives 1/64–1/128 on these sequences
    assert pm.sizes["step"] == evaluation.sizes["step"] and float(pm.max()) < 0.1
    # and it gains little from the context once it has the bigrams (the two-layer run: below −0.8)
    assert float(icl_score(evaluation).sel(step=slice(reached, None)).min()) > -0.15


@pytest.mark.slow
def test_quick_lm_llc_curve_has_a_boundary_at_lm1s_end_and_one_where_induction_forms(quick_run):
    # figure 1a: the LLC's plateaus end LM1 (bigram statistics) and mark the induction circuit
    path, evaluation, _ = quick_run
    preset = get("lm").llc_presets_for(RunStore.open(path, mode="r").config)["quick"]
    # two threads as the demo (the chains' numbers do not depend on how many run at once)
    threads = min(2, os.cpu_count() or 1)
    llc.run(path, preset.settings(), dataset_size=preset.dataset_size, progress=False, threads=threads)
    check = lm_stage_check(stages.run(path), evaluation)
    assert check["bigram_ok"], lm_stage_report(check)
    assert check["induction_boundary"] is not None, lm_stage_report(check)
