import torch

from devarray.models.regression import RegressionConfig, RegressionTransformer, count_parameters

# Figure F.2, component by component (our module names on the left).
FIGURE_F2 = {
    "token_embedding.weight": 320,
    "position_embedding.weight": 1024,
    "ln_out.weight": 64,
    "ln_out.bias": 64,
    "unembedding.weight": 320,
    "unembedding.bias": 5,
}
for i in range(2):
    FIGURE_F2 |= {
        f"blocks.{i}.ln_attn.weight": 64,
        f"blocks.{i}.ln_attn.bias": 64,
        f"blocks.{i}.attn.qkv.weight": 12_288,
        f"blocks.{i}.attn.out.weight": 4_096,
        f"blocks.{i}.ln_mlp.weight": 64,
        f"blocks.{i}.ln_mlp.bias": 64,
        f"blocks.{i}.mlp.fc.weight": 4_096,
        f"blocks.{i}.mlp.fc.bias": 64,
        f"blocks.{i}.mlp.proj.weight": 4_096,
        f"blocks.{i}.mlp.proj.bias": 64,
    }


def test_paper_parameter_count():
    assert count_parameters(RegressionTransformer()) == 51_717


def test_per_component_counts_match_figure_f2():
    model = RegressionTransformer()
    assert {n: p.numel() for n, p in model.named_parameters()} == FIGURE_F2


def test_param_dims_name_every_tensor_with_matching_rank():
    model = RegressionTransformer()
    dims = model.param_dims()
    assert set(dims) == set(model.state_dict())
    sizes = {}
    for name, tensor in model.state_dict().items():
        assert len(dims[name]) == tensor.ndim, name
        for d, n in zip(dims[name], tensor.shape):
            assert sizes.setdefault(d, n) == n, f"dim {d} has two sizes"


def test_attention_is_causal_and_normalised():
    torch.manual_seed(0)
    model = RegressionTransformer(RegressionConfig(D=2, K=3, L=1, H=2, d_embed=8, d_mlp=8))
    tokens = torch.randn(4, 6, 3)
    _, (attn,) = model(tokens, return_attention=True)
    assert attn.shape == (4, 2, 6, 6)
    assert torch.allclose(attn.sum(-1), torch.ones(4, 2, 6))
    assert (attn.triu(1) == 0).all()
    # a change to the last token cannot change earlier outputs
    changed = tokens.clone()
    changed[:, -1] += 1.0
    assert torch.allclose(model(tokens)[:, :-1], model(changed)[:, :-1])


def test_model_batches_under_vmap():
    from torch.func import functional_call, stack_module_state, vmap

    torch.manual_seed(0)
    models = [RegressionTransformer(RegressionConfig(D=2, K=3, L=1, H=2, d_embed=8, d_mlp=8)) for _ in range(3)]
    params, buffers = stack_module_state(models)
    tokens = torch.randn(5, 6, 3)
    out = vmap(lambda p, b: functional_call(models[0], (p, b), (tokens,)))(params, buffers)
    for i, m in enumerate(models):
        assert torch.allclose(out[i], m(tokens), atol=1e-6)
