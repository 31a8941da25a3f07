"""Known-answer tests: LLCs of the appendix A.1 potentials.

One sampler setting for all potentials: nβ = 10, ε = 0.005, γ = 0.1, 64 chains of 200 burn-in
and 2,000 kept steps. Why these: the quadratic's discretisation bias is εnβa/2 per coordinate
(≤ 5 % for a ≤ 2); γ/nβ = 0.01 keeps the localization's distortion of the separable potentials
near 1 %; for w₁²w₂⁴ only t = nβ/γ³ = 10⁴ matters, where the exact localized expectation is
0.236 (λ = 1/4 as t → ∞), and εγ = 5·10⁻⁴ lets the chains cover the potential's long arms
within the chain. The separable potentials are then within 10 % of λ and the normal crossing
within 20 %.
"""

import pytest

from devarray.slt import estimate_llc
from devarray.slt.potentials import Mixed, NormalCrossing, Quadratic, Quartic, dummy_dataset, potential_loss

SETTINGS = dict(batch_size=1, nbeta=10.0, epsilon=5e-3, localization=0.1, num_chains=64, num_draws=2000,
                num_burnin_steps=200, method="batched", warn=False)


def llc(potential, seed=0):
    return float(estimate_llc(potential, potential_loss, dummy_dataset(), seed=seed, **SETTINGS)["llc_mean"])


@pytest.mark.parametrize(
    "potential, tolerance",
    [(Quadratic((1.0, 1.0, 1.0)), 0.10), (Quartic(), 0.10), (Mixed(), 0.10), (NormalCrossing(), 0.20)],
    ids=["w1²+w2²+w3² (3/2)", "w1⁴+w2⁴ (1/2)", "w1²+w2⁴+w3⁴ (1)", "w1²w2⁴ (1/4)"],
)
def test_known_llc(potential, tolerance):
    assert llc(potential) == pytest.approx(potential.true_llc, rel=tolerance)


def test_quadratic_llc_does_not_depend_on_the_coefficients():
    # λ = d/2 does not measure curvature (A.1): a, b, c spanning a factor 4 give the same answer.
    unit, skewed = llc(Quadratic((1.0, 1.0, 1.0))), llc(Quadratic((0.5, 1.0, 2.0)))
    assert skewed == pytest.approx(1.5, rel=0.10)
    assert skewed == pytest.approx(unit, rel=0.05)
    assert llc(Quadratic((1.0,) * 5)) == pytest.approx(2.5, rel=0.10)


def test_estimates_are_in_the_order_of_the_true_llcs():
    potentials = [NormalCrossing(), Quartic(), Mixed(), Quadratic((1.0, 1.0, 1.0))]
    estimates = [llc(p, seed=1) for p in potentials]
    assert estimates == sorted(estimates)
    assert [p.true_llc for p in potentials] == [0.25, 0.5, 1.0, 1.5]
