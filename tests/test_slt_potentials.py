"""Known-answer tests: LLCs of the appendix A.1 potentials.

One sampler setting for all potentials: nβ = 10, ε = 0.005, γ = 0.1, 64 chains of 200 burn-in
and 2,000 kept steps. Why these: the quadratic's discretisation bias is εnβa/2 per coordinate
(≤ 5 % for a ≤ 2); γ/nβ = 0.01 keeps the localization's distortion of the separable potentials
near 1 %; for w₁²w₂⁴ only t = nβ/γ³ = 10⁴ matters, where the exact localized expectation is
0.236 (λ = 1/4 as t → ∞), and εγ = 5·10⁻⁴ lets the chains cover the potential's long arms
within the chain. The separable potentials are then within 10 % of λ and the normal crossing
within 20 %.
"""

from functools import lru_cache

import pytest

from devarray.slt import estimate_llc
from devarray.slt.potentials import Mixed, NormalCrossing, Quadratic, Quartic, dummy_dataset, potential_loss

SETTINGS = dict(
    batch_size=1,
    nbeta=10.0,
    epsilon=5e-3,
    localization=0.1,
    num_chains=64,
    num_draws=2000,
    num_burnin_steps=200,
    method="batched",
    warn=False,
)


POTENTIALS = {
    "w1²+w2²+w3² (3/2)": lambda: Quadratic((1.0, 1.0, 1.0)),
    "w1⁴+w2⁴ (1/2)": Quartic,
    "w1²+w2⁴+w3⁴ (1)": Mixed,
    "w1²w2⁴ (1/4)": NormalCrossing,
}


@lru_cache
def llc(name):
    """The estimate for a named potential (cached: the ordering test reuses it) and its truth."""
    potential = POTENTIALS[name]()
    ds = estimate_llc(potential, potential_loss, dummy_dataset(), **SETTINGS)
    return float(ds["llc_mean"]), potential.true_llc


@pytest.mark.parametrize("name", POTENTIALS)
def test_known_llc(name):
    estimate, truth = llc(name)
    assert estimate == pytest.approx(truth, rel=0.20 if name.startswith("w1²w2⁴") else 0.10)


def test_quadratic_llc_does_not_depend_on_the_coefficients():
    # λ = d/2 does not measure curvature (A.1): coefficients spanning a factor 4, same answer.
    unit, _ = llc("w1²+w2²+w3² (3/2)")
    skewed = float(estimate_llc(Quadratic((0.5, 1.0, 2.0)), potential_loss, dummy_dataset(), **SETTINGS)["llc_mean"])
    assert skewed == pytest.approx(1.5, rel=0.10)
    assert skewed == pytest.approx(unit, rel=0.05)


def test_estimates_are_in_the_order_of_the_true_llcs():
    pairs = sorted(llc(name) for name in POTENTIALS)  # by estimate
    assert [truth for _, truth in pairs] == [0.25, 0.5, 1.0, 1.5]
