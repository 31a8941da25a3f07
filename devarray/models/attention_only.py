"""The attention-only language models of appendix F.1.

One- and two-layer attention-only transformers (figure F.1): a token embedding, ``L``
pre-layer-norm blocks of ``H``-head causal self-attention (with biases), a final layer norm
and an unembedding with bias. Position enters only through Shortformer position-infused
attention (Press et al., 2021): the learned positional embedding is added to the *input of
the queries and keys* in every block, after that block's layer norm, and never to the
residual stream or the values. With Table 3's settings (d_vocab=5000, n_ctx=1024,
d_model=256, H=8, d_head=32) the model has 3,091,336 parameters at L=1 and 3,355,016 at L=2.

The paper trained TransformerLens's ``HookedTransformer`` (F.1.1), so this file mirrors it:
parameter names, shapes and registration order are TransformerLens's, the forward pass is
its computation (``ln1(resid) + W_pos`` into Q and K, ``ln1(resid)`` into V, scores scaled by
``1/sqrt(d_head)``), and :func:`to_transformer_lens` / :func:`from_transformer_lens` convert
checkpoints either way. The default weight init is TransformerLens's "gpt2" init (normal with
std ``0.8/sqrt(d_model)``, biases zero, layer norms one/zero), drawn in the same order, so
``torch.manual_seed(s)`` followed by ``AttentionOnlyTransformer(cfg)`` gives the weights of a
``HookedTransformer`` built with ``seed=s`` (Table 3's "Model initialization" seed is that one).

Attention is written out (``q @ k.T``, mask, softmax) by default: that form returns the
pattern, batches under ``torch.func.vmap`` and has a double backward (Hessian-vector
products). ``fused_attention`` swaps in ``scaled_dot_product_attention(is_causal=True)`` for
first-derivative work where no pattern is asked for; under torch.func transforms the
explicit form runs regardless. The fused kernels have no double backward and say so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .attention import sdpa_applies


@dataclass(frozen=True)
class AttentionOnlyConfig:
    """Architecture of the attention-only language model (F.1.1, Table 3).

    ``init_std`` is the std of every weight matrix at init; ``None`` is TransformerLens's
    default ``0.8/sqrt(d_model)`` (0.05 at d_model=256). ``pos_init_std`` overrides it for the
    positional embedding alone: a small model on a synthetic language forms induction heads
    only when ``W_pos`` starts large (std 1). ``None`` means ``init_std``.
    """

    n_layers: int = 2
    d_vocab: int = 5000
    n_ctx: int = 1024
    d_model: int = 256
    n_heads: int = 8
    d_head: int = 32
    eps: float = 1e-5  # layer-norm epsilon, TransformerLens's default
    init_std: float | None = None
    pos_init_std: float | None = None

    def __post_init__(self):
        for name in ("n_layers", "d_vocab", "n_ctx", "d_model", "n_heads", "d_head"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def weight_std(self) -> float:
        return self.init_std if self.init_std is not None else 0.8 / math.sqrt(self.d_model)

    @property
    def pos_std(self) -> float:
        return self.pos_init_std if self.pos_init_std is not None else self.weight_std

    def to_dict(self) -> dict:
        return asdict(self)


class LayerNorm(nn.Module):
    """TransformerLens's ``LayerNorm``: parameters ``w`` and ``b``."""

    def __init__(self, cfg: AttentionOnlyConfig):
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)


class Attention(nn.Module):
    def __init__(self, cfg: AttentionOnlyConfig):
        super().__init__()
        H, D, E = cfg.n_heads, cfg.d_model, cfg.d_head
        self.fused = False
        # TransformerLens's registration order (Q, O, then K, V), so init draws match its.
        self.W_Q = nn.Parameter(torch.empty(H, D, E))
        self.W_O = nn.Parameter(torch.empty(H, E, D))
        self.b_Q = nn.Parameter(torch.zeros(H, E))
        self.b_O = nn.Parameter(torch.zeros(D))
        self.W_K = nn.Parameter(torch.empty(H, D, E))
        self.W_V = nn.Parameter(torch.empty(H, D, E))
        self.b_K = nn.Parameter(torch.zeros(H, E))
        self.b_V = nn.Parameter(torch.zeros(H, E))

    def forward(
        self, qk_in: torch.Tensor, v_in: torch.Tensor, need_weights: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # (B, T, D) -> (B, H, T, E)
        z, pattern = self.attend(*self.qkv(qk_in, v_in), need_weights)
        return torch.einsum("bhte,hed->btd", z, self.W_O) + self.b_O, pattern

    def qkv(self, qk_in: torch.Tensor, v_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values (B, H, T, E) of every head."""
        q = torch.einsum("btd,hde->bhte", qk_in, self.W_Q) + self.b_Q[:, None]
        k = torch.einsum("btd,hde->bhte", qk_in, self.W_K) + self.b_K[:, None]
        v = torch.einsum("btd,hde->bhte", v_in, self.W_V) + self.b_V[:, None]
        return q, k, v

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, need_weights: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Causal attention of (…, T, E) queries, keys and values: (z, pattern or None)."""
        if self.fused and not need_weights and sdpa_applies(q):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True), None
        T = q.shape[-2]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        pattern = F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
        return pattern @ v, pattern

    def head_outputs(self, qk_in: torch.Tensor, v_in: torch.Tensor) -> torch.Tensor:
        """Each head's contribution to the residual stream, (B, H, T, D), without ``b_O``."""
        z, _ = self.attend(*self.qkv(qk_in, v_in), need_weights=False)
        return torch.einsum("bhte,hed->bhtd", z, self.W_O)


class AttentionOnlyBlock(nn.Module):
    def __init__(self, cfg: AttentionOnlyConfig):
        super().__init__()
        self.ln1 = LayerNorm(cfg)
        self.attn = Attention(cfg)

    def forward(
        self, resid: torch.Tensor, pos: torch.Tensor, need_weights: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.ln1(resid)
        # Shortformer: position joins the query/key input after the layer norm; values see none.
        out, pattern = self.attn(x + pos, x, need_weights)
        return resid + out, pattern


class Embed(nn.Module):
    def __init__(self, cfg: AttentionOnlyConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))


class PosEmbed(nn.Module):
    def __init__(self, cfg: AttentionOnlyConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))


class Unembed(nn.Module):
    def __init__(self, cfg: AttentionOnlyConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))


class AttentionOnlyTransformer(nn.Module):
    """Maps token ids ``(batch, pos)`` to next-token logits ``(batch, pos, d_vocab)`` (F.1.1).

    Weights are drawn from torch's global RNG at construction (seed it first, as train.py
    does for the regression model).
    """

    def __init__(self, cfg: AttentionOnlyConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or AttentionOnlyConfig()
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.blocks = nn.ModuleList(AttentionOnlyBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """TransformerLens's "gpt2" init: every ``W_*`` normal in registration order, the rest
        as constructed (biases zero, layer norms one and zero)."""
        for name, p in self.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("W_"):
                p.normal_(0.0, self.cfg.pos_std if name == "pos_embed.W_pos" else self.cfg.weight_std)

    def forward(
        self, tokens: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        T = tokens.shape[-1]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be (batch, pos), got shape {tuple(tokens.shape)}")
        if T > self.cfg.n_ctx:
            raise ValueError(f"{T} positions exceed n_ctx={self.cfg.n_ctx}")
        resid = self.embed.W_E[tokens]
        pos = self.pos_embed.W_pos[:T]
        patterns = []
        for block in self.blocks:
            resid, pattern = block(resid, pos, return_attention)
            patterns.append(pattern)
        logits = self.ln_final(resid) @ self.unembed.W_U + self.unembed.b_U
        return (logits, patterns) if return_attention else logits

    def head_rows_logits(
        self, tokens: torch.Tensor, heads: list[tuple[int, int]], weights: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Logits ``(R, batch, pos, d_vocab)`` of R copies of the model on one batch, copy r with the
        weights of head ``heads[r] = (layer, head)`` replaced by ``weights[w][r]`` for w in W_Q, W_K,
        W_V (d_model, d_head) and W_O (d_head, d_model); every other weight is the model's.

        The weight-refined LLC of every head (:mod:`devarray.slt.restrictions`) samples R such
        copies on a shared minibatch: what no copy changes — the residual stream up to a head's
        layer and the other heads' outputs there — is computed once for all of them, and each copy
        computes its own head, the layers above and the unembedding. The result equals ``self``
        with the weights swapped in (to float rounding; tested)."""
        T = tokens.shape[-1]
        pos = self.pos_embed.W_pos[:T]
        layer_of = torch.tensor([layer for layer, _ in heads])
        rows, order = None, []  # the residual streams of copies whose head lies below, in `order`
        resid = self.embed.W_E[tokens]  # the shared stream, every head at w
        for i, block in enumerate(self.blocks):
            if rows is not None:  # copies that differ below: the whole layer, batched over copies
                rows = block(rows.flatten(0, 1), pos, need_weights=False)[0].view_as(rows)
            here = torch.nonzero(layer_of == i).flatten().tolist()
            if not here:
                if int(layer_of.max()) > i:  # a copy's head lies above: the shared stream goes on
                    resid = block(resid, pos, need_weights=False)[0]
                continue
            attn = block.attn
            x = block.ln1(resid)
            qk = x + pos
            per_head = attn.head_outputs(qk, x)  # (B, H, T, D)
            total = resid + per_head.sum(1) + attn.b_O
            h = torch.tensor([heads[r][1] for r in here])
            W = {w: weights[w][here] for w in ("W_Q", "W_K", "W_V", "W_O")}
            q = torch.einsum("btd,rde->rbte", qk, W["W_Q"]) + attn.b_Q[h][:, None, None]
            k = torch.einsum("btd,rde->rbte", qk, W["W_K"]) + attn.b_K[h][:, None, None]
            v = torch.einsum("btd,rde->rbte", x, W["W_V"]) + attn.b_V[h][:, None, None]
            z, _ = attn.attend(q, k, v, need_weights=False)
            own = torch.einsum("rbte,red->rbtd", z, W["W_O"])
            new = total - per_head[:, h].movedim(1, 0) + own  # (R_here, B, T, D)
            rows = new if rows is None else torch.cat([rows, new])
            order += here
            resid = total
        logits = self.ln_final(rows) @ self.unembed.W_U + self.unembed.b_U
        return logits[torch.argsort(torch.tensor(order))]

    def attention_patterns(self, tokens: torch.Tensor) -> torch.Tensor:
        """Attention patterns ``(layer, batch, head, query, key)``, always the explicit softmax."""
        return torch.stack(self(tokens, return_attention=True)[1])

    @property
    def fused_attention(self) -> bool:
        """Use ``scaled_dot_product_attention`` where no pattern is asked for (default off).

        First derivatives only (training, gradient-only SGLD): the fused kernels have no double
        backward, so leave it off for Hessians. Under torch.func transforms (vmap, jvp) the
        explicit form runs whatever this says."""
        return all(b.attn.fused for b in self.blocks)

    @fused_attention.setter
    def fused_attention(self, on: bool) -> None:
        for b in self.blocks:
            b.attn.fused = bool(on)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def param_dims(self) -> dict[str, tuple[str, ...]]:
        """Dimension names of every parameter tensor, for labelled storage."""
        dims = {
            "embed.W_E": ("vocab", "d_model"),
            "pos_embed.W_pos": ("pos", "d_model"),
            "ln_final.w": ("d_model",),
            "ln_final.b": ("d_model",),
            "unembed.W_U": ("d_model", "vocab"),
            "unembed.b_U": ("vocab",),
        }
        for i in range(self.cfg.n_layers):
            b = f"blocks.{i}."
            dims |= {
                b + "ln1.w": ("d_model",),
                b + "ln1.b": ("d_model",),
                b + "attn.W_Q": ("head", "d_model", "d_head"),
                b + "attn.W_K": ("head", "d_model", "d_head"),
                b + "attn.W_V": ("head", "d_model", "d_head"),
                b + "attn.W_O": ("head", "d_head", "d_model"),
                b + "attn.b_Q": ("head", "d_head"),
                b + "attn.b_K": ("head", "d_head"),
                b + "attn.b_V": ("head", "d_head"),
                b + "attn.b_O": ("d_model",),
            }
        return dims

    def layer_norms(self) -> dict[str, LayerNorm]:
        """Every layer norm by its parameter prefix, in forward order."""
        return {n: m for n, m in self.named_modules() if isinstance(m, LayerNorm)}


# TransformerLens keeps two buffers per attention layer in its state dict: the causal mask
# (n_ctx x n_ctx before 3.x, empty and built per call since) and IGNORE (-inf).
_TL_BUFFERS = ("mask", "IGNORE")

# HookedTransformerConfig fields that change the computation without adding parameters, with
# the value this model hard-wires (anything that adds parameters fails the strict load).
_TL_REQUIRED = {
    "attn_only": True,
    "positional_embedding_type": "shortformer",
    "normalization_type": "LN",
    "attention_dir": "causal",
    "use_attn_scale": True,
    "scale_attn_by_inverse_layer_idx": False,
    "use_local_attn": False,
    "use_logn_attn": False,
    "clip_qkv": None,
    "final_rms": False,
    "parallel_attn_mlp": False,
    "use_normalization_before_and_after": False,
    "n_key_value_heads": None,
}
# TransformerLens's defaults where they differ from the above, for configs given as kwargs.
_TL_DEFAULTS = {"attn_only": False, "positional_embedding_type": "standard"}


def to_transformer_lens(model: AttentionOnlyTransformer) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config_kwargs, state_dict)`` for TransformerLens, without importing it.

    ``HookedTransformerConfig(**config_kwargs)`` is this architecture; the state dict holds the
    parameters only (TransformerLens's mask/IGNORE buffers depend on its version), so load it
    with ``strict=False`` or use :func:`to_hooked_transformer`.
    """
    c = model.cfg
    p = next(model.parameters())
    kwargs = {
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "n_ctx": c.n_ctx,
        "d_head": c.d_head,
        "n_heads": c.n_heads,
        "d_vocab": c.d_vocab,
        "d_vocab_out": c.d_vocab,
        "eps": c.eps,
        "attn_only": True,
        "positional_embedding_type": "shortformer",
        "normalization_type": "LN",
        "act_fn": None,
        "d_mlp": None,
        "initializer_range": c.weight_std,
        "device": str(p.device),
        "dtype": p.dtype,
    }
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    return kwargs, state


def to_hooked_transformer(model: AttentionOnlyTransformer):
    """A ``transformer_lens.HookedTransformer`` holding ``model``'s weights (imports it lazily)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kwargs, state = to_transformer_lens(model)
    with torch.random.fork_rng(devices=[]):  # its throwaway init must not move the caller's RNG
        ht = HookedTransformer(HookedTransformerConfig(**kwargs))
    # The buffers come from the fresh model so the load stays strict for every parameter.
    buffers = {n: b for n, b in ht.state_dict().items() if n.rsplit(".", 1)[-1] in _TL_BUFFERS}
    ht.load_state_dict(buffers | state, strict=True)
    return ht


def from_transformer_lens(cfg_or_model, state_dict: dict[str, torch.Tensor] | None = None) -> AttentionOnlyTransformer:
    """An :class:`AttentionOnlyTransformer` from a TransformerLens model or checkpoint.

    ``cfg_or_model`` is a ``HookedTransformer`` (its own weights unless ``state_dict`` is
    given), a ``HookedTransformerConfig``, or a dict of its kwargs. Configs this model cannot
    represent raise ``ValueError``.
    """
    if isinstance(cfg_or_model, nn.Module):
        if state_dict is None:
            state_dict = cfg_or_model.state_dict()
        cfg_or_model = cfg_or_model.cfg
    if state_dict is None:
        raise ValueError("a TransformerLens config needs a state_dict")
    get = cfg_or_model.get if isinstance(cfg_or_model, dict) else lambda k, d=None: getattr(cfg_or_model, k, d)

    for key, want in _TL_REQUIRED.items():
        have = get(key, _TL_DEFAULTS.get(key, want))
        if have != want:
            raise ValueError(f"TransformerLens config has {key}={have!r}; this model needs {want!r}")
    for key in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if (get(key, -1.0) or -1.0) > 0:
            raise ValueError(f"TransformerLens config sets {key}; this model has no soft cap")
    d_vocab_out = get("d_vocab_out", -1)
    if d_vocab_out not in (-1, None, get("d_vocab")):
        raise ValueError(f"d_vocab_out={d_vocab_out} differs from d_vocab={get('d_vocab')}")
    attn_scale = get("attn_scale", -1.0)  # negative: unset, TransformerLens then uses sqrt(d_head)
    if attn_scale is not None and attn_scale > 0 and not math.isclose(attn_scale, math.sqrt(get("d_head"))):
        raise ValueError(f"attn_scale={attn_scale} is not sqrt(d_head)")

    init = get("initializer_range", -1.0)
    cfg = AttentionOnlyConfig(
        n_layers=get("n_layers"),
        d_vocab=get("d_vocab"),
        n_ctx=get("n_ctx"),
        d_model=get("d_model"),
        n_heads=get("n_heads"),
        d_head=get("d_head"),
        eps=get("eps", 1e-5),
        init_std=init if init is not None and init > 0 else None,
    )
    params = {n: t for n, t in state_dict.items() if n.rsplit(".", 1)[-1] not in _TL_BUFFERS}
    with torch.random.fork_rng(devices=[]):  # the throwaway init must not move the caller's RNG
        model = AttentionOnlyTransformer(cfg)
    model.load_state_dict(params, strict=True)
    return model
