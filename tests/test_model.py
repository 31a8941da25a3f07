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


def test_fused_attention_is_opt_in_and_agrees_within_rounding():
    from devarray.tasks.regression import RegressionTask

    torch.manual_seed(0)
    model = RegressionTransformer()
    assert not model.fused_attention
    b = RegressionTask().dataset(64, "test")

    def loss_and_grads():
        model.zero_grad()
        loss = ((model.predict(b.tokens) - b.y) ** 2).mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    loss, grads = loss_and_grads()
    model.fused_attention = True
    assert all(blk.attn.fused for blk in model.blocks)
    fused_loss, fused_grads = loss_and_grads()
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=0)
    for g, f in zip(grads, fused_grads):
        torch.testing.assert_close(f, g, rtol=1e-4, atol=1e-6)
    # asking for the weights, or running under vmap, takes the explicit path
    _, patterns = model(b.tokens[:4], return_attention=True)
    assert all(p.shape == (4, 4, 16, 16) for p in patterns)
    batched = torch.vmap(model.predict)(b.tokens[:8].reshape(2, 4, 16, 5))
    torch.testing.assert_close(batched.reshape(8, 8), model.predict(b.tokens[:8]), rtol=1e-5, atol=1e-6)
