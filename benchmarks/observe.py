"""Time per checkpoint of every regression observable on the paper-size model (51,717 parameters).

    python benchmarks/observe.py [--checkpoints 5] [--threads 1,2]

Takes the median over several random-weight "checkpoints", measured on one probe of the default
size, for each torch thread count. Prints the total per checkpoint (all observables, and the
train-time ones), its ratio to a bare model call over the probe's in-distribution batch measured
in the same run (the baseline), and each part's share: the shared forward passes and attention
summary once, then every observable's own work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from devarray import observables as obs
from devarray.models.regression import RegressionTransformer
from devarray.observables.registry import REGISTRY
from devarray.observables.regression import make_probe
from devarray.observables.regression.probes import forward, ood_predictions
from devarray.observables.regression.structure import _summary
from devarray.tasks.regression import RegressionTask

SHARED = {
    "[shared] forward with attention, in-distribution": forward,
    "[shared] forward, OOD batches": ood_predictions,
    "[shared] attention summary (eqs. 20-22)": _summary,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to measure")
    args = parser.parse_args()

    probe = make_probe(RegressionTask(), seed=0)
    models = []
    for seed in range(args.checkpoints):
        torch.manual_seed(seed)
        models.append(RegressionTransformer())
    n_ctx = probe.n + 2 * len(probe.gains) * probe.n_ood
    print(f"paper-size model, {args.checkpoints} random-weight checkpoints; medians over checkpoints")
    print(
        f"probe: {probe.n} in-distribution + 2 kinds x {len(probe.gains)} gains x {probe.n_ood} OOD = {n_ctx} contexts"
    )
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        measure(models, probe)


def measure(models: list[torch.nn.Module], probe) -> None:
    names = obs.names(task="regression")
    obs.compute(models[0], names, probe)  # warm-up
    baseline, total, train_time = [], [], []
    parts: dict[str, list[float]] = defaultdict(list)
    reg, order = REGISTRY.timed(names, parts, first=SHARED)
    for model in models:
        with torch.no_grad():
            t0 = time.perf_counter()
            model(probe.tokens)
            baseline.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        obs.compute(model, names, probe)
        total.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        obs.compute(model, obs.names(train_time=True), probe)
        train_time.append(time.perf_counter() - t0)
        reg.compute(model, order, probe)  # shared parts first, so each observable's time is its own

    med = statistics.median  # robust to the other processes that share a small CPU
    print(f"\n== torch threads {torch.get_num_threads()}")
    print(
        f"all {len(names)} observables:   {med(total) * 1e3:7.1f} ms per checkpoint (min {min(total) * 1e3:.1f})"
        f" = {med(total) / med(baseline):.1f} x baseline"
    )
    print(
        f"train-time observables: {med(train_time) * 1e3:7.1f} ms per checkpoint (min {min(train_time) * 1e3:.1f})"
        f" = {med(train_time) / med(baseline):.1f} x baseline"
    )
    print(f"baseline, one model call on the {probe.n} in-distribution contexts: {med(baseline) * 1e3:.1f} ms")
    parts_total = sum(med(v) for v in parts.values())
    print(f"{'part':52s} {'ms':>8s} {'share':>7s}")
    for name, times in sorted(parts.items(), key=lambda kv: -med(kv[1])):
        print(f"{name:52s} {med(times) * 1e3:8.2f} {med(times) / parts_total:7.1%}")


if __name__ == "__main__":
    main()
