"""The in-context linear regression transformer of appendix F.2.1.

A pre-layer-norm, decoder-only transformer after nanoGPT: a learned positional embedding
added to a linear token embedding, ``L`` blocks of ``H``-head causal self-attention (no
biases) and a ReLU MLP (with biases), a final layer norm and a linear unembedding with bias.
With the paper's defaults (D=4, K=8, L=2, H=4, d_embed=d_mlp=64) it has 51,717 parameters
(figure F.2).

Attention has two forms with the same numbers up to float rounding (tested): the explicit one
(``q @ k.T``, mask, softmax), which returns the attention pattern and runs under ``vmap`` (the
batched SGLD path) and double backward (Hessians), and PyTorch's fused
``scaled_dot_product_attention``, used for first-derivative work when ``fused_attention`` is on
and no pattern is asked for. ``devarray.models.attention.attention_implementation`` names what ran, so the LLC group
can record it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .attention import sdpa_applies


@dataclass(frozen=True)
class RegressionConfig:
    """Architecture of the regression transformer (Table 4)."""

    D: int = 4  # task dimension
    K: int = 8  # in-context examples
    L: int = 2  # blocks
    H: int = 4  # heads per block
    d_embed: int = 64
    d_mlp: int = 64

    @property
    def n_tokens(self) -> int:
        return 2 * self.K

    @property
    def token_dim(self) -> int:
        return self.D + 1

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: RegressionConfig):
        super().__init__()
        if cfg.d_embed % cfg.H:
            raise ValueError(f"d_embed={cfg.d_embed} is not divisible by H={cfg.H}")
        self.H = cfg.H
        self.fused = False
        self.qkv = nn.Linear(cfg.d_embed, 3 * cfg.d_embed, bias=False)
        self.out = nn.Linear(cfg.d_embed, cfg.d_embed, bias=False)
        mask = torch.tril(torch.ones(cfg.n_tokens, cfg.n_tokens, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, h: torch.Tensor, need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, C = h.shape
        qkv = self.qkv(h)
        # (B, T, C) -> (B, H, T, C/H)
        q, k, v = (a.view(B, T, self.H, C // self.H).transpose(1, 2) for a in qkv.split(C, dim=-1))
        if self.fused and not need_weights and sdpa_applies(qkv):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).reshape(B, T, C)), None
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.H)
        scores = scores.masked_fill(~self.mask[:T, :T], float("-inf"))
        attn = F.softmax(scores, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(B, T, C)
        return self.out(y), attn


class MLP(nn.Module):
    def __init__(self, cfg: RegressionConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_embed, cfg.d_mlp)
        self.proj = nn.Linear(cfg.d_mlp, cfg.d_embed)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(h)))


class Block(nn.Module):
    def __init__(self, cfg: RegressionConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_embed)
        self.attn = CausalSelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_embed)
        self.mlp = MLP(cfg)

    def forward(self, h: torch.Tensor, need_weights: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, attn = self.attn(self.ln_attn(h), need_weights)
        h = h + a
        h = h + self.mlp(self.ln_mlp(h))
        return h, attn


class RegressionTransformer(nn.Module):
    """Maps token sequences ``(B, 2K, D+1)`` to output tokens of the same shape (F.2.2)."""

    def __init__(self, cfg: RegressionConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or RegressionConfig()
        self.token_embedding = nn.Linear(cfg.token_dim, cfg.d_embed, bias=False)
        self.position_embedding = nn.Embedding(cfg.n_tokens, cfg.d_embed)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.L))
        self.ln_out = nn.LayerNorm(cfg.d_embed)
        self.unembedding = nn.Linear(cfg.d_embed, cfg.token_dim)

    def forward(
        self, tokens: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        T = tokens.shape[-2]
        h = self.token_embedding(tokens) + self.position_embedding.weight[:T]
        patterns = []
        for block in self.blocks:
            h, attn = block(h, return_attention)
            patterns.append(attn)
        out = self.unembedding(self.ln_out(h))
        return (out, patterns) if return_attention else out

    @property
    def fused_attention(self) -> bool:
        """Use PyTorch's fused ``scaled_dot_product_attention`` where no pattern is asked for and
        no torch.func transform is active (default off: training and Hessians run the explicit
        form; the LLC pipeline turns it on for its first-derivative chains)."""
        return all(b.attn.fused for b in self.blocks)

    @fused_attention.setter
    def fused_attention(self, on: bool) -> None:
        for b in self.blocks:
            b.attn.fused = bool(on)

    def predict(self, tokens: torch.Tensor) -> torch.Tensor:
        """ŷ_k read from component 0 of the output at the x_k positions (eqs. 25–26)."""
        return self(tokens)[..., 0::2, 0]

    def param_dims(self) -> dict[str, tuple[str, ...]]:
        """Dimension names of every parameter tensor, for labelled storage."""
        dims = {
            "token_embedding.weight": ("d_embed", "token_dim"),
            "position_embedding.weight": ("position", "d_embed"),
            "ln_out.weight": ("d_embed",),
            "ln_out.bias": ("d_embed",),
            "unembedding.weight": ("token_dim", "d_embed"),
            "unembedding.bias": ("token_dim",),
        }
        for i in range(self.cfg.L):
            b = f"blocks.{i}."
            dims |= {
                b + "ln_attn.weight": ("d_embed",),
                b + "ln_attn.bias": ("d_embed",),
                b + "attn.qkv.weight": ("qkv", "d_embed"),
                b + "attn.out.weight": ("d_embed_out", "d_embed"),
                b + "ln_mlp.weight": ("d_embed",),
                b + "ln_mlp.bias": ("d_embed",),
                b + "mlp.fc.weight": ("d_mlp", "d_embed"),
                b + "mlp.fc.bias": ("d_mlp",),
                b + "mlp.proj.weight": ("d_embed_out", "d_mlp"),
                b + "mlp.proj.bias": ("d_embed",),
            }
        return dims

    def layer_norms(self) -> dict[str, nn.LayerNorm]:
        """Every layer norm by its parameter prefix, in forward order."""
        return {n: m for n, m in self.named_modules() if isinstance(m, nn.LayerNorm)}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
