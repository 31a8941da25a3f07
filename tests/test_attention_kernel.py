"""The fused causal-attention kernel against the explicit softmax attention in float64."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from devarray.models import attention_kernel
from devarray.models.attention_kernel import causal_attention

pytestmark = pytest.mark.skipif(not attention_kernel.available(16, 4, 16), reason="no C compiler to build the kernel")


def reference(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (a.view(B, T, heads, C // heads).transpose(1, 2) for a in qkv.split(C, dim=-1))
    s = (q @ k.transpose(-2, -1)) / math.sqrt(C // heads)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return (F.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, C)


@pytest.mark.parametrize("T,H,DH", [(16, 4, 16), (8, 2, 4), (32, 1, 8)])
def test_forward_and_gradient_match_float64_reference(T, H, DH):
    gen = torch.Generator().manual_seed(T * H + DH)
    qkv = (2 * torch.randn(37, T, 3 * H * DH, generator=gen)).requires_grad_()
    dout = torch.randn(37, T, H * DH, generator=gen)
    out = causal_attention(qkv, H)
    (grad,) = torch.autograd.grad(out, qkv, dout)
    q64 = qkv.detach().double().requires_grad_()
    ref = reference(q64, H)
    (ref_grad,) = torch.autograd.grad(ref, q64, dout.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-5)
    # causality: the first token's output is its own value vector, whatever the others hold
    C = H * DH
    torch.testing.assert_close(out[:, 0], qkv[:, 0, 2 * C :].detach())


def test_non_finite_inputs_propagate():
    qkv = torch.randn(3, 16, 192)
    qkv[1, 5, 3] = float("nan")  # a query entry of token 5, head 0
    qkv[2, 0, 64] = float("inf")  # a key entry of token 0, seen by every query of head 0
    out = causal_attention(qkv, 4)
    assert torch.isfinite(out[0]).all()
    assert out[1, 5, :16].isnan().all() and torch.isfinite(out[1, :5]).all()
    assert out[2, 0, :16].isnan().all()  # the first query sees only the infinite key
    # the same entries are non-finite as in the reference, and the rest agree
    torch.testing.assert_close(out.double(), reference(qkv.double(), 4), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_second_derivatives_are_refused_not_silently_wrong():
    qkv = torch.randn(2, 16, 192, requires_grad=True)
    with pytest.raises(RuntimeError, match="no second derivative; set model.fused_attention = False"):
        torch.autograd.grad(causal_attention(qkv, 4).pow(2).sum(), qkv, create_graph=True)


def test_result_does_not_depend_on_thread_count():
    qkv = torch.randn(64, 16, 192, requires_grad=True)
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = causal_attention(qkv, 4)
            outs.append((out, torch.autograd.grad(out.sum(), qkv)[0]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_sizes_it_does_not_serve_and_bad_tensors():
    assert not attention_kernel.available(12, 4, 16)  # not a power of two: explicit attention runs
    assert not attention_kernel.available(16, 4, 24)
    with pytest.raises(ValueError, match="float32 CPU"):
        causal_attention(torch.randn(2, 16, 192, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="does not serve qkv of shape"):
        causal_attention(torch.randn(2, 12, 192), 4)


def test_without_a_compiler_the_model_falls_back_with_a_warning(tmp_path):
    code = """
import warnings, torch
from devarray.models.regression import RegressionTransformer
m = RegressionTransformer(); m.fused_attention = True
x = torch.randn(4, 16, 5)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    y = m(x)
m.fused_attention = False
assert torch.allclose(y, m(x), atol=1e-6)
print([str(x.message) for x in w])
"""
    env = {"DEVARRAY_CACHE": str(tmp_path), "CC": str(tmp_path / "no-such-cc"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "fused attention unavailable" in r.stdout and "no-such-cc" in r.stdout
    assert not list(tmp_path.rglob("*.so"))  # no half-built or empty files left in the cache
