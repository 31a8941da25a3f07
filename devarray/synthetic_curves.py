"""Synthetic LLC curves with the stage structure of the paper's runs (figure 1, §6–7, appendix B).

Used by the stage detector's tests and benchmark (:mod:`devarray.stages`). A curve is a sum of
stage changes, each a smootherstep S(u) = 6u⁵ − 15u⁴ + 10u³ over its own interval [a, b] in log
step: its slope is zero at both ends, so where one stage ends and the next begins the true slope
vanishes (a crossing between a rise and a fall; a stall or a saddle between two changes of the
same sign). A saddle is a shoulder 0.2 log step wide between two falls (or rises), narrow enough
that a smoother sees |slope| dip only to a few per cent of its neighbours' peaks (figure 1b's
saddles); LR1's stall before LR2 is half a log step wide. A stall or saddle *ends* at the paper's
boundary step, where the next stage begins (the detector's placement, see :mod:`devarray.stages`).

Noise comes at the two levels of appendix B.2's caption. ``"chain"``: the standard error of a
checkpoint's estimate from its SGLD chains, 0.3–2 LLC units, growing with the LLC as the chain
spread does, independent between checkpoints. ``"seed"``: the LLC's seed-to-seed spread, 4.2
averaged over training — another seed's curve, whose stage boundaries move by ~5 % in step and
whose estimates are off by a *smooth* error of ~4 (relative 4 %): with one SGLD seed reused at
every checkpoint (appendix A.3) the estimation error is shared by neighbouring checkpoints, so
it bends the curve slowly rather than adding white noise — plus the chain noise. The true
boundaries returned are those of the moved stages. ``se`` is the chain standard error only (what
the ``llc`` group knows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schedules import checkpoint_schedule

LEVELS = ("chain", "seed")


def smootherstep(u):
    u = np.clip(u, 0.0, 1.0)
    return u**3 * (u * (6 * u - 15) + 10)


def smootherstep_slope(u):
    inside = (u > 0) & (u < 1)
    return np.where(inside, 30 * u**2 * (1 - u) ** 2, 0.0)


@dataclass
class Curve:
    """A synthetic curve: checkpoint ``step``s, noisy values ``y``, per-checkpoint standard error
    ``se`` (the chain part), the noiseless curve ``clean`` and the true boundaries (steps, kinds)."""

    step: np.ndarray
    y: np.ndarray
    se: np.ndarray
    clean: np.ndarray
    boundary_step: np.ndarray
    boundary_kind: list[str]


def _stages(x, y0, stages):
    """Noiseless curve and slope in log step of a list of (start step, end step, height)."""
    y, s = np.full_like(x, y0, dtype=np.float64), np.zeros_like(x, dtype=np.float64)
    for a, b, h in stages:
        la, lb = np.log(a), np.log(b)
        u = (x - la) / (lb - la)
        y += h * smootherstep(u)
        s += h * smootherstep_slope(u) / (lb - la)
    return y, s


def _chain_se(clean):
    # an SGLD estimate's spread grows with the LLC it estimates: 0.3 early, 2 at the largest LLC
    return np.clip(2.0 * clean / np.abs(clean).max(), 0.3, 2.0)


def _make(step, y0, stages, bounds, kinds, level, rng):
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    x = np.log(np.maximum(step, 1))
    if level == "seed":
        # another seed: stage boundaries move by ~5 % in step
        move = dict(zip(bounds, np.asarray(bounds, dtype=np.float64) * np.exp(0.05 * rng.standard_normal(len(bounds)))))
        stages = [(move.get(a, a), move.get(b, b), h) for a, b, h in stages]
        bounds = [move[b] for b in bounds]
    clean, _ = _stages(x, y0, stages)
    if level == "seed":
        # and the estimate is off by a smooth relative error (one SGLD seed for every checkpoint,
        # appendix A.3), 4 % ≈ 4.2 LLC units at the LLC's mean over training: a GP sample in log
        # step with a 2-log-step lengthscale, slower than any stage, so it moves no boundary far
        d = x[:, None] - x[None, :]
        L = np.linalg.cholesky(np.exp(-0.5 * (d / 2.0) ** 2) + 1e-9 * np.eye(len(x)))
        clean = clean * (1 + 0.04 * (L @ rng.standard_normal(len(x))))
    se = _chain_se(clean)
    y = clean + se * rng.standard_normal(len(x))
    return Curve(step, y, se, clean, np.asarray(bounds, dtype=np.float64), list(kinds))


REGRESSION_STEPS = checkpoint_schedule(500_000, 100, 100)


def regression_curve(seed: int, level: str = "chain") -> Curve:
    """The paper's full regression run (§7, figure 1b): LR1 0–1k, LR2 1k–40k, LR3 40k–126k,
    LR4 126k–320k, LR5 320k–500k, on the 190 checkpoints of F.2.3.

    LR1 creeps up by ~7 and stalls for half a log step before 1k; LR2 rises by 145 (~20× LR1);
    LR3 and LR4 fall by 30 and 25, meeting in a shallow saddle near 126k; LR5 rises by 3–9 (drawn
    per seed) after the minimum at 320k. Boundaries: plateau (1k), max (40k), plateau (126k), min
    (320k)."""
    rng = np.random.default_rng(seed)
    lr5 = rng.uniform(3.0, 9.0)
    stages = [
        (10, 1000 / np.exp(0.5), 7.0),  # LR1, then a stall half a log step wide
        (1000, 40_000, 145.0),
        (40_000, 126_000 * np.exp(-0.2), -30.0),  # a shoulder 0.2 log step wide: a saddle
        (126_000, 320_000, -25.0),
        (320_000, 500_000, lr5),
    ]
    bounds = [1000, 40_000, 126_000, 320_000]
    return _make(REGRESSION_STEPS, 2.0, stages, bounds, ["plateau", "max", "plateau", "min"], level, rng)


LANGUAGE_STEPS = np.unique(np.concatenate([np.arange(0, 50_001, 100), np.round(np.geomspace(1, 100, 20))])).astype(
    np.int64
)


def language_curve(seed: int, level: str = "chain") -> Curve:
    """The paper's two-layer language model (§6, figure 1a): LM1 0–900, LM2 900–6.5k, LM3
    6.5k–8.5k (a falling LLC), LM4 8.5k–17.5k, LM5 17.5k–50k; a checkpoint every 100 steps plus
    20 log-spaced ones below 100. Boundaries: plateau (900), max (6.5k), min (8.5k), plateau
    (17.5k, a shallow saddle between LM4's rise and LM5's slower one)."""
    rng = np.random.default_rng(seed)
    stages = [
        (10, 900 / np.exp(0.4), 15.0),
        (900, 6500, 40.0),
        (6500, 8500, -8.0),
        (8500, 17_500 * np.exp(-0.2), 20.0),  # a shoulder 0.2 log step wide: a saddle
        (17_500, 50_000, 10.0),
    ]
    bounds = [900, 6500, 8500, 17_500]
    return _make(LANGUAGE_STEPS, 5.0, stages, bounds, ["plateau", "max", "min", "plateau"], level, rng)


def null_curve(kind: str, seed: int, sigma: float = 2.0, step: np.ndarray = REGRESSION_STEPS) -> Curve:
    """Curves with no boundary: ``"line"`` (a straight line in step), ``"rise"`` (one smooth
    logistic rise in log step) or ``"noise"`` (a constant), plus white noise ``sigma``."""
    rng = np.random.default_rng(seed)
    x = np.log(np.maximum(step, 1))
    if kind == "line":
        clean = 10 + 100 * step / step[-1]
    elif kind == "rise":
        clean = 10 + 100 / (1 + np.exp(-(x - 8.0) / 0.7))
    elif kind == "noise":
        clean = np.full(len(x), 50.0)
    else:
        raise ValueError(f"kind must be 'line', 'rise' or 'noise', got {kind!r}")
    se = np.full(len(x), sigma)
    return Curve(step, clean + sigma * rng.standard_normal(len(x)), se, clean, np.array([]), [])
