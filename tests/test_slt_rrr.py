"""Reduced-rank regression: Aoyagi & Watanabe's exact λ, and the LLC estimator against it.

Known answers (devarray/slt/rrr.py): the plain LLC at the most singular true parameter of a
singular (H > r) and a regular (H = r) RRR; the weight-refined LLC of each block of a
block-diagonal RRR and their sum; RMSProp-SGLD on an RRR whose inputs are badly scaled.

One sampler setting serves the plain and refined tests (SETTINGS): nβ = 100, γ = 1, ε = 10⁻⁴,
m = 64 of n = 20,000 rows, 32 chains of 1,000 burn-in and 4,000 kept steps. Why: the stiffest
direction of nβℓ has curvature κ ≈ nβ·2s_max = 400 (s_max = 2 the largest singular value of
W₀, balanced A₀, B₀), and Euler–Maruyama SGLD inflates a Gaussian's E[nβ(ℓ − ℓ*)] by
1/(1 − εκ/4): 1 % at ε = 10⁻⁴ (measured +11 % at ε = 10⁻³, +5 % at 3·10⁻⁴). γ/√nβ = 0.1 keeps the
localization's pull on the singular directions small (γ = 3 and 10 moved the H > r estimate by
−4 % and −15 %), and εγ/2 = 5·10⁻⁵ is as much as the surplus unit's long arms need in 5,000
steps. nβ/n = 0.005, so starting at the truth rather than the empirical minimiser biases the
estimate by about −λ·nβ/n (0.5 %); the minibatch gradient noise is ~εnβ²/(4m) ≈ 0.4 % of the
injected noise. Measured on seeds 0–3: within 3.3 % of λ with a standard error of ~1.5 %; the
tests allow 10 %.
"""

from fractions import Fraction

import pytest
import torch

from devarray.slt import estimate_llc
from devarray.slt.restrictions import from_names
from devarray.slt.rrr import (
    BlockRRR,
    ReducedRankRegression,
    rrr_dataset,
    rrr_learning_coefficient,
    rrr_loss,
    rrr_multiplicity,
    rrr_truth,
)

SETTINGS = dict(
    batch_size=64,
    nbeta=100.0,
    epsilon=1e-4,
    localization=1.0,
    num_chains=32,
    num_draws=4000,
    num_burnin_steps=1000,
    method="batched",
    warn=False,
    # one draw's nβ(ℓ_m − ℓ*) carries the minibatch's noise term, std nβ√(N/2)/√m ≈ 15–20 here:
    # the default threshold (100) would flag healthy chains over 10⁵ draws
    divergence_threshold=1e3,
)
N_ROWS = 20_000


# --- the formula ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "MNHr, lam, case",
    [
        # f = b a x, W₀ = 0: K ∝ (ab)², the normal crossing a²b²: λ = 1/2 with multiplicity 2
        ((1, 1, 1, 0), Fraction(1, 2), "1 odd"),
        # case 1, M+N+H+r = 6 even: (2·2·4 − 0 − 4)/8
        ((2, 2, 2, 0), Fraction(3, 2), "1 even"),
        # case 1, odd: (2·3·6 − 0 − 9 + 1)/8
        ((3, 3, 2, 1), Fraction(7, 2), "1 odd"),
        # case 1, even (used below): (2·3·7 − 1 − 9)/8; between the rank-1 (3) and rank-2 (5) values
        ((4, 3, 2, 1), Fraction(4), "1 even"),
        ((3, 3, 2, 0), Fraction(5, 2), "1 even"),
        # case 2 (M + H < N + r): (HM − Hr + Nr)/2 = (2 − 1 + 4)/2
        ((2, 4, 1, 1), Fraction(5, 2), "2"),
        # case 3 (N + H < M + r): (HN − Hr + Mr)/2 = (4 − 2 + 4)/2; rank 1 alone would give (4 + 2 − 1)/2
        ((4, 2, 2, 1), Fraction(3), "3"),
        # case 4 (M + N < H + r): MN/2. W = Σ bᵢaᵢ is a submersion at a point with W ≠ 0: λ = 1/2
        ((1, 1, 2, 1), Fraction(1, 2), "4"),
        # W₀ = 0 with 3 units: K = (Σ aᵢbᵢ)², a smooth hypersurface {Σ aᵢbᵢ = 0} near 0: λ = 1/2
        ((1, 1, 3, 0), Fraction(1, 2), "4"),
    ],
)
def test_learning_coefficient_on_hand_computed_cases(MNHr, lam, case):
    assert rrr_learning_coefficient(*MNHr) == lam
    assert rrr_multiplicity(*MNHr) == (2 if case == "1 odd" else 1)


@pytest.mark.parametrize("M, N, H", [(m, n, h) for m in range(1, 6) for n in range(1, 6) for h in range(1, 6)])
def test_learning_coefficient_properties(M, N, H):
    for r in range(min(M, N, H) + 1):
        lam = rrr_learning_coefficient(M, N, H, r)
        assert lam == rrr_learning_coefficient(N, M, H, r)  # f ↦ fᵀ swaps inputs and outputs
        assert 0 < lam <= Fraction(H * (M + N), 2)  # never above d/2
    if H <= min(M, N):
        # regular: λ = dim{rank-H matrices}/2, whichever of cases 1 (M = N), 2 or 3 applies
        assert rrr_learning_coefficient(M, N, H, H) == Fraction(H * (M + N - H), 2)
    else:
        # every N×M matrix is realised; at a W₀ of full rank the map w ↦ BA is a submersion
        r = min(M, N)
        assert rrr_learning_coefficient(M, N, H, r) == Fraction(M * N, 2)


def test_learning_coefficient_refuses_impossible_ranks():
    with pytest.raises(ValueError, match="cannot exceed"):
        rrr_learning_coefficient(3, 3, 1, 2)
    with pytest.raises(ValueError, match="non-negative integer"):
        rrr_learning_coefficient(3, 3, 1.5, 1)


# --- model, truth, data, loss --------------------------------------------------------------------


def test_truth_is_the_most_singular_point_of_rank_r():
    truth = rrr_truth(5, 4, 3, 2, singular_values=(3.0, 0.5), seed=7)
    W = truth.B @ truth.A
    torch.testing.assert_close(torch.linalg.svdvals(W)[:3], torch.tensor([3.0, 0.5, 0.0], dtype=torch.float64))
    assert not truth.A[2:].any() and not truth.B[:, 2:].any()  # the surplus unit: no weights in or out
    torch.testing.assert_close(truth.A.norm(dim=1)[:2], truth.B.norm(dim=0)[:2])  # balanced
    assert not rrr_truth(3, 3, 2, 0).A.any()


def test_loss_is_the_negative_log_likelihood_per_sample():
    # at the truth E ℓ = E|σξ|²/(2σ²) = N/2; off it, ℓ(w) − ℓ(w₀) → E|(W − W₀)x|²/(2σ²) = |W − W₀|²_F/(2σ²)
    truth = rrr_truth(3, 2, 2, 1, sigma=0.5)
    x, y = rrr_dataset(truth, 200_000, seed=3)
    with torch.no_grad():
        at_truth = float(rrr_loss(truth, x, y))
        assert at_truth == pytest.approx(2 / 2, rel=0.01)
        W0 = truth.B @ truth.A
        truth.A[1] = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
        truth.B[:, 1] = torch.tensor([1.0, 2.0], dtype=torch.float64)
        K = float(((truth.B @ truth.A - W0) ** 2).sum()) / (2 * 0.5**2)
        assert float(rrr_loss(truth, x, y)) - at_truth == pytest.approx(K, rel=0.02)


def test_blocks_read_and_write_their_own_slices():
    a, b = rrr_truth(2, 3, 1, 1, seed=0), rrr_truth(3, 1, 2, 1, seed=1)
    model = BlockRRR(a, b)
    x = torch.randn(5, 5, dtype=torch.float64)
    torch.testing.assert_close(model(x), torch.cat([a(x[:, :2]), b(x[:, 2:])], dim=1))
    assert [k for k, _ in model.named_parameters()] == ["blocks.0.A", "blocks.0.B", "blocks.1.A", "blocks.1.B"]
    x, y = rrr_dataset(model, 10, input_scales=(1, 1, 100, 1, 1))
    assert x.shape == (10, 5) and y.shape == (10, 4)
    with pytest.raises(ValueError, match="same sigma"):
        BlockRRR(a, ReducedRankRegression(3, 1, 2, sigma=2.0))


# --- known answers for the estimator ---------------------------------------------------------------


def _llc(model, data, **kw):
    return estimate_llc(model, rrr_loss, data, **(SETTINGS | kw))


@pytest.mark.parametrize(
    "MNHr, seed",
    [((4, 3, 2, 1), 1), ((4, 3, 2, 2), 0)],
    ids=["singular H>r, λ=4 (d/2=7)", "regular H=r, λ=5 (d/2=7)"],
)
def test_llc_at_the_truth_is_aoyagis_lambda(MNHr, seed):
    truth = rrr_truth(*MNHr, seed=seed)
    data = rrr_dataset(truth, N_ROWS, seed=seed + 1)
    ds = _llc(truth, data, seed=seed)
    lam = float(rrr_learning_coefficient(*MNHr))
    assert not ds.diverged.any()
    assert float(ds.llc_mean) == pytest.approx(lam, rel=0.10)
    # both sit well below the parameter count's d/2 = 7: the GL(H) orbit is flat (and, for H > r,
    # the surplus unit is singular); an estimator that saw the parameter count would fail here
    assert float(ds.llc_mean) < 0.8 * sum(p.numel() for p in truth.parameters()) / 2


@pytest.mark.slow  # 3 × 32 chains: ~25 s on one shared core
def test_refined_llc_of_each_block_is_its_own_lambda_and_they_add_up():
    # the loss is the sum of the blocks' losses (inputs and outputs split), so K = K₁ + K₂ over
    # disjoint parameters: λ = λ₁ + λ₂ and each block's refined LLC (the other frozen at w*) is λ_k
    singular, regular = rrr_truth(4, 3, 2, 1, seed=1), rrr_truth(3, 2, 1, 1, seed=2)
    model = BlockRRR(singular, regular)
    data = rrr_dataset(model, N_ROWS, seed=5)
    lam_s, lam_r = float(rrr_learning_coefficient(4, 3, 2, 1)), float(rrr_learning_coefficient(3, 2, 1, 1))
    truths = {"all": lam_s + lam_r, "singular": lam_s, "regular": lam_r}
    blocks = [from_names(model, ["blocks.0.A", "blocks.0.B"], "singular")]
    blocks += [from_names(model, ["blocks.1.A", "blocks.1.B"], "regular")]
    ds = _llc(model, data, restrictions=["all", *blocks], seed=3)
    llc = ds.llc_mean.to_series()
    assert ds.attrs["restriction_size"] == [19, 14, 5]
    assert not ds.diverged.any()
    for name, lam in truths.items():
        assert llc[name] == pytest.approx(lam, rel=0.10), name
    assert llc["singular"] + llc["regular"] == pytest.approx(llc["all"], rel=0.10)


@pytest.mark.slow
def test_rmsprop_sgld_on_badly_scaled_inputs_where_plain_sgld_at_its_step_is_far_off():
    # inputs 3 and 4 scaled ×100: the A-columns that read them are 10⁴ times stiffer (curvature of
    # nβℓ up to κ ≈ nβ·2s·10⁴ = 4·10⁶), λ unchanged (A ↦ A·diag(scales) is a linear change of
    # variables). Plain SGLD at ε = 10⁻⁶ sits at its stability edge εκ ≈ 4: it blows up or is far
    # off, and its accurate step (εκ/4 ~ 1 %, ε ~ 10⁻⁸) would need ~10⁸ steps for the unscaled
    # directions. RMSProp's G ∝ 1/rms(∇ℓ_m) shrinks the stiff coordinates' step by ~20× and grows the
    # others' by ~3×: stiff εGκ/4 ≈ 5 %, the others relax in ~10³ steps. α = 0.999 and the raised
    # divergence threshold for devinterp's v₀ = 0 first kick as in test_slt_refined.py's stiff quadratic.
    MNHr, scales = (4, 3, 2, 2), (1.0, 1.0, 100.0, 100.0)
    truth = rrr_truth(*MNHr, seed=2)
    data = rrr_dataset(truth, N_ROWS, seed=3, input_scales=scales)
    lam = float(rrr_learning_coefficient(*MNHr))
    kw = dict(epsilon=1e-6, num_chains=64, divergence_threshold=1e5, seed=2)
    pre = _llc(truth, data, sampler="rmsprop_sgld", rmsprop_alpha=0.999, **kw)
    plain = _llc(truth, data, **(kw | dict(num_draws=1000)))
    assert not pre.diverged.any()
    assert float(pre.llc_mean) == pytest.approx(lam, rel=0.12)
    assert bool(plain.all_diverged) or abs(float(plain.llc_mean) / lam - 1) > 0.5
