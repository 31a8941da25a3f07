"""Named LLC sampler settings for the regression transformer.

``paper`` is appendix A.3.2 / Table 2 exactly: a fixed SGLD dataset of 2²⁰ contexts, C = 10
chains of T_SGLD = 5,000 steps of which the first 1,000 are burn-in, ε = 0.0003,
β̃ = εnβ/2 = 0.01 (nβ ≈ 66.7), γ̃ = εγ/2 = 0.01 (γ ≈ 66.7), minibatches of m = 1,024.

``quick`` estimates the ~50 checkpoints of a quickly trained model (``devarray train --preset
quick``) in a few minutes on a 2-core CPU. It was chosen by measurement (see the report in
tests/test_slt_presets.py): on checkpoints of a regression transformer trained for 6,000 Adam
steps, a grid over ε ∈ {3e-4, 1e-3, 3e-3}, β̃ ∈ {0.01, 0.03} with the default nβ = m/log m and
γ̃ ∈ {0.01, 0.03} for m = 128 and 4 chains; the largest ε without divergence whose traces
flatten within 300 steps, the smallest γ̃ without escapes, and β̃ as given by the default nβ.
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
    "quick": LLCPreset(dataset_size=2**14, batch_size=128, num_chains=4, num_draws=200, num_burnin_steps=100,
                       epsilon=1e-3, beta_tilde=0.0132, gamma_tilde=0.03),
}
