"""Structural observables of the regression transformer (paper §7, appendix D.2).

Embedding and positional-encoding collapse (D.2.1–D.2.2), attention collapse (D.2.3),
unembedding collapse (D.2.4) and layer-norm collapse (D.2.5).

Attention (D.2.3) is split by the kind of the query token, ``query`` ∈ {x, y}. Token positions
are 0-based, x_j at 2(j−1) and y_j at 2j−1 (F.2.2). Every attention metric averages over the
same query positions:

- x-queries x_2, …, x_K: x_1 attends only to itself, so its normalised entropy (eq. 21) is 0/0
  and its pattern says nothing about the head;
- y-queries y_1, …, y_{K−1}: the final y-token is excluded as in figures D.5–D.6, since it
  receives no training signal (F.2.2).

``layer`` and ``head`` are 0-based module indices (``blocks.0`` is the paper's block 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from devarray.observables.registry import cached, observable
from devarray.observables.regression.probes import Probe, forward

QUERIES = ("x", "y")
SMALL = 0.1  # |weight| below which a layer-norm parameter counts as collapsed (figure D.9 inset)
HEAD_CLASS_THRESHOLD = 0.6  # mean attention on a head's target token needed to name the head

# Target token of each score, as an offset back from the query, per query kind. "Previous x/y"
# is the x/y token of the previous example: for x_j that is x_{j−1} and y_{j−1}, for y_j it is
# x_{j−1} and y_{j−1}.
OFFSETS = {
    "attn_self": {"x": 0, "y": 0},
    "attn_prev": {"x": 1, "y": 1},
    "attn_prev_x": {"x": 2, "y": 3},
    "attn_prev_y": {"x": 1, "y": 2},
}
# Head classes of figure D.7 in order of precedence, each with the score that defines it. For an
# x-query the previous token *is* the previous y, so such a head is a previous-y head (as B1H4x
# in figure D.7); for a y-query the previous token is its own x.
HEAD_CLASSES = (
    ("previous-x", "attn_prev_x"),
    ("previous-y", "attn_prev_y"),
    ("previous-token", "attn_prev"),
    ("self", "attn_self"),
)

# fixed width, so every checkpoint's labels fit the array preallocated from the first one
LABEL_DTYPE = f"<U{max(len(c) for c, _ in HEAD_CLASSES)}"


def query_positions(K: int) -> dict[str, np.ndarray]:
    """0-based token positions of the x- and y-queries every attention metric averages over."""
    return {"x": np.arange(2, 2 * K - 1, 2), "y": np.arange(1, 2 * K - 2, 2)}


@dataclass(frozen=True)
class AttentionSummary:
    """Per query position t, for every block and head (arrays (L, H, 2K)), over the probe batch."""

    mean: np.ndarray  # ᾱ_{t,t'}: (L, H, 2K, 2K) attention averaged over contexts
    entropy: np.ndarray  # normalised entropy Ĥ_t (eqs. 20–21), averaged over contexts; NaN at t = 0
    variability: np.ndarray  # V_t (eq. 22)


def summarise_attention(attention: torch.Tensor) -> AttentionSummary:
    """Entropy and variability per position from patterns (L, n, H, T, T) (eqs. 20–22).

    Elementwise work stays in the patterns' dtype (float32 from the model: several times faster
    than float64 on a CPU); torch's pairwise sums keep the means accurate to float32 precision."""
    a = attention
    T = a.shape[-1]
    mean = a.mean(1)
    # eq. (20) over the t+1 visible tokens (0 log 0 = 0), normalised by log2(t+1) (eq. 21)
    entropy = -torch.special.xlogy(a, a).sum(-1).mean(1).double() / math.log(2)
    max_entropy = torch.log2(torch.arange(1, T + 1, dtype=torch.float64))
    entropy = entropy / torch.where(max_entropy > 0, max_entropy, torch.nan)
    # eq. (22): mean over contexts of half the L1 distance to the mean pattern
    distance = (a - mean[:, None]).abs().sum(-1).mean(1).double()
    mean = mean.double()
    variability = distance / (2 * mean.sum(-1))
    return AttentionSummary(mean.cpu().numpy(), entropy.cpu().numpy(), variability.cpu().numpy())


def _summary(model, probe: Probe) -> AttentionSummary:
    return cached(("attention", id(model), id(probe)), lambda: summarise_attention(forward(model, probe).attention))


def _attention_coords(model) -> dict:
    return {"layer": np.arange(model.cfg.L), "head": np.arange(model.cfg.H), "query": list(QUERIES)}


def _by_query(per_position: dict[str, np.ndarray], model) -> xr.DataArray:
    """(L, H) arrays per query kind -> DataArray (layer, head, query)."""
    data = np.stack([per_position[q] for q in QUERIES], axis=-1)
    return xr.DataArray(data, dims=("layer", "head", "query"), coords=_attention_coords(model))


def _position_mean(values: np.ndarray, K: int) -> dict[str, np.ndarray]:
    """Per-position values (L, H, 2K) averaged over each kind's query positions."""
    pos = query_positions(K)
    return {q: values[..., pos[q]].mean(-1) for q in QUERIES}


def attention_scores(s: AttentionSummary, K: int) -> dict[str, dict[str, np.ndarray]]:
    """Self, previous-token, previous-x/y, x- and y-attention scores (D.2.3): score -> query -> (L, H).

    Each is the context-averaged attention on its target, averaged over the query positions
    where the target exists (the previous x/y of y_1 does not)."""
    pos = query_positions(K)
    scores = {}
    for name, offsets in OFFSETS.items():
        scores[name] = {}
        for q in QUERIES:
            t = pos[q][pos[q] >= offsets[q]]
            scores[name][q] = s.mean[..., t, t - offsets[q]].mean(-1) if len(t) else np.full(s.mean.shape[:2], np.nan)
    for name, parity in (("attn_x", 0), ("attn_y", 1)):
        total = s.mean[..., parity::2].sum(-1)  # attention on all x- (even) or y- (odd) tokens
        scores[name] = {q: total[..., pos[q]].mean(-1) for q in QUERIES}
    return scores


def classify_heads(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Figure D.7's head classes, query -> (L, H) strings: the first class in
    :data:`HEAD_CLASSES` whose score is at least :data:`HEAD_CLASS_THRESHOLD`, else "none"."""
    out = {}
    for q in QUERIES:
        shape = scores["attn_self"][q].shape
        label = np.full(shape, "none", dtype=object)
        for cls, score in reversed(HEAD_CLASSES):  # later assignments take precedence
            label[scores[score][q] >= HEAD_CLASS_THRESHOLD] = cls
        out[q] = label.astype(LABEL_DTYPE)
    return out


_ATTN = dict(dims=("layer", "head", "query"), task="regression")


@observable(name="attn_entropy", long_name="normalised attention entropy", train_time=True, **_ATTN)
def attn_entropy(model, probe: Probe) -> xr.DataArray:
    """Normalised attention entropy Ĥ (eqs. 20–21, figure D.5): the Shannon entropy (bits) of the
    attention of a query over the tokens it sees, divided by its maximum log2(#tokens), averaged
    over probe contexts and query positions. 0 is hard attention on one token, 1 is uniform."""
    return _by_query(_position_mean(_summary(model, probe).entropy, probe.task.K), model)


@observable(name="attn_variability", long_name="attention variability", train_time=True, **_ATTN)
def attn_variability(model, probe: Probe) -> xr.DataArray:
    """Attention variability V (eq. 22, figure D.6): half the L1 distance between a query's
    attention and its mean over probe contexts, averaged over contexts and query positions; 0 is
    an input-independent pattern, 1 the most variable."""
    return _by_query(_position_mean(_summary(model, probe).variability, probe.task.K), model)


@observable(
    name="attn_scores",
    task="regression",
    variables={
        name: dict(dims=_ATTN["dims"], long_name=long_name, description=description)
        for name, long_name, description in [
            ("attn_self", "self-attention score", "Mean attention of a token on itself, α_{k,k} (D.2.3)."),
            ("attn_prev", "previous-token score", "Mean attention on the immediately preceding token (D.2.3)."),
            ("attn_prev_x", "previous-x score", "Mean attention on the x-token of the previous example."),
            ("attn_prev_y", "previous-y score", "Mean attention on the y-token of the previous example."),
            ("attn_x", "x-attention score", "Total attention on x-tokens, Σ_k' α_{k,x_k'} (D.2.3)."),
            ("attn_y", "y-attention score", "Total attention on y-tokens, Σ_k' α_{k,y_k'} (D.2.3)."),
        ]
    },
)
def attn_scores(model, probe: Probe) -> xr.Dataset:
    """Attention scores of D.2.3 per block, head and query kind, on the probe's in-distribution
    batch (not a synthetic one, as the paper notes for the previous-token score)."""
    scores = attention_scores(_summary(model, probe), probe.task.K)
    return xr.Dataset({name: _by_query(by_q, model) for name, by_q in scores.items()})


@observable(name="head_class", long_name="attention head class", **_ATTN)
def head_class(model, probe: Probe) -> xr.DataArray:
    """Head classes of figure D.7 (previous-x, previous-y, previous-token, self or none): the
    first of these whose score (see ``attn_scores``) is at least 0.6, i.e. a head that puts most
    of its attention on one relative position on average, hence concentrated and consistent."""
    scores = attention_scores(_summary(model, probe), probe.task.K)
    return _by_query(classify_heads(scores), model)


@observable(
    name="embedding_spectrum",
    task="regression",
    variables={
        "token_embedding_sv": dict(
            dims=("sv_token",),
            long_name="token embedding singular values",
            description="Singular values of the token embedding W_E, descending (D.2.1, figure D.4 left).",
        ),
        "position_embedding_sv": dict(
            dims=("sv_position",),
            long_name="positional embedding singular values",
            description="Singular values of the positional embedding, descending (D.2.2, figure D.4 middle).",
        ),
    },
)
def embedding_spectrum(model, probe) -> xr.Dataset:
    """Singular values of the token and positional embeddings (D.2.1–D.2.2): their collapse."""
    sv_t = torch.linalg.svdvals(model.token_embedding.weight.double()).cpu().numpy()
    sv_p = torch.linalg.svdvals(model.position_embedding.weight.double()).cpu().numpy()
    return xr.Dataset(
        {
            "token_embedding_sv": ("sv_token", sv_t),
            "position_embedding_sv": ("sv_position", sv_p),
        },
        coords={"sv_token": np.arange(len(sv_t)), "sv_position": np.arange(len(sv_p))},
    )


@observable(
    name="embedding_alignment",
    task="regression",
    variables={
        "token_unembed_cos": dict(
            dims=("token_dim",),
            long_name="token embedding alignment with unembedding",
            description="Cosine similarity between the embedding of token component i (token_dim 0 is y, "
            "1..D are x) and its projection onto the span of the unembedding rows (figure D.4 right).",
        ),
        "position_unembed_cos": dict(
            dims=("position",),
            long_name="positional embedding alignment with unembedding",
            description="Cosine similarity between each position's embedding and its projection onto the "
            "span of the unembedding rows (D.2.2).",
        ),
    },
)
def embedding_alignment(model, probe) -> xr.Dataset:
    """How much of what the embeddings write lies in the subspace the unembedding reads
    (figure D.4 right). The cosine between a vector e and its orthogonal projection Pe is ‖Pe‖/‖e‖."""
    w_u = model.unembedding.weight.double()  # (D+1, d): rows span what the unembedding reads
    u, s, _ = torch.linalg.svd(w_u.T, full_matrices=False)
    basis = u[:, s > s.max() * max(w_u.shape) * torch.finfo(w_u.dtype).eps]  # orthonormal, (d, rank)

    def cos(rows: torch.Tensor) -> np.ndarray:
        return ((rows @ basis).norm(dim=-1) / rows.norm(dim=-1)).cpu().numpy()

    tok = cos(model.token_embedding.weight.double().T)  # (D+1, d): one row per token component
    pos = cos(model.position_embedding.weight.double())
    return xr.Dataset(
        {"token_unembed_cos": ("token_dim", tok), "position_unembed_cos": ("position", pos)},
        coords={"token_dim": np.arange(len(tok)), "position": np.arange(len(pos))},
    )


@observable(
    name="unembedding_effective",
    task="regression",
    variables={
        "unembed_eff_weight": dict(
            dims=("d_embed",), long_name="effective unembedding weight", description="W̃_U = (W_U)[0,:] ⊙ γ (D.2.4)."
        ),
        "unembed_eff_bias": dict(
            dims=(), long_name="effective unembedding bias", description="b̃_U = (W_U)[0,:]·β + (b_U)[0] (D.2.4)."
        ),
    },
)
def unembedding_effective(model, probe) -> xr.Dataset:
    """Effective unembedding weights and bias (D.2.4, figure D.8): the final layer norm's γ, β
    folded into the row of the unembedding that reads ŷ, so ŷ = W̃_U·normalise(z) + b̃_U."""
    w0 = model.unembedding.weight[0].double()
    gamma, beta = model.ln_out.weight.double(), model.ln_out.bias.double()
    return xr.Dataset(
        {
            "unembed_eff_weight": ("d_embed", (w0 * gamma).cpu().numpy()),
            "unembed_eff_bias": (w0 @ beta + model.unembedding.bias[0].double()).item(),
        },
        coords={"d_embed": np.arange(len(w0))},
    )


@observable(
    name="layernorm_collapse",
    task="regression",
    train_time=True,
    variables={
        "ln_weight": dict(dims=("layernorm", "d_embed"), long_name="layer norm weight γ"),
        "ln_bias": dict(dims=("layernorm", "d_embed"), long_name="layer norm bias β"),
        "ln_weight_small": dict(
            dims=("layernorm",),
            long_name="fraction of |γ| < 0.1",
            description="Fraction of layer-norm weights with |γ| < 0.1 (figure D.9 inset, figure 5c).",
        ),
        "ln_bias_small": dict(
            dims=("layernorm",),
            long_name="fraction of |β| < 0.1",
            description="Fraction of layer-norm biases with |β| < 0.1 (figure D.9 inset).",
        ),
    },
)
def layernorm_collapse(model, probe) -> xr.Dataset:
    """Weights and biases of every layer norm, in forward order, and the fraction of each below
    0.1 in magnitude (D.2.5, figures 5c, D.8, D.9): layer-norm collapse."""
    norms = model.layer_norms()
    gamma = torch.stack([m.weight for m in norms.values()]).double().cpu().numpy()
    beta = torch.stack([m.bias for m in norms.values()]).double().cpu().numpy()
    dims = ("layernorm", "d_embed")
    return xr.Dataset(
        {
            "ln_weight": (dims, gamma),
            "ln_bias": (dims, beta),
            "ln_weight_small": ("layernorm", (np.abs(gamma) < SMALL).mean(-1)),
            "ln_bias_small": ("layernorm", (np.abs(beta) < SMALL).mean(-1)),
        },
        coords={"layernorm": list(norms), "d_embed": np.arange(gamma.shape[1])},
    )
