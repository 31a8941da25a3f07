"""Where the quick language run's LLC boundaries fall, for the quick preset or a variant of it.

Issue 11 asks that the quick run's LLC curve have a boundary where the bigram statistics are
learned (LM1's end) and a later one where induction forms. Whether it does depends on how the
synthetic language spaces its stages in time, so this trains the quick preset (seed 0) with the
schedule and language fields you override, estimates the LLC at every checkpoint with the quick
LLC preset, divides the curve with the default detector and prints ``lm_stage_check``'s verdict,
the times, and the curve (step, LLC, test loss, ICL score, the GP slope and its band).

    python benchmarks/lm_stages.py OUT.zarr [--schedule '{"n_log": 20}'] [--language '{"p_copy": 0.07}'] [--threads N]

A store that exists is reused (the LLC of done checkpoints is not recomputed), so rerunning on
one store only redoes the stages. Each variant costs about as much as ``devarray demo lm``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from devarray.pipelines import llc, stages
from devarray.pipelines.runner import done

from devarray.settings import get
from devarray.settings.language import icl_score, lm_stage_check, lm_stage_report
from devarray.store import RunStore
from devarray.train import make_config, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--schedule", type=json.loads, default={}, help="LMSchedule fields, as JSON")
    ap.add_argument("--language", type=json.loads, default={}, help="LanguageConfig fields, as JSON")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if not args.store.exists():
        config = make_config("lm", "quick", 0, **args.schedule)
        config.data.update(args.language)
        train(args.store, config, progress=False)
    t1 = time.perf_counter()
    preset = get("lm").llc_presets_for(RunStore.open(args.store, mode="r").config)["quick"]
    llc.run(args.store, preset.settings(), dataset_size=preset.dataset_size, progress=False)
    t2 = time.perf_counter()
    division = stages.run(args.store)
    store = RunStore.open(args.store, mode="r")
    evaluation = done(store.dataset("eval")).load()
    curve = done(store.dataset("llc")).load().llc_mean
    print(f"train {t1 - t0:.0f} s, llc {t2 - t1:.0f} s, {curve.sizes['step']} checkpoints")
    print(stages.table(args.store))
    print(lm_stage_report(lm_stage_check(division, evaluation)))
    fit = stages.fit(division, "llc_mean")
    icl = icl_score(evaluation)
    print(f"{'step':>6} {'llc':>7} {'loss':>7} {'icl':>7} {'slope':>7} {'lo':>7} {'hi':>7}")
    for s in curve.step.values:
        row = [curve.sel(step=s), evaluation.test_loss.sel(step=s), icl.sel(step=s)]
        row += [fit[v].sel(step=s) if s in fit.step else float("nan") for v in ("slope", "slope_lo", "slope_hi")]
        print(f"{int(s):>6} " + " ".join(f"{float(v):7.2f}" for v in row))


if __name__ == "__main__":
    main()
