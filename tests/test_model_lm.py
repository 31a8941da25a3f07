import math
import warnings
from dataclasses import replace

import pytest
import torch
from torch.func import functional_call, vmap

from devarray.models import AttentionOnlyConfig, AttentionOnlyTransformer, from_transformer_lens, to_transformer_lens
from devarray.models.attention_only import to_hooked_transformer

SMALL = AttentionOnlyConfig(n_layers=2, d_vocab=50, n_ctx=16, d_model=32, n_heads=4, d_head=8)

# Figure F.1, component by component (TransformerLens names on the left).
FIGURE_F1_BLOCK = {
    "ln1.w": 256,
    "ln1.b": 256,
    "attn.W_Q": 65_536,
    "attn.W_K": 65_536,
    "attn.W_V": 65_536,
    "attn.W_O": 65_536,
    "attn.b_Q": 256,
    "attn.b_K": 256,
    "attn.b_V": 256,
    "attn.b_O": 256,
}


def figure_f1(n_layers: int) -> dict[str, int]:
    counts = {
        "embed.W_E": 1_280_000,
        "pos_embed.W_pos": 262_144,
        "ln_final.w": 256,
        "ln_final.b": 256,
        "unembed.W_U": 1_280_000,
        "unembed.b_U": 5_000,
    }
    for i in range(n_layers):
        counts |= {f"blocks.{i}.{k}": n for k, n in FIGURE_F1_BLOCK.items()}
    return counts


def randomised(cfg: AttentionOnlyConfig = SMALL, seed: int = 0) -> AttentionOnlyTransformer:
    """A model with every parameter (biases and layer norms included) away from its init, so a
    comparison exercises each of them."""
    torch.manual_seed(seed)
    model = AttentionOnlyTransformer(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name.endswith(("ln1.w", "ln_final.w")) else 0.0))
        model.pos_embed.W_pos.mul_(3.0)  # position must matter for the Shortformer checks
    return model


def tokens(batch: int = 3, T: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, SMALL.d_vocab, (batch, T), generator=torch.Generator().manual_seed(seed))


def test_paper_parameter_counts():
    assert AttentionOnlyTransformer(AttentionOnlyConfig()).n_params == 3_355_016
    assert AttentionOnlyTransformer(AttentionOnlyConfig(n_layers=1)).n_params == 3_091_336


@pytest.mark.parametrize("n_layers", [1, 2])
def test_per_component_counts_match_figure_f1(n_layers):
    model = AttentionOnlyTransformer(AttentionOnlyConfig(n_layers=n_layers))
    assert {n: p.numel() for n, p in model.named_parameters()} == figure_f1(n_layers)


def test_names_and_shapes_are_transformer_lens():
    c = SMALL
    H, D, E = c.n_heads, c.d_model, c.d_head
    want = {
        "embed.W_E": (c.d_vocab, D),
        "pos_embed.W_pos": (c.n_ctx, D),
        "ln_final.w": (D,),
        "ln_final.b": (D,),
        "unembed.W_U": (D, c.d_vocab),
        "unembed.b_U": (c.d_vocab,),
    }
    for i in range(c.n_layers):
        b = f"blocks.{i}."
        want |= {
            b + "ln1.w": (D,),
            b + "ln1.b": (D,),
            b + "attn.W_Q": (H, D, E),
            b + "attn.W_K": (H, D, E),
            b + "attn.W_V": (H, D, E),
            b + "attn.W_O": (H, E, D),
            b + "attn.b_Q": (H, E),
            b + "attn.b_K": (H, E),
            b + "attn.b_V": (H, E),
            b + "attn.b_O": (D,),
        }
    model = AttentionOnlyTransformer(c)
    assert {n: tuple(t.shape) for n, t in model.state_dict().items()} == want


def test_param_dims_name_every_tensor_with_consistent_sizes():
    model = AttentionOnlyTransformer(AttentionOnlyConfig())
    dims = model.param_dims()
    assert set(dims) == set(model.state_dict())
    sizes = {}
    for name, tensor in model.state_dict().items():
        assert len(dims[name]) == tensor.ndim, name
        for d, n in zip(dims[name], tensor.shape):
            assert sizes.setdefault(d, n) == n, f"dim {d} has two sizes"


def test_init_is_transformer_lens_gpt2_and_seeded():
    torch.manual_seed(0)
    model = AttentionOnlyTransformer(AttentionOnlyConfig())
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("W_"):
            assert abs(p.std().item() - 0.8 / math.sqrt(256)) < 0.002, name
        elif leaf == "w":
            assert (p == 1).all(), name
        else:
            assert (p == 0).all(), name
    torch.manual_seed(0)
    again = AttentionOnlyTransformer(AttentionOnlyConfig())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


def test_pos_init_std_sets_the_positional_embedding_alone():
    model = AttentionOnlyTransformer(AttentionOnlyConfig(n_layers=1, init_std=0.02, pos_init_std=1.0))
    assert abs(model.pos_embed.W_pos.std().item() - 1.0) < 0.01
    assert abs(model.embed.W_E.std().item() - 0.02) < 0.001
    assert abs(model.blocks[0].attn.W_Q.std().item() - 0.02) < 0.001


def test_position_enters_only_through_queries_and_keys():
    model, x = randomised(), tokens()
    before = model(x)
    with torch.no_grad():
        model.pos_embed.W_pos.add_(torch.randn_like(model.pos_embed.W_pos))
    assert not torch.allclose(model(x), before, atol=1e-3)  # position does matter via Q and K ...
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_Q.zero_()
            block.attn.W_K.zero_()
    without_qk = model(x)
    with torch.no_grad():
        model.pos_embed.W_pos.normal_(std=5.0)
    # ... and only there: neither the residual stream nor the values see it.
    assert torch.allclose(model(x), without_qk, atol=1e-5)


def test_logits_at_t_ignore_later_tokens():
    model, x = randomised(), tokens()
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % SMALL.d_vocab
    a, b = model(x), model(changed)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:], atol=1e-3)


def test_attention_patterns_are_causal_distributions():
    model, x = randomised(), tokens(T=7)
    pat = model.attention_patterns(x)
    assert pat.shape == (2, 3, 4, 7, 7)
    assert torch.allclose(pat.sum(-1), torch.ones(2, 3, 4, 7), atol=1e-6)
    assert (pat.triu(1) == 0).all()
    logits, patterns = model(x, return_attention=True)
    assert torch.allclose(logits, model(x)) and torch.equal(torch.stack(patterns), pat)


def test_fused_and_explicit_attention_agree_with_their_gradients():
    model, x = randomised(), tokens()
    grads = []
    for fused in (False, True):
        model.fused_attention = fused
        model.zero_grad()
        logits = model(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = grads
    assert torch.allclose(l0, l1, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g0, g1))


@pytest.mark.parametrize("fused", [False, True])
def test_vmap_over_stacked_parameters(fused):
    # fused=True must fall back to the explicit form under vmap and give the same answer.
    models = [randomised(seed=s) for s in range(3)]
    for m in models:
        m.fused_attention = fused
    names = [n for n, _ in models[0].named_parameters()]
    stacked = {n: torch.stack([m.get_parameter(n).detach() for m in models]) for n in names}
    x = tokens()
    out = vmap(lambda p: functional_call(models[0], p, (x,)))(stacked)
    assert out.shape == (3, 3, 16, SMALL.d_vocab)
    for i, m in enumerate(models):
        assert torch.allclose(out[i], m(x), atol=1e-5)


def test_double_backward_gives_the_hessian_vector_product():
    cfg = AttentionOnlyConfig(n_layers=2, d_vocab=50, n_ctx=8, d_model=16, n_heads=2, d_head=8)
    model, x = randomised(cfg).double(), tokens(T=8)
    params = list(model.parameters())
    v = [torch.randn_like(p) for p in params]

    def grad(create_graph: bool):
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        return torch.autograd.grad(loss, params, create_graph=create_graph)

    g = grad(True)
    hvp = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, v)), params)
    eps = 1e-5
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(eps * d)
    g_plus = grad(False)
    with torch.no_grad():
        for p, d in zip(params, v):
            p.sub_(2 * eps * d)
    g_minus = grad(False)
    for h, gp, gm in zip(hvp, g_plus, g_minus):
        assert torch.allclose(h, (gp - gm) / (2 * eps), atol=1e-6, rtol=1e-4)
    assert sum(h.abs().sum() for h in hvp) > 0


def test_rejects_contexts_longer_than_n_ctx():
    with pytest.raises(ValueError, match="n_ctx"):
        AttentionOnlyTransformer(SMALL)(torch.zeros(1, SMALL.n_ctx + 1, dtype=torch.long))


def test_export_config_and_refusal_of_other_architectures():
    model = randomised()
    kwargs, state = to_transformer_lens(model)
    assert kwargs["attn_only"] and kwargs["positional_embedding_type"] == "shortformer"
    assert kwargs["normalization_type"] == "LN" and kwargs["d_vocab_out"] == SMALL.d_vocab
    back = from_transformer_lens(kwargs, state)
    assert back.cfg == AttentionOnlyConfig(**{**SMALL.to_dict(), "init_std": SMALL.weight_std})
    assert torch.equal(back(tokens()), model(tokens()))
    assert torch.equal(from_transformer_lens({**kwargs, "attn_scale": -1.0}, state)(tokens()), model(tokens()))
    others = [
        ("positional_embedding_type", "standard"),
        ("attn_only", False),
        ("normalization_type", "LNPre"),
        ("attn_scale", 3.0),
        ("use_attn_scale", False),
        ("attention_dir", "bidirectional"),
    ]
    for key, value in others:
        with pytest.raises(ValueError, match=key):
            from_transformer_lens({**kwargs, key: value}, state)


def _hooked(n_layers: int, **kw):
    transformer_lens = pytest.importorskip("transformer_lens")
    kwargs, _ = to_transformer_lens(AttentionOnlyTransformer(replace(SMALL, n_layers=n_layers)))
    with warnings.catch_warnings():  # TransformerLens 3.x deprecates HookedTransformer
        warnings.simplefilter("ignore", DeprecationWarning)
        return transformer_lens.HookedTransformer(transformer_lens.HookedTransformerConfig(**{**kwargs, **kw}))


@pytest.mark.parametrize("n_layers", [1, 2])
def test_transformer_lens_agrees_both_ways(n_layers):
    ht = _hooked(n_layers, seed=7)
    cfg = replace(SMALL, n_layers=n_layers)

    # Same names, order and shapes as HookedTransformer's parameters; seeded init draw for draw.
    torch.manual_seed(7)
    ours = AttentionOnlyTransformer(cfg)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ht.named_parameters()]
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), ht.parameters()))

    x = tokens()
    # ours -> TransformerLens
    model = randomised(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exported = to_hooked_transformer(model)
    assert torch.allclose(exported(x), model(x), atol=1e-5)

    # TransformerLens -> ours, from a HookedTransformer with every parameter moved off its init
    with torch.no_grad():
        for p in ht.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    back = from_transformer_lens(ht)
    assert torch.allclose(back(x), ht(x), atol=1e-5)
    assert not torch.allclose(back(x), ours(x), atol=1e-3)
