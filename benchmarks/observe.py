"""Time per checkpoint of every regression observable on the paper-size model (51,717 parameters).

    python benchmarks/observe.py [--checkpoints 5] [--threads N]

Takes the median over several random-weight "checkpoints" measured on one probe of the default size.
Prints the total per checkpoint, its ratio to a bare forward pass over the probe's
in-distribution batch measured in the same run (the baseline), and each part's share: the
shared forward passes and attention summary once, then every observable's own work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
import xarray as xr

from devarray import observables as obs
from devarray.models.regression import RegressionTransformer
from devarray.observables.probes import forward, ood_predictions
from devarray.observables.registry import REGISTRY, Registry
from devarray.observables.regression.structure import _summary
from devarray.tasks.regression import RegressionTask

SHARED = {
    "[shared] forward with attention, in-distribution": forward,
    "[shared] forward, OOD batches": ood_predictions,
    "[shared] attention summary (eqs. 20-22)": _summary,
}


def timed_registry(times: dict[str, list[float]]) -> Registry:
    """The shared computations, then every registered observable, each timed as it runs in one
    ``compute`` call; since the shared results are cached first, an observable's time is its own."""
    reg = Registry()

    def timer(name, func):
        def run(model, probe):
            t0 = time.perf_counter()
            out = func(model, probe)
            times[name].append(time.perf_counter() - t0)
            return out if isinstance(out, (xr.DataArray, xr.Dataset)) else xr.DataArray(0.0)

        return run

    for i, (name, func) in enumerate(SHARED.items()):
        reg.observable(name=f"shared{i}", description=name)(timer(name, func))
    for name in REGISTRY.names(task="regression"):
        spec = REGISTRY.get(name)
        reg.observable(
            name=name,
            train_time=spec.train_time,
            variables={v.name: dict(dims=v.dims, units=v.units, long_name=v.long_name, description=v.description) for v in spec.variables},
        )(timer(name, spec.func))
    return reg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task = RegressionTask()
    probe = obs.make_probe(task, seed=0)
    names = obs.names(task="regression")
    models = []
    for seed in range(args.checkpoints):
        torch.manual_seed(seed)
        models.append(RegressionTransformer())
    obs.compute(models[0], names, probe)  # warm-up

    baseline, total, train_time = [], [], []
    parts: dict[str, list[float]] = defaultdict(list)
    reg = timed_registry(parts)
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
        reg.compute(model, [f"shared{i}" for i in range(len(SHARED))] + names, probe)  # shared parts first

    def mean(xs):  # the median: robust to the other processes that share a small CPU
        return statistics.median(xs)

    n_ctx = probe.n + 2 * len(probe.gains) * probe.n_ood
    print(f"paper-size model, {args.checkpoints} random-weight checkpoints, torch threads {torch.get_num_threads()}")
    print(f"probe: {probe.n} in-distribution contexts + 2 x {len(probe.gains)} gains x {probe.n_ood} OOD = {n_ctx} contexts")
    print(f"all {len(names)} observables: {mean(total) * 1e3:7.1f} ms per checkpoint (median; min {min(total) * 1e3:.1f})"
          f" = {mean(total) / mean(baseline):.1f} x baseline")
    print(f"train-time observables:   {mean(train_time) * 1e3:7.1f} ms per checkpoint = {mean(train_time) / mean(baseline):.1f} x baseline")
    print(f"baseline (one forward over {probe.n} contexts): {mean(baseline) * 1e3:.1f} ms")
    parts_total = sum(mean(v) for v in parts.values())
    print(f"\n{'part':52s} {'ms':>8s} {'share':>7s}")
    for name, times in sorted(parts.items(), key=lambda kv: -mean(kv[1])):
        print(f"{name:52s} {mean(times) * 1e3:8.2f} {mean(times) / parts_total:7.1%}")


if __name__ == "__main__":
    main()
