"""Refined LLCs (issue 17): weight restrictions, data-refined LLCs and the RMSProp sampler.

Known answers: the A.1 potentials on separate parameter blocks (each block's refined LLC is its own
λ, and they add up to the whole); a head whose output is multiplied by zero (refined LLC 0); a
linear block the data cannot reach (data-refined LLC 0); a stiff quadratic where plain SGLD needs a
step 20× smaller than RMSProp-preconditioned SGLD.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from devarray.models.attention_only import Attention, AttentionOnlyConfig, AttentionOnlyTransformer
from devarray.settings import get
from devarray.settings.language import next_token_loss
from devarray.slt import estimate_llc, sgld_settings
from devarray.slt.potentials import Mixed, PotentialSum, Quadratic, Quartic, dummy_dataset, potential_loss
from devarray.slt.restrictions import everything, from_masks, from_names, resolve
from devarray.slt.sgld import run_chains

POTENTIALS = dict(batch_size=1, nbeta=10.0, epsilon=5e-3, localization=0.1, method="batched", warn=False)


def parts():
    return PotentialSum(a=Quadratic((1.0, 1.0)), b=Quartic(), c=Mixed())  # λ = 1 + 1/2 + 1 = 5/2


def test_refined_llc_of_each_potential_block_is_its_own_and_the_blocks_add_up():
    # the settings of tests/test_slt_potentials.py (γ/nβ = 0.01, εnβa/2 ≤ 5 %): within 10 % of λ
    model = parts()
    blocks = [from_names(model, [f"parts.{k}.w"], k) for k in "abc"]
    ds = estimate_llc(
        model,
        potential_loss,
        dummy_dataset(),
        restrictions=["all", *blocks],
        num_chains=64,
        num_draws=2000,
        num_burnin_steps=200,
        **POTENTIALS,
    )
    llc = ds.llc_mean.to_series()
    assert list(ds.restriction.values) == ["all", "a", "b", "c"]
    assert ds.attrs["restriction_size"] == [7, 2, 2, 3]
    for name, truth in {"all": 2.5, "a": 1.0, "b": 0.5, "c": 1.0}.items():
        assert llc[name] == pytest.approx(truth, rel=0.10), name
    assert llc[["a", "b", "c"]].sum() == pytest.approx(llc["all"], rel=0.10)
    assert ds.loss.dims == ("restriction", "chain", "draw") and ds.init_loss.dims == ("restriction",)


def test_restriction_all_is_the_plain_sampler_bitwise():
    model = parts()
    s = sgld_settings(batch_size=1, nbeta=10.0, epsilon=5e-3, localization=0.1, num_chains=3, num_draws=50)
    plain = run_chains(model, potential_loss, dummy_dataset(), s, method="loop")
    restricted = run_chains(model, potential_loss, dummy_dataset(), s, method="loop", restrictions=[everything(model)])
    assert torch.equal(plain.loss, restricted.loss)


@pytest.mark.parametrize("method", ["loop", "batched"])
def test_a_restriction_run_with_others_gives_its_numbers_alone(method):
    # chain c of every restriction uses chain c's batches and noise at the restriction's coordinates
    model = parts()
    a, c = from_names(model, ["parts.a.w"], "a"), from_names(model, ["parts.c.w"], "c")
    s = sgld_settings(batch_size=1, nbeta=10.0, epsilon=5e-3, localization=0.1, num_chains=3, num_draws=50)
    alone = run_chains(model, potential_loss, dummy_dataset(), s, method=method, restrictions=[c])
    stacked = run_chains(
        model, potential_loss, dummy_dataset(), s, method=method, restrictions=[a, everything(model), c]
    )
    assert stacked.loss.shape == (9, 50) and stacked.num_params_per_restriction == (2, 7, 3)
    if method == "loop":
        assert torch.equal(stacked.loss[6:], alone.loss)
    else:
        torch.testing.assert_close(stacked.loss[6:], alone.loss, rtol=1e-12, atol=1e-12)


def test_frozen_coordinates_stay_at_w_star():
    # the frozen block's stiffness cannot matter when it never moves: 10¹² (any move would explode
    # the loss) and 1 give bitwise the same chains, which never diverge
    s = sgld_settings(batch_size=1, nbeta=10.0, epsilon=5e-3, localization=0.1, num_chains=2, num_draws=100)
    runs = []
    for stiffness in (1e12, 1.0):
        model = PotentialSum(a=Quadratic((1.0, 2.0)), b=Quadratic((stiffness,)))
        runs.append(
            run_chains(model, potential_loss, dummy_dataset(), s, restrictions=[from_names(model, ["parts.a.w"])])
        )
    assert torch.equal(runs[0].loss, runs[1].loss)
    assert (runs[0].diverged_step == -1).all() and runs[0].num_params_per_restriction == (2,)


def test_masks_and_names_are_checked():
    model = parts()
    with pytest.raises(ValueError, match="no trainable parameter 'parts.z.w'.*parts.a.w"):
        from_names(model, ["parts.z.w"])
    with pytest.raises(ValueError, match="shape"):
        from_masks(model, {"parts.a.w": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="boolean"):
        from_masks(model, {"parts.a.w": torch.ones(2)})
    with pytest.raises(ValueError, match="select no parameter"):
        from_masks(model, {"parts.a.w": torch.zeros(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown restriction 'head 0.0'"):
        resolve(model, "head 0.0", {"all": everything(model)})
    r = from_masks(model, {"parts.c.w": torch.tensor([True, False, True])}, "c02")
    assert r.size(model) == 2


@pytest.mark.parametrize("setting", ["lr", "lm"])
def test_the_heads_of_a_layer_partition_its_attention_weights(setting):
    s = get(setting)
    model = s.build_model(s.config("tiny").to_dict())
    vocab = s.restrictions(model)
    heads = [vocab[n] for n in s.restriction_groups(model)["heads"] if n.startswith("head 0.")]
    cover = {}
    for r in heads:
        for k, m in r.masks.items():
            cover[k] = cover.get(k, 0) + m.to(torch.int64)
    assert all(bool((c == 1).all()) for c in cover.values())  # every entry in exactly one head
    per_head = 4 * (model.cfg.d_model * model.cfg.d_head if setting == "lm" else model.cfg.d_embed**2 // model.cfg.H)
    assert {r.size(model) for r in heads} == {per_head}


def test_stacked_heads_of_the_language_model_give_each_head_its_numbers_alone():
    # chain c of every head uses chain c's batches and noise, and a row's gradient is read at its own
    # head's coordinates only: a head's numbers do not depend on which heads run beside it
    s = get("lm")
    cfg = s.config("tiny").to_dict()
    model = s.build_model(cfg)
    tokens = torch.randint(0, model.cfg.d_vocab, (16, model.cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    vocab = s.restrictions(model)
    heads = [vocab["head 0.1"], vocab["head 1.0"], vocab["layer 1 attn"]]
    settings = sgld_settings(batch_size=8, nbeta=5.0, epsilon=1e-3, localization=100.0, num_chains=2, num_draws=6)
    stacked = run_chains(model, next_token_loss, (tokens,), settings, method="loop", restrictions=heads)
    for r, head in enumerate(heads):
        alone = run_chains(model, next_token_loss, (tokens,), settings, method="loop", restrictions=[head])
        assert torch.equal(stacked.loss[2 * r : 2 * r + 2], alone.loss)


class _SilencedHead(Attention):
    """The attention of the language model with head ``silent``'s output multiplied by zero."""

    silent = 1

    def forward(self, qk_in, v_in, need_weights=True):
        gate = torch.ones(self.W_O.shape[0], 1, 1, dtype=self.W_O.dtype)
        gate[self.silent] = 0.0
        W_O = self.W_O * gate
        q = torch.einsum("btd,hde->bhte", qk_in, self.W_Q) + self.b_Q[:, None]
        k = torch.einsum("btd,hde->bhte", qk_in, self.W_K) + self.b_K[:, None]
        v = torch.einsum("btd,hde->bhte", v_in, self.W_V) + self.b_V[:, None]
        T = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        pattern = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        return torch.einsum("bhte,hed->btd", pattern @ v, W_O) + self.b_O, pattern


def test_a_head_whose_output_is_multiplied_by_zero_has_refined_llc_zero():
    torch.manual_seed(0)
    cfg = AttentionOnlyConfig(n_layers=1, d_vocab=16, n_ctx=8, d_model=16, n_heads=2, d_head=4)
    model = AttentionOnlyTransformer(cfg)
    model.blocks[0].attn.__class__ = _SilencedHead  # same parameters and names, head 0.1 silenced
    tokens = torch.randint(0, 16, (32, 8), generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):  # near a minimum, so that the live head's estimate is a positive LLC
        opt.zero_grad()
        next_token_loss(model, tokens).backward()
        opt.step()
    vocab = get("lm").restrictions(model)
    # full batch (m = n): every draw's loss is ℓ_n(w*), so the silenced head's estimate is 0 up to
    # float32 rounding of the loss (nβ × a few ulp)
    ds = estimate_llc(
        model,
        next_token_loss,
        (tokens,),
        restrictions=[vocab["head 0.0"], vocab["head 0.1"]],
        batch_size=32,
        nbeta=10.0,
        epsilon=1e-3,
        localization=100.0,
        num_chains=2,
        num_draws=40,
        warn=False,
    )
    llc = ds.llc_mean.to_series()
    assert abs(llc["head 0.1"]) < 1e-4
    assert llc["head 0.0"] > 0.05


class _TwoBlocks(nn.Module):
    """f(x) = (a x₁, A (x₂, x₃)): a linear block of 1 weight and one of 4; λ = 1/2 and 2 on data
    that reaches both, and the second block's λ is 0 on data with x₂ = x₃ = 0."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.A = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))

    def forward(self, x):
        return torch.cat([self.a * x[:, :1], x[:, 1:] @ self.A.T], dim=1)


def _block_loss(model, x, y):
    return ((model(x) - y) ** 2).sum(1).mean()


@pytest.mark.slow
def test_data_the_restricted_part_cannot_affect_gives_refined_llc_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 3, generator=g, dtype=torch.float64) / math.sqrt(2)  # E x² = 1/2: ℓ = |w|² per block
    off = x.clone()
    off[:, 1:] = 0
    y = torch.zeros_like(x)
    model = _TwoBlocks()
    blocks = [from_names(model, ["a"], "a"), from_names(model, ["A"], "A")]
    kw = dict(restrictions=blocks, batch_size=256, nbeta=10.0, epsilon=5e-3, localization=0.1, num_chains=32)
    kw |= dict(num_draws=1000, num_burnin_steps=100, method="batched", warn=False)
    on = estimate_llc(model, _block_loss, (x, y), **kw).llc_mean.to_series()
    reach = estimate_llc(model, _block_loss, (off, y), **kw).llc_mean.to_series()
    assert on["a"] == pytest.approx(0.5, rel=0.15) and on["A"] == pytest.approx(2.0, rel=0.10)
    assert reach["a"] == pytest.approx(0.5, rel=0.15)
    assert reach["A"] == 0.0  # ℓ_m does not depend on A at all on this data


# --- RMSProp-preconditioned SGLD --------------------------------------------------------------


@pytest.mark.slow
def test_rmsprop_sgld_takes_a_step_that_plain_sgld_needs_20_times_smaller():
    # w₁² · 100 + w₂² · 10⁴ (λ = 1): plain SGLD is stable only for ε nβ a < 2, ε < 2·10⁻⁵. RMSProp
    # divides each coordinate's step by its gradient scale ~√(2a/nβ). α = 0.999: the running mean
    # square must average over many of a chain's mixing times (with devinterp's α = 0.99 it follows
    # the gradient of the moment, and the missing Γ term of Li et al. biased this estimate by +25 %).
    # devinterp's RMSProp starts from v = 0, a step of ε/δ at w* where a potential's gradient is 0:
    # the divergence threshold is raised so that first kick does not count.
    kw = dict(batch_size=1, nbeta=10.0, localization=0.1, num_chains=32, num_draws=4000, num_burnin_steps=1000)
    kw |= dict(method="batched", warn=False, divergence_threshold=1e4)
    potential = Quadratic((100.0, 1e4))
    big = estimate_llc(potential, potential_loss, dummy_dataset(), epsilon=4e-5, **kw)
    pre = estimate_llc(
        potential, potential_loss, dummy_dataset(), epsilon=4e-5, sampler="rmsprop_sgld", rmsprop_alpha=0.999, **kw
    )
    small = estimate_llc(potential, potential_loss, dummy_dataset(), epsilon=2e-6, **kw)
    assert bool(big.all_diverged)
    assert float(pre.llc_mean) == pytest.approx(1.0, rel=0.10) and not pre.diverged.any()
    assert float(small.llc_mean) == pytest.approx(1.0, rel=0.10)
    assert pre.attrs["sampler"] == "rmsprop_sgld" and pre.attrs["rmsprop_alpha"] == 0.999
    assert "sampler" not in small.attrs  # plain SGLD records what it always did


def test_rmsprop_works_with_restrictions_and_both_parametrisations():
    a = sgld_settings(batch_size=1, epsilon=1e-3, nbeta=10.0, localization=0.1, sampler="rmsprop_sgld")
    b = sgld_settings(batch_size=1, epsilon=1e-3, beta_tilde=5e-3, gamma_tilde=5e-5, sampler="rmsprop_sgld")
    assert a == b
    model = parts()
    s = sgld_settings(
        batch_size=1, epsilon=1e-3, nbeta=10.0, localization=0.1, num_chains=2, num_draws=30, sampler="rmsprop_sgld"
    )
    out = run_chains(model, potential_loss, dummy_dataset(), s, restrictions=[from_names(model, ["parts.b.w"])])
    assert np.isfinite(out.loss.numpy()).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sampler="sghmc"), "unknown sampler 'sghmc'; choose one of sgld, rmsprop_sgld"),
        (dict(sampler="rmsprop_sgld", rmsprop_alpha=1.0), "rmsprop_alpha"),
        (dict(sampler="rmsprop_sgld", rmsprop_eps=0.0), "rmsprop_eps"),
    ],
)
def test_bad_sampler_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sgld_settings(batch_size=1, epsilon=1e-3, localization=1.0, nbeta=1.0, **kwargs)


def test_auto_runs_stacked_restrictions_on_the_loop_on_a_cpu():
    # the vmap path took GBs and ran slower on stacked LM heads (BENCHMARKS.md); plain runs keep their rule
    from devarray.slt.sgld import choose_method

    example = (torch.zeros(32, 32, dtype=torch.long),)
    assert choose_method("auto", torch.device("cpu"), example, 64, stacked=True) == "loop"
    assert choose_method("auto", torch.device("cpu"), example, 8) == "batched"
    assert choose_method("auto", torch.device("cuda"), example, 64, stacked=True) == "batched"


def _tiny_lm_heads():
    s = get("lm")
    model = s.build_model(s.config("tiny").to_dict())
    model.fused_attention = True
    tokens = torch.randint(0, model.cfg.d_vocab, (16, model.cfg.n_ctx), generator=torch.Generator().manual_seed(0))
    vocab = s.restrictions(model)
    heads = [vocab[h] for h in s.restriction_groups(model)["heads"]]
    return s, model, tokens, heads


def test_the_shared_path_gives_each_head_its_own_gradient_and_loss():
    # every head's row computed in one call on a shared batch equals that head's weights swapped
    # into the model and differentiated alone, at points off w* (each row's head moved)
    from devarray.slt.sgld import _restricted

    s, model, tokens, heads = _tiny_lm_heads()
    heads = heads[::-1]  # rows in any order of layers
    flat, masks = _restricted(model, next_token_loss, heads)
    stack = s.restriction_stack(model, flat, heads)
    w = flat.w0 + 0.05 * torch.randn(len(heads), flat.dim, generator=torch.Generator().manual_seed(1)) * masks
    grad, loss = stack(w, tokens)
    for r in range(len(heads)):
        wr = w[r].clone().requires_grad_()
        expected = flat(wr, tokens)
        (g,) = torch.autograd.grad(expected, wr)
        torch.testing.assert_close(loss[r], expected.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad[r], g * masks[r], rtol=1e-4, atol=1e-6)
    assert torch.all(grad[~masks] == 0)


def test_auto_takes_the_shared_path_for_heads_and_gets_the_loops_llcs():
    s, model, tokens, heads = _tiny_lm_heads()
    kw = dict(batch_size=8, nbeta=5.0, epsilon=1e-3, localization=100.0, num_chains=2, num_draws=8, warn=False)
    shared = estimate_llc(model, next_token_loss, (tokens,), restrictions=heads, stack=s.restriction_stack, **kw)
    loop = estimate_llc(model, next_token_loss, (tokens,), restrictions=heads, method="loop", **kw)
    assert shared.attrs["method"] == "shared" and loop.attrs["method"] == "loop"
    # the same chains up to float rounding of the sum over heads
    np.testing.assert_allclose(shared.llc_per_chain, loop.llc_per_chain, rtol=1e-3, atol=1e-3)


def test_heads_beside_other_restrictions_share_and_the_others_run_alone():
    from devarray.slt.restrictions import everything
    from devarray.slt.sgld import _restricted

    s, model, tokens, heads = _tiny_lm_heads()
    mixed = [heads[0], everything(model), heads[5]]
    assert s.restriction_stack(model, _restricted(model, next_token_loss, mixed)[0], mixed) is None
    kw = dict(batch_size=8, nbeta=5.0, epsilon=1e-3, localization=100.0, num_chains=2, num_draws=4, warn=False)
    ds = estimate_llc(model, next_token_loss, (tokens,), restrictions=mixed, stack=s.restriction_stack, **kw)
    # the ordinary LLC in the stack is the plain sampler's, bitwise; the heads are the loop's, to rounding
    plain = estimate_llc(model, next_token_loss, (tokens,), **kw)
    assert ds.attrs["method"] == "shared+" + plain.attrs["method"]
    assert list(ds.restriction.values) == ["head 0.0", "all", "head 1.1"]
    assert ds.attrs["restriction_size"] == [r.size(model) for r in mixed]
    assert ds.llc_per_chain.sel(restriction="all").values.tobytes() == plain.llc_per_chain.values.tobytes()
    loop = estimate_llc(model, next_token_loss, (tokens,), restrictions=mixed, method="loop", **kw)
    np.testing.assert_allclose(ds.llc_per_chain, loop.llc_per_chain, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="shared"):
        estimate_llc(
            model, next_token_loss, (tokens,), restrictions=[heads[0], everything(model)], method="shared", **kw
        )


@pytest.mark.parametrize(
    "names, method, stacked",
    [
        (["head 0.0", "head 1.2"], "auto", True),
        (["head 0.0", "all", "head 1.2"], "auto", True),
        (["head 0.0", "all", "head 1.2"], "shared", True),
        (["head 0.0", "head 1.2"], "loop", True),
        (["head 0.0", "embed"], "auto", True),  # one head alone: nothing to share
        (["all"], "auto", True),
        (["head 0.0", "head 1.2"], "auto", False),  # no stack given
    ],
)
def test_the_planned_path_is_the_path_the_sampler_takes(names, method, stacked):
    # the llc group's fingerprint records the planned path before anything runs
    from devarray.slt.sgld import planned_method

    s, model, tokens, _ = _tiny_lm_heads()
    vocab = s.restrictions(model)
    restrictions = [vocab[n] for n in names]
    settings = sgld_settings(batch_size=8, nbeta=5.0, epsilon=1e-3, localization=100.0, num_chains=2, num_draws=1)
    stack = s.restriction_stack if stacked else None
    ran = run_chains(model, next_token_loss, (tokens,), settings, method=method, restrictions=restrictions, stack=stack)
    planned = planned_method(
        model, next_token_loss, (tokens[:8],), 2, restrictions=restrictions, stack=stack, method=method
    )
    assert planned == ran.method
