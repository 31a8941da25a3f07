"""Structural observables (appendix D.2) on models whose structure is known by construction."""

import math

import numpy as np
import pytest
import torch
import xarray as xr

from devarray import observables as obs
from devarray.models.regression import RegressionConfig, RegressionTransformer
from devarray.observables.regression import make_probe
from devarray.observables.regression.structure import query_positions, summarise_attention
from devarray.tasks.regression import RegressionTask

K = 3  # tokens x1 y1 x2 y2 x3 y3 at positions 0..5
CFG = RegressionConfig(D=2, K=K, L=1, H=4, d_embed=16, d_mlp=8)
ATTN = ["attn_entropy", "attn_variability", "attn_scores", "head_class"]


@pytest.fixture(scope="module")
def probe():
    return make_probe(RegressionTask(D=2, K=K), seed=0, n=64, n_ood=2)


def hardwired(offsets):
    """A transformer whose head h attends, whatever the input, to the token ``offsets[h]`` back
    (None: uniformly over all visible tokens).

    The token embedding is zero and position t is embedded as (cos θt, sin θt, −cos θt, −sin θt, 0, …),
    which the layer norm maps to a fixed multiple u_t of itself. Head h's query is a large multiple
    of u_t rotated back by offsets[h]·θ and its key is u_t, so the score of key t' is ∝ cos θ(t − offset − t'),
    peaked at t' = t − offset; θ = π/2K keeps all visible positions apart.
    """
    torch.manual_seed(0)
    model = RegressionTransformer(CFG)
    C, T, hd = CFG.d_embed, CFG.n_tokens, CFG.d_embed // CFG.H
    theta = math.pi / T
    angle = theta * torch.arange(T, dtype=torch.float32)
    with torch.no_grad():
        model.token_embedding.weight.zero_()
        pos = torch.zeros(T, C)
        pos[:, :4] = torch.stack([angle.cos(), angle.sin(), -angle.cos(), -angle.sin()], 1)
        model.position_embedding.weight.copy_(pos)
        w = torch.zeros(3 * C, C)
        for h, offset in enumerate(offsets):
            w[C + h * hd : C + h * hd + 2, :2] = torch.eye(2)  # key: (cos θt', sin θt')
            if offset is not None:
                c, s = math.cos(offset * theta), math.sin(offset * theta)
                w[h * hd : h * hd + 2, :2] = 100 * torch.tensor([[c, s], [-s, c]])  # rotate back by offset·θ
        model.blocks[0].attn.qkv.weight.copy_(w)
    return model


def test_hardwired_attention_is_what_was_built(probe):
    with torch.no_grad():
        _, (attn,) = hardwired([1, None, 0, 2])(probe.tokens, return_attention=True)
    t = torch.arange(1, 6)
    torch.testing.assert_close(attn[:, 0, t, t - 1], torch.ones(64, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(attn[:, 1, 5], torch.full((64, 6), 1 / 6))
    torch.testing.assert_close(attn[:, 2].diagonal(dim1=-2, dim2=-1), torch.ones(64, 6), atol=1e-6, rtol=0)


def test_attention_metrics_of_hardwired_heads(probe):
    ds = obs.compute(hardwired([1, None, 0, 2]), ATTN, probe)
    prev, uniform, self_, back2 = (ds.sel(layer=0, head=h) for h in range(4))
    pos = query_positions(K)
    assert list(pos["x"]) == [2, 4] and list(pos["y"]) == [1, 3]  # x_2, x_3; y_1, y_2 (final y excluded)

    for head in (prev, self_, back2):  # hard and input-independent
        np.testing.assert_allclose(head.attn_entropy, 0, atol=1e-5)
        np.testing.assert_allclose(head.attn_variability, 0, atol=1e-5)
    np.testing.assert_allclose(uniform.attn_entropy, 1, rtol=1e-6)  # eq. (21) is 1 for uniform attention
    np.testing.assert_allclose(uniform.attn_variability, 0, atol=1e-6)

    np.testing.assert_allclose(prev.attn_prev, 1, atol=1e-6)
    np.testing.assert_allclose(prev.attn_self, 0, atol=1e-6)
    np.testing.assert_allclose(self_.attn_self, 1, atol=1e-6)
    np.testing.assert_allclose(self_.attn_prev, 0, atol=1e-6)
    # previous token of x_j is y_{j−1} and of y_j is x_j
    np.testing.assert_allclose(prev.attn_y.sel(query="x"), 1, atol=1e-6)
    np.testing.assert_allclose(prev.attn_x.sel(query="y"), 1, atol=1e-6)
    np.testing.assert_allclose(back2.attn_prev_x.sel(query="x"), 1, atol=1e-6)  # x_j -> x_{j−1}
    np.testing.assert_allclose(back2.attn_prev_y.sel(query="y"), 1, atol=1e-6)  # y_j -> y_{j−1}

    # uniform attention over t + 1 visible tokens, averaged over the query positions
    for q, ts in pos.items():
        u = uniform.sel(query=q)
        assert u.attn_self.item() == pytest.approx(np.mean(1 / (ts + 1)), rel=1e-6)
        assert u.attn_prev.item() == pytest.approx(np.mean(1 / (ts + 1)), rel=1e-6)
        assert u.attn_x.item() == pytest.approx(np.mean((ts // 2 + 1) / (ts + 1)), rel=1e-6)
        assert u.attn_y.item() == pytest.approx(np.mean((ts + 1) // 2 / (ts + 1)), rel=1e-6)

    labels = ds.head_class.sel(layer=0).transpose("head", "query").values.tolist()
    assert labels == [
        ["previous-y", "previous-token"],  # for x_j the previous token is y_{j−1}
        ["none", "none"],
        ["self", "self"],
        ["previous-x", "previous-y"],
    ]
    assert ds.head_class.dtype == np.dtype("<U14")  # fixed width whatever the labels


def test_previous_x_head_of_y_queries(probe):
    """Offset 3 takes y_j to x_{j−1}: a previous-x head for y-queries."""
    ds = obs.compute(hardwired([3, 3, 3, 3]), ["attn_scores", "head_class"], probe)
    np.testing.assert_allclose(ds.attn_prev_x.sel(query="y"), 1, atol=1e-6)
    assert set(ds.head_class.sel(query="y").values.ravel()) == {"previous-x"}


def test_variability_of_input_dependent_attention():
    """Half the contexts attend to key 0, half to key 1: ᾱ = (½, ½), V = ½·mean‖α − ᾱ‖₁ = ½ (eq. 22)."""
    T = 4
    a = torch.zeros(1, 10, 1, T, T)
    a[..., 0, 0] = 1
    a[..., 1:, 0] = 1
    a[:, 5:, :, 1:, 0], a[:, 5:, :, 1:, 1] = 0, 1
    s = summarise_attention(a)
    np.testing.assert_allclose(s.variability[0, 0], [0, 0.5, 0.5, 0.5])
    # entropy 0 at every position: each context attends to one key
    np.testing.assert_allclose(s.entropy[0, 0, 1:], 0)
    assert np.isnan(s.entropy[0, 0, 0])  # log2(1) = 0: one visible token, undefined


def test_entropy_of_a_known_distribution():
    """Attention (½, ¼, ¼) at position 2 has entropy 1.5 bits, normalised by log2(3) (eqs. 20–21)."""
    a = torch.zeros(1, 1, 1, 3, 3)
    a[..., 0, 0] = 1
    a[..., 1, :2] = 0.5
    a[..., 2, :] = torch.tensor([0.5, 0.25, 0.25])
    s = summarise_attention(a)
    np.testing.assert_allclose(s.entropy[0, 0, 1:], [1.0, 1.5 / math.log2(3)])


def test_embedding_singular_values_and_alignment():
    torch.manual_seed(0)
    model = RegressionTransformer(CFG)
    d, D1, T = CFG.d_embed, CFG.token_dim, CFG.n_tokens
    u, _ = torch.linalg.qr(torch.randn(d, D1))
    v, _ = torch.linalg.qr(torch.randn(D1, D1))
    sv = torch.tensor([3.0, 2.0, 0.5])
    eye = torch.eye(d)
    with torch.no_grad():
        model.token_embedding.weight.copy_(u @ torch.diag(sv) @ v.T)
        ds = obs.compute(model, "embedding_spectrum", None)
        np.testing.assert_allclose(ds.token_embedding_sv, sv, rtol=1e-5)
        np.testing.assert_allclose(
            ds.position_embedding_sv, np.linalg.svd(model.position_embedding.weight.numpy())[1], rtol=1e-5
        )
        assert ds.position_embedding_sv.size == min(T, d)

        # unembedding reads the first three residual directions
        model.unembedding.weight.copy_(2 * eye[:D1])
        model.token_embedding.weight.copy_(torch.stack([eye[0], eye[1] + eye[5], eye[6]], 1))
        pos = torch.zeros(T, d)
        pos[:, 2], pos[:, 7] = 1.0, torch.arange(T, dtype=torch.float32)
        model.position_embedding.weight.copy_(pos)
    ds = obs.compute(model, "embedding_alignment", None)
    np.testing.assert_allclose(ds.token_unembed_cos, [1, 1 / math.sqrt(2), 0], atol=1e-12)
    np.testing.assert_allclose(ds.position_unembed_cos, 1 / np.sqrt(1 + np.arange(T) ** 2), rtol=1e-12)


def test_effective_unembedding_reproduces_predictions(probe):
    """ŷ = W̃_U·(z − E z)/√(V z + ε) + b̃_U (D.2.4) for the residual stream z before the final layer norm."""
    torch.manual_seed(1)
    model = RegressionTransformer(CFG)
    with torch.no_grad():
        for p in (model.ln_out.weight, model.ln_out.bias, model.unembedding.bias):
            p.normal_()
    ds = obs.compute(model, "unembedding_effective", probe)
    z = []
    model.ln_out.register_forward_hook(lambda m, inp, out: z.append(inp[0]))  # returns None: output kept
    with torch.no_grad():
        y_hat = model.predict(probe.tokens).double()
    zx = z[0][:, 0::2].double()
    normalised = (zx - zx.mean(-1, keepdim=True)) / torch.sqrt(
        zx.var(-1, unbiased=False, keepdim=True) + model.ln_out.eps
    )
    reconstructed = normalised @ torch.from_numpy(ds.unembed_eff_weight.values) + ds.unembed_eff_bias.item()
    torch.testing.assert_close(reconstructed, y_hat, rtol=1e-5, atol=1e-5)
    w0 = model.unembedding.weight[0].detach().double()
    np.testing.assert_allclose(ds.unembed_eff_weight, (w0 * model.ln_out.weight.detach().double()).numpy())


def test_layernorm_collapse_fractions():
    torch.manual_seed(0)
    model = RegressionTransformer(CFG)
    ln = model.blocks[0].ln_attn
    with torch.no_grad():
        ln.weight[: CFG.d_embed // 2] = 0  # half collapsed
        ln.bias.copy_(torch.tensor([0.05, -0.0999, 0.1, -0.2] * 4))  # |β| < 0.1 is strict: half
    ds = obs.compute(model, "layernorm_collapse", None)
    assert list(ds.layernorm.values) == ["blocks.0.ln_attn", "blocks.0.ln_mlp", "ln_out"]
    small = ds.sel(layernorm="blocks.0.ln_attn")
    assert small.ln_weight_small.item() == 0.5
    assert small.ln_bias_small.item() == 0.5
    fresh = ds.sel(layernorm="ln_out")  # initialised γ = 1, β = 0
    assert (fresh.ln_weight_small.item(), fresh.ln_bias_small.item()) == (0.0, 1.0)
    np.testing.assert_array_equal(ds.ln_weight.sel(layernorm="blocks.0.ln_attn"), ln.weight.detach().numpy())
    assert ds.ln_weight.dims == ("layernorm", "d_embed")


def test_all_structural_dims(probe):
    ds = obs.compute(hardwired([1, None, 0, 2]), obs.names(task="regression"), probe)
    assert ds.attn_entropy.dims == ("layer", "head", "query") and list(ds["query"].values) == ["x", "y"]
    assert ds.token_embedding_sv.dims == ("sv_token",) and ds.sizes["sv_token"] == CFG.token_dim
    assert ds.ood_nmse.dims == ("kind", "g") and isinstance(ds, xr.Dataset)
