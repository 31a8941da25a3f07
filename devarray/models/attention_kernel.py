"""A fused causal-attention kernel for short sequences (attention_kernel.c), compiled at first use.

At the regression transformer's sizes (16 tokens, 4 heads of 16) PyTorch's CPU attention is
mostly overhead: 16×16 batched matmuls, a softmax over 16 entries, head transposes and the
split's concatenation in backward; its flash kernel is slower still. The C kernel does one
(context, head) pair at a time in registers and L1, and the attention tensors are never split,
transposed or concatenated: forward and backward of a layer at batch 1,024 take about half the
time of the explicit form and 0.4 of the flash kernel's on 2 cores (benchmarks/attention_kernel.py:
7.4 vs 14.2 and 18.0 ms; benchmarks/llc_throughput.py's loop/explicit column measures what that
does for a whole SGLD step).

Built at first use by native.py (about a second; cached per sizes and CPU). Where it cannot be
built, or for sizes that are not powers of two, :func:`available` is False and callers use the
explicit PyTorch attention (same numbers up to float rounding).

First derivatives only (no double backward: Hessians use the explicit form), float32 CPU
tensors only, and not under ``torch.func`` transforms or ``torch.compile`` (the model checks).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import native

_SIGNATURES = {
    "attention_forward": [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_float],
    "attention_backward": [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_float],
}


@functools.cache  # the model asks on every forward call: build, load and type the library once
def _library(T: int, H: int, DH: int):
    return native.load("attention_kernel", _SIGNATURES, T=T, H=H, DH=DH)


def available(T: int, H: int, DH: int) -> bool:
    """Whether the kernel serves these sizes (sequence length and head size powers of two up to
    64) and is built, building it now if needed."""
    return native.power_of_two(T) and native.power_of_two(DH) and _library(T, H, DH) is not None


class CausalAttention(torch.autograd.Function):
    """softmax(scale·QKᵀ + causal mask) V per head, from the (B, T, 3·H·DH) projection output."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int) -> torch.Tensor:
        B, T, C3 = qkv.shape
        C = C3 // 3
        lib = _library(T, heads, C // heads)
        qkv = qkv.contiguous()
        out = qkv.new_empty(B, T, C)
        prob = qkv.new_empty(B, heads, T, T)
        scale = (C // heads) ** -0.5
        lib.attention_forward(qkv.data_ptr(), out.data_ptr(), prob.data_ptr(), B, scale)
        ctx.save_for_backward(qkv, prob)
        ctx.lib, ctx.scale = lib, scale
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative would silently miss this node
            raise RuntimeError("the fused attention kernel has no second derivative; "
                               "set model.fused_attention = False for Hessians and other higher derivatives")
        qkv, prob = ctx.saved_tensors
        dout = dout.contiguous()
        dqkv = torch.empty_like(qkv)
        ctx.lib.attention_backward(qkv.data_ptr(), prob.data_ptr(), dout.data_ptr(), dqkv.data_ptr(), qkv.shape[0], ctx.scale)
        return dqkv, None


def causal_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Fused causal attention; ``qkv`` is float32 on the CPU with q | k | v along the last dim."""
    if qkv.dtype != torch.float32 or qkv.device.type != "cpu":
        raise ValueError(f"the fused attention kernel takes float32 CPU tensors, got {qkv.dtype} on {qkv.device}")
    T, C3 = qkv.shape[-2:]
    if qkv.ndim != 3 or C3 % (3 * heads) or not available(T, heads, C3 // (3 * heads)):
        raise ValueError(f"the fused attention kernel does not serve qkv of shape {tuple(qkv.shape)} with {heads} heads "
                         "(it needs (batch, T, 3·heads·head_size) with T and head_size powers of two up to 64, "
                         "and a C compiler); use the model's explicit attention")
    return CausalAttention.apply(qkv, heads)
