"""Seconds per curve of the stage detector (:func:`devarray.stages.find_stages`).

    PYTHONPATH=. python benchmarks/stages.py [--repeats 3]     (from the repository root)

Two sizes: the paper's regression run (190 checkpoints, :func:`devarray.synthetic_curves.regression_curve`)
and the 5,000 checkpoints the paper saved for the language model (the language curve's stages on a
checkpoint every 10 steps to 50k). An exact GP is O(n³): above ``max_fit_points`` (200) the detector
fits its hyperparameters on an evenly indexed subsample of that many checkpoints and then
conditions the posterior on all of them once (one n × n Cholesky; 5,000 points: ~200 MB), so
the printed time at 5,000 is one big Cholesky plus the grid's n × 1024 solves, not an O(n³)
fit per L-BFGS step. Printed: best and median seconds per curve, boundaries found, fit points.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from devarray.stages import find_stages
from devarray.synthetic_curves import _chain_se, _stages, regression_curve


def language_5000(seed: int):
    """The language curve's stages (see ``language_curve``) on 5,000 checkpoints, chain noise."""
    step = np.arange(10, 50_001, 10)
    x = np.log(step)
    stages = [
        (10, 900 / np.exp(0.4), 15.0),
        (900, 6500, 40.0),
        (6500, 8500, -8.0),
        (8500, 17_500 * np.exp(-0.2), 20.0),
        (17_500, 50_000, 10.0),
    ]
    clean, _ = _stages(x, 5.0, stages)
    se = _chain_se(clean)
    return step, clean + se * np.random.default_rng(seed).standard_normal(len(x)), se


def regression_190(seed: int):
    c = regression_curve(seed)
    return c.step, c.y, c.se


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cases = {
        "regression, 190 checkpoints": regression_190,
        "language, 5000 checkpoints": language_5000,
    }
    for name, make in cases.items():
        times, found = [], []
        for seed in range(args.repeats):
            step, y, se = make(seed)
            t = time.perf_counter()
            ds = find_stages(y, step, noise=se)
            times.append(time.perf_counter() - t)
            found.append([int(v) for v in ds.boundary_step.values])
        print(
            f"{name}: best {min(times):.2f} s, median {statistics.median(times):.2f} s per curve "
            f"(fit on {ds.attrs['gp_fit_points']} points, kernel {ds.attrs['gp_kernel']}); boundaries {found[0]}"
        )


if __name__ == "__main__":
    main()
