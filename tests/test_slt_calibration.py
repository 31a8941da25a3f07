"""Grid calibration and the A.4.3 rule of thumb."""

import numpy as np
import pytest
import torch

from devarray.slt import LLCDiagnosticWarning
from devarray.slt.calibration import calibrate
from devarray.slt.potentials import Potential, dummy_dataset, potential_loss


class Well(Potential):
    """w² with deeper wells at w = ±2: a weakly localized chain escapes from w* = 0 into them."""

    def __init__(self):
        super().__init__(1)

    def forward(self):
        w = self.w[0]
        return w**2 - 20 * (torch.exp(-2 * (w - 2) ** 2) + torch.exp(-2 * (w + 2) ** 2))


COMMON = dict(batch_size=4, num_chains=4, num_draws=200, seed=0)  # default nβ = 4 / log 4 ≈ 2.885


def test_rule_of_thumb_picks_largest_stable_step_smallest_safe_localization_largest_allowed_beta():
    grid = calibrate(
        Well(),
        potential_loss,
        dummy_dataset(4),
        epsilon=[1e-5, 0.02, 3.0],
        nbeta=[2.0, 5.0],
        localization=[0.01, 100.0],
        **COMMON,
    )
    assert dict(grid.sizes) == {"epsilon": 3, "nbeta": 2, "localization": 2, "chain": 4, "draw": 200}
    # ε = 3 explodes everywhere, ε = 1e-5 is a random walk, weak localization escapes into the well
    assert grid["diverged"].sel(epsilon=3.0).all()
    assert grid["not_converged"].sel(epsilon=1e-5).any("chain").all()
    assert grid["escaped"].sel(epsilon=0.02, localization=0.01).all()
    assert grid["acceptable"].sel(epsilon=0.02, localization=100.0).all()
    assert int(grid["acceptable"].sum()) == 2
    # nβ = 5 is acceptable too but above m / log m, so nβ = 2 is recommended
    a = grid.attrs
    assert (a["recommended_epsilon"], a["recommended_nbeta"], a["recommended_localization"]) == (0.02, 2.0, 100.0)
    assert a["recommended_beta_tilde"] == pytest.approx(0.02) and a["recommended_gamma_tilde"] == pytest.approx(1.0)
    assert float(abs(grid["beta_tilde"] - grid["epsilon"] * grid["nbeta"] / 2).max()) < 1e-15
    for name in grid.variables:
        assert {"long_name", "units", "description"} <= set(grid[name].attrs), name


def test_tilde_grid_and_no_acceptable_point():
    with pytest.warns(LLCDiagnosticWarning, match="no grid point"):
        grid = calibrate(
            Well(),
            potential_loss,
            dummy_dataset(4),
            epsilon=[3.0, 4.0],
            beta_tilde=[1.5],
            gamma_tilde=[0.015, 0.03],
            **COMMON | dict(num_draws=50),
        )
    assert ("beta_tilde", "gamma_tilde") == grid["acceptable"].dims[1:]
    np.testing.assert_allclose(grid["nbeta"].sel(epsilon=3.0), 1.0)  # nβ = 2β̃/ε
    np.testing.assert_allclose(grid["localization"].sel(epsilon=4.0, beta_tilde=1.5), [0.0075, 0.015])  # γ = 2γ̃/ε
    assert np.isnan(grid.attrs["recommended_epsilon"])


def test_grid_errors():
    with pytest.raises(ValueError, match="not both"):
        calibrate(
            Well(),
            potential_loss,
            dummy_dataset(4),
            epsilon=[0.1],
            nbeta=[1.0],
            beta_tilde=[0.1],
            localization=[1.0],
            **COMMON,
        )
    with pytest.raises(ValueError, match="localization grid"):
        calibrate(Well(), potential_loss, dummy_dataset(4), epsilon=[0.1], **COMMON)
