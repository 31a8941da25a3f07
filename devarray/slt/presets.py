"""Named LLC sampler settings for the regression transformer.

``paper`` is appendix A.3.2 / Table 2 exactly: a fixed SGLD dataset of 2²⁰ contexts, C = 10
chains of T_SGLD = 5,000 steps of which the first 1,000 are burn-in, ε = 0.0003,
β̃ = εnβ/2 = 0.01 (nβ ≈ 66.7), γ̃ = εγ/2 = 0.01 (γ ≈ 66.7), minibatches of m = 1,024.

``quick`` estimates the ~50 checkpoints of a quickly trained model (``devarray train --preset
quick``) in a few minutes on a 2-core CPU: 4 chains of 40 burn-in + 120 kept steps on
minibatches of m = 64 from 2¹³ contexts, nβ ≈ 15.3 just under its default m/log m (β̃ = 0.023),
ε = 0.003, γ̃ = 0.03 (γ = 20); 640 chain-steps of about 30 ms per 4 chains on one free core.
Chosen by measurement on the 47 checkpoints (steps 0–6,000) of a regression transformer
trained like ``devarray train --preset quick`` (C = 4, m = 64, two chain seeds): ε = 0.005
and 0.01 diverged at every checkpoint tried; ε = 0.001 had not converged within 200 steps
(its LLC 20 % below ε = 0.003's); at ε = 0.003, 150 and 400 kept draws agreed within 6 %;
γ̃ = 0.03 showed no escapes while γ̃ = 0.1 pulled the estimates down by 10–25 % (A.4.3 asks for
the smallest γ that does not escape). With these settings all 47 checkpoints came out
finite, positive (30 → 64 → 57 over training) and unflagged, and two chain seeds agreed
within 6 % at six checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .sgld import SGLDSettings, sgld_settings


@dataclass(frozen=True)
class LLCPreset:
    """Sampler settings in the (ε, β̃, γ̃) parametrisation of Table 2, plus the SGLD dataset size."""

    dataset_size: int
    batch_size: int
    num_chains: int
    num_draws: int
    num_burnin_steps: int
    epsilon: float
    beta_tilde: float
    gamma_tilde: float

    def settings(self) -> SGLDSettings:
        kw = asdict(self)
        del kw["dataset_size"]
        return sgld_settings(**kw)


PRESETS: dict[str, LLCPreset] = {
    "paper": LLCPreset(dataset_size=2**20, batch_size=1024, num_chains=10, num_draws=4000, num_burnin_steps=1000,
                       epsilon=3e-4, beta_tilde=0.01, gamma_tilde=0.01),
    "quick": LLCPreset(dataset_size=2**13, batch_size=64, num_chains=4, num_draws=120, num_burnin_steps=40,
                       epsilon=3e-3, beta_tilde=0.023, gamma_tilde=0.03),
}
