"""Named LLC sampler settings: the :class:`LLCPreset` record. Each setting holds its own presets
(``devarray.settings``), with the appendix they come from and how they were chosen.
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
