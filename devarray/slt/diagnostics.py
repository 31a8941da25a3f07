"""Per-chain health checks for SGLD-based LLC estimates (paper appendix A.4.4, figure A.5).

Three failure modes, each a boolean variable over ``chain``:

``diverged``
    At some step the chain's loss was non-finite or exploded: its LLC increment
    nβ(ℓ_m(w_τ) − ℓ_n(w*)) exceeded ``divergence_threshold`` (default max(d, 100) with d the
    number of sampled parameters: twice d/2, the largest LLC any point can have, and far out
    in the tail of a healthy chain's increments even for tiny d). The sampler freezes such a
    chain at that step (:func:`default_divergence_threshold`); it is excluded from
    ``llc_mean``/``llc_std`` — never silently averaged.
``not_converged``
    The chain has not forgotten its start, or its LLC is still drifting at the end. With
    u_τ = nβ(ℓ_m(w_τ) − ℓ_n(w*)) the per-draw increments of eq. (12):

        llc_ess     = T / τ_int(u)                                    (effective draws)
        llc_drift   = (ū_Q4 − ū_Q3) / |λ̂_c|                         (relative change)
        llc_drift_z = (ū_Q4 − ū_Q3) / sqrt(se_Q3² + se_Q4²)           (Geweke-style z)

    τ_int is the integrated autocorrelation time (Geyer's initial positive sequence); ū_Q3,
    ū_Q4 are the means over the third and the last quarter of the kept draws, with standard
    errors σ_Q sqrt(τ'/q) for q draws per quarter and τ' the autocorrelation time of the
    linearly detrended chain (so that a drift does not pass for autocorrelation). Flagged
    when ``llc_ess`` < ``min_ess`` (default 10: still a random walk away from w*, ε too small
    as in figure A.5 top right, or too short to average), or when |llc_drift| >
    ``drift_threshold`` (default 0.1) *and* |llc_drift_z| > ``drift_z`` (default 3): a change
    large enough to matter and too large to be noise. Chains with fewer than 40 draws are
    not judged. Under strong minibatch noise a slow drift can hide in single chains; compare
    estimates across ε (:mod:`~devarray.slt.calibration`).
``escaped``
    The chain found loss below ℓ_n(w*) (figure A.5, bottom): its LLC estimate is negative,
    λ̂_c < 0, or it got there late, its last quarter's mean increment being negative beyond
    noise, ū_Q4 < −``drift_z`` · se_Q4. Flagged chains stay in the mean (they are valid
    samples of a badly localized posterior).

:func:`warn_unhealthy` raises one :class:`LLCDiagnosticWarning` naming the flagged chains.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr


class LLCDiagnosticWarning(UserWarning):
    """Some SGLD chains diverged, did not converge or escaped; see the ``llc`` dataset's flags."""


DRIFT_THRESHOLD = 0.1
DRIFT_Z = 3.0
MIN_ESS = 10.0
MIN_DRAWS = 40


def _autocorr_time(x: np.ndarray) -> float:
    """Integrated autocorrelation time of x (Geyer's initial positive sequence, via FFT)."""
    n = len(x)
    x = x - x.mean()
    f = np.fft.rfft(x, 2 * n)
    acov = np.fft.irfft(f * np.conj(f))[:n] / n
    if acov[0] <= 0:
        return 1.0
    rho = acov / acov[0]
    pairs = rho[: n - n % 2].reshape(-1, 2).sum(axis=1)  # Γ_k = ρ_2k + ρ_2k+1
    k = np.argmax(pairs <= 0) if (pairs <= 0).any() else len(pairs)
    return max(1.0, 2 * pairs[:k].sum() - 1)


def _quarter_stats(u: np.ndarray) -> tuple[float, float, float, float]:
    """Means of u over the third and the last quarter, and their standard errors.

    The standard errors use one autocorrelation time, estimated from the whole chain after
    removing its linear trend, so that a drift does not pass for autocorrelation.
    """
    q = len(u) // 4
    q3, q4 = u[len(u) - 2 * q : len(u) - q], u[len(u) - q :]
    t = np.arange(len(u))
    tau = _autocorr_time(u - np.polyval(np.polyfit(t, u, 1), t))
    return q3.mean(), q3.std() * np.sqrt(tau / q), q4.mean(), q4.std() * np.sqrt(tau / q)


def default_divergence_threshold(num_params: int) -> float:
    """Default bound on a chain's LLC increment per draw, max(d, 100) (see ``diverged`` above)."""
    return float(max(num_params, 100))


def chain_diagnostics(
    increments: np.ndarray,
    llc_per_chain: np.ndarray,
    diverged_step: np.ndarray,
    *,
    drift_threshold: float = DRIFT_THRESHOLD,
    drift_z: float = DRIFT_Z,
    min_ess: float = MIN_ESS,
) -> dict[str, np.ndarray]:
    """Flags and statistics per chain from the increments u (chain, draw) defined above and the
    sampler's divergence steps."""
    C, T = increments.shape
    drift, drift_zs, last_z, ess = (np.full(C, np.nan) for _ in range(4))
    for c in range(C):
        u = increments[c]
        if T < MIN_DRAWS or not np.isfinite(u).all():
            continue
        ess[c] = T / _autocorr_time(u)
        m3, se3, m4, se4 = _quarter_stats(u)
        last_z[c] = m4 / se4 if se4 > 0 else np.copysign(np.inf, m4) if m4 else 0.0
        drift[c] = (m4 - m3) / abs(llc_per_chain[c]) if llc_per_chain[c] != 0 else np.inf
        se = np.hypot(se3, se4)
        drift_zs[c] = (m4 - m3) / se if se > 0 else np.copysign(np.inf, m4 - m3) if m4 != m3 else 0.0
    diverged = diverged_step >= 0
    drifting = (np.abs(drift) > drift_threshold) & (np.abs(drift_zs) > drift_z)
    not_converged = ~diverged & ((ess < min_ess) | drifting)
    escaped = ~diverged & ((llc_per_chain < 0) | (last_z < -drift_z))
    return {
        "diverged": diverged,
        "not_converged": not_converged,
        "escaped": escaped,
        "llc_drift": drift,
        "llc_drift_z": drift_zs,
        "llc_ess": ess,
    }


def summary(ds: xr.Dataset) -> str:
    """One line naming the flagged chains of an LLC dataset, or '' when all are healthy."""
    parts = []
    for flag, what in (("diverged", "diverged"), ("not_converged", "did not converge"), ("escaped", "escaped")):
        chains = ds["chain"].values[ds[flag].values].tolist()
        if chains:
            parts.append(f"chain{'s' if len(chains) > 1 else ''} {', '.join(map(str, chains))} {what}")
    if not parts:
        return ""
    healthy = int((~ds["diverged"]).sum())
    return "; ".join(parts) + f" ({healthy} of {ds.sizes['chain']} chains enter llc_mean)"


def warn_unhealthy(ds: xr.Dataset, label: str | None = None) -> None:
    """Warn once, naming the chains flagged in ``ds``; ``label`` (e.g. "step 1234") says where."""
    text = summary(ds)
    if text:
        where = f"{label}: " if label else ""
        warnings.warn(f"LLC estimate {where}{text}", LLCDiagnosticWarning, stacklevel=3)
