"""Forward + backward of one attention layer of the regression transformer (16 tokens, 4 heads
of 16) at a batch of contexts: the fused kernel against PyTorch's explicit softmax attention
(the baseline, what runs without the kernel) and its fused SDPA (flash) kernel, timed in
alternating rounds in one process, best round kept.

    python benchmarks/attention_kernel.py [--batch 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from devarray.models.attention_kernel import causal_attention


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, T, H, DH = args.batch, 16, 4, 16
    C = H * DH
    mask = torch.ones(T, T, dtype=torch.bool).tril()

    def heads(qkv):
        return [a.view(B, T, H, DH).transpose(1, 2) for a in qkv.split(C, dim=-1)]

    def explicit(qkv):
        q, k, v = heads(qkv)
        s = ((q @ k.transpose(-2, -1)) / math.sqrt(DH)).masked_fill(~mask, float("-inf"))
        return (F.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, C)

    def sdpa(qkv):
        q, k, v = heads(qkv)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)

    variants = {"explicit": explicit, "sdpa": sdpa, "kernel": lambda qkv: causal_attention(qkv, H)}
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, T, 3 * C, generator=gen).requires_grad_()
    dout = torch.randn(B, T, C, generator=gen)
    best = dict.fromkeys(variants, math.inf)
    for _ in range(args.rounds):
        for name, f in variants.items():
            for i in range(12):  # 2 warm-up calls, then the best of 10
                t = time.perf_counter()
                torch.autograd.grad(f(qkv), qkv, dout)
                if i >= 2:
                    best[name] = min(best[name], time.perf_counter() - t)
    print(f"batch {B} contexts, {torch.get_num_threads()} threads; forward + backward of one layer")
    for name, t in best.items():
        print(f"{name:>9}: {t * 1e3:7.2f} ms   explicit/{name} = {best['explicit'] / t:5.2f}")


if __name__ == "__main__":
    main()
