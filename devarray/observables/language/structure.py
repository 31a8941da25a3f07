"""Structural observables of the attention-only language model (appendix C.2, figures 4d–e, C.3, C.4).

``layer`` and ``head`` are 0-based (``blocks.0`` is the paper's layer 1; figure C.4's head 1:2 is
layer 0, head 1 here). The positional embedding's rows are over ``pos`` (0..n_ctx−1), the params
group's name for them (``loss_by_position`` owns ``position``, with the paper's positions only).
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from devarray.observables.language.behaviour import _data
from devarray.observables.registry import cached, observable

COMPOSITIONS = ("Q", "K", "V")
PREV_TOKEN_THRESHOLD = 0.4  # previous-token matching score of a previous-token head
INDUCTION_THRESHOLD = 0.4  # prefix-matching score of an induction head (takes precedence)
HEAD_ROLES = ("previous-token", "induction", "other")
ROLE_DTYPE = f"<U{max(map(len, HEAD_ROLES))}"  # fixed width: every checkpoint fits the first one's array
N_PCS = 3  # figure C.3's first three principal components
PATTERN_CHUNK = 256  # synthetic sequences per block call


# -- composition (C.2.2) ---------------------------------------------------------------------------


def composition_scores(model) -> torch.Tensor:
    """Q-, K- and V-composition (eq. 17) of every layer-0 head h1 with every layer-1 head h2, (3, H, H).

    In TransformerLens's row-vector convention (x ↦ x W): W_OV^h = W_V^h W_O^h and W_QK^h = W_Q^h W_K^hᵀ
    (d_model × d_model), and the score is ‖W_OV^{h1} M‖_F / (‖W_OV^{h1}‖_F ‖M‖_F) with M = W_QK^{h2} (Q),
    W_QK^{h2}ᵀ (K), W_OV^{h2} (V): eq. (17) transposed, equal to ``HookedTransformer.all_composition_scores``.
    Layer norms and biases are left out, as there."""
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    W = {
        k: getattr(a, f"W_{k[0]}").detach().double()
        for k, a in (("V0", a0), ("O0", a0), ("Q1", a1), ("K1", a1), ("V1", a1), ("O1", a1))
    }
    ov1 = W["V0"] @ W["O0"]  # (H, D, D)
    qk2 = W["Q1"] @ W["K1"].transpose(1, 2)
    ov2 = W["V1"] @ W["O1"]
    out = []
    for right in (qk2, qk2.transpose(1, 2), ov2):
        prod = torch.einsum("ide,jef->ijdf", ov1, right)
        out.append(
            prod.square().sum((-2, -1)).sqrt()
            / (ov1.square().sum((1, 2)).sqrt()[:, None] * right.square().sum((1, 2)).sqrt()[None, :])
        )
    return torch.stack(out)


@observable(
    name="composition_score",
    task="language",
    dims=("composition", "head_1", "head_2"),
    units="1",
    long_name="composition score",
)
def composition_score(model, probe) -> xr.DataArray:
    """Q-, K- and V-composition scores (C.2.2, eq. 17, figure C.4) between every first-layer head (head_1)
    and every second-layer head (head_2), from the weights alone: how much h2's query, key or value reads
    the subspace h1 writes. 0 orthogonal; 1 only for aligned rank-1 maps (aligned rank-r maps score 1/√r),
    so compare heads with each other and over training. A one-layer model has no pairs: all NaN, shape (3, H, H)."""
    H = model.cfg.n_heads
    scores = composition_scores(model).numpy() if model.cfg.n_layers >= 2 else np.full((3, H, H), np.nan)
    return xr.DataArray(
        scores,
        dims=("composition", "head_1", "head_2"),
        coords={"composition": list(COMPOSITIONS), "head_1": np.arange(H), "head_2": np.arange(H)},
    )


# -- attention on synthetic sequences (C.2.3, C.2.4) --------------------------------------------------


def attention_at(model, tokens: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Attention weight from position ``query`` to position ``key`` of each sequence, (layer, N, head).

    Only the query's row of each pattern is formed (its scores against every key, the causal softmax
    over keys ≤ query); the residual stream moves on through the blocks' own forward (fused attention
    where the model allows), and the last block's output is never needed. Causal attention makes
    positions after the query irrelevant, so sequences go in order of their query position and each
    chunk is cut just past its last query."""
    order = torch.argsort(query, stable=True)
    out = torch.empty(len(model.blocks), len(tokens), model.cfg.n_heads)
    for s in range(0, len(tokens), PATTERN_CHUNK):
        idx = order[s : s + PATTERN_CHUNK]
        q, k = query[idx], key[idx]
        chunk = tokens[idx, : int(q.max()) + 1]
        r = torch.arange(len(idx))
        T = chunk.shape[1]
        resid = model.embed.W_E[chunk]
        pos = model.pos_embed.W_pos[:T]
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            qk_in = block.ln1(resid) + pos  # Shortformer: position enters queries and keys (F.1.1)
            q_row = torch.einsum("nd,hde->nhe", qk_in[r, q], attn.W_Q) + attn.b_Q
            keys = torch.einsum("ntd,hde->nhte", qk_in, attn.W_K) + attn.b_K[:, None]
            scores = torch.einsum("nhe,nhte->nht", q_row, keys) / q_row.shape[-1] ** 0.5
            scores = scores.masked_fill(torch.arange(T)[None, None, :] > q[:, None, None], float("-inf"))
            out[layer, idx] = torch.softmax(scores, -1)[r, :, k]  # advanced indices first: (n, H)
            if layer + 1 < len(model.blocks):
                resid, _ = block(resid, pos, False)
    return out


def prev_token_scores(model, probe) -> np.ndarray:
    """(L, H): mean attention from the last token of each C.2.3 sequence to the token before it."""

    def run() -> np.ndarray:
        d = _data(probe)
        last = d.prev_lengths - 1
        return attention_at(model, d.prev_tokens, last, last - 1).double().mean(1).numpy()

    return cached(("prev-token", id(model), id(probe)), run)


def prefix_matching_scores(model, probe) -> np.ndarray:
    """(L, H): mean attention from the second [A] of each C.2.4 sequence to the [B] after the first."""

    def run() -> np.ndarray:
        d = _data(probe)
        return attention_at(model, d.prefix_tokens, d.prefix_second, d.prefix_first + 1).double().mean(1).numpy()

    return cached(("prefix", id(model), id(probe)), run)


def _per_head(values, model) -> xr.DataArray:
    return xr.DataArray(
        values,
        dims=("layer", "head"),
        coords={"layer": np.arange(model.cfg.n_layers), "head": np.arange(model.cfg.n_heads)},
    )


@observable(
    name="prev_token_score",
    task="language",
    dims=("layer", "head"),
    units="1",
    long_name="previous-token matching score",
)
def prev_token_score(model, probe) -> xr.DataArray:
    """Previous-token matching score (C.2.3, figure 4d): a head's attention from the last token [B] of
    ...[A][B] to [A], averaged over fixed synthetic sequences (BOS, then uniform non-BOS tokens; lengths
    16–64 capped at the context; 500 of them by default, the paper's 10,000 on request: attrs
    probe_n_prev_token). 1 is a pure previous-token head."""
    return _per_head(prev_token_scores(model, probe), model)


@observable(
    name="prefix_matching_score", task="language", dims=("layer", "head"), units="1", long_name="prefix-matching score"
)
def prefix_matching_score(model, probe) -> xr.DataArray:
    """Prefix-matching score (C.2.4, figure 4e; Olsson et al. 2022): in fixed sequences [A][B]…[A] of
    length 128 (capped at the context; BOS first, the first [A] in the first half with [B] right after it,
    the second [A] in the second half, the rest uniform over the other tokens), a head's attention from the
    second [A] to [B], the token that followed the earlier [A], averaged over the sequences (500 by
    default: attrs probe_n_prefix). The paper's text says "to the first instance of [A]"; its figure 4e
    rises for the induction heads, which attend to [B], so we follow Olsson et al.'s definition."""
    return _per_head(prefix_matching_scores(model, probe), model)


@observable(name="head_role", task="language", dims=("layer", "head"), units="1", long_name="attention head role")
def head_role(model, probe) -> xr.DataArray:
    """Each head's role: "induction" where its prefix-matching score is at least 0.4, else "previous-token"
    where its previous-token matching score is at least 0.4, else "other" (the paper names the heads of
    figure 4d–e by these scores; the thresholds are ours: a head counted as either puts most of its
    attention on one token, against the 1/16–1/64 of uniform attention on these sequences)."""
    role = np.full((model.cfg.n_layers, model.cfg.n_heads), "other", dtype=object)
    role[prev_token_scores(model, probe) >= PREV_TOKEN_THRESHOLD] = "previous-token"
    role[prefix_matching_scores(model, probe) >= INDUCTION_THRESHOLD] = "induction"
    return _per_head(role.astype(ROLE_DTYPE), model)


# -- positional embedding (C.2.1, figure C.3) ----------------------------------------------------------


def pos_embed_pca(W_pos: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(explained variance ratios (min(n_ctx, d_model),), scores on the first three PCs (3, n_ctx)) of the
    rows of W_pos, centred over positions. Each PC's sign is chosen so its score grows with position on
    average (covariance with the position index ≥ 0), so curves do not flip between checkpoints."""
    X = W_pos.double() - W_pos.double().mean(0)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    var = S.square()
    ratio = (var / var.sum()).numpy() if var.sum() > 0 else np.full(len(var), np.nan)
    scores = (U * S).T[:N_PCS].numpy()
    t = np.arange(X.shape[0]) - (X.shape[0] - 1) / 2
    scores = scores * np.where(scores @ t < 0, -1.0, 1.0)[:, None]
    if len(scores) < N_PCS:
        scores = np.concatenate([scores, np.full((N_PCS - len(scores), X.shape[0]), np.nan)])
    return ratio, scores


@observable(
    name="pos_embed",
    task="language",
    variables={
        "pos_embed_explained_variance": dict(
            dims=("component",),
            long_name="positional embedding explained variance ratio",
            description="Fraction of the variance of the positional embedding's rows (centred over positions) "
            "along each principal component, descending (C.2.1, figure C.3 row 4); component is "
            "1-based.",
        ),
        "pos_embed_pc": dict(
            dims=("pc", "pos"),
            long_name="positional embedding principal component",
            description="Projection of each position's embedding on the first three principal components "
            "(pc = 1, 2, 3; C.2.1, figure C.3 rows 1–3), signed so each grows with position on "
            "average; the Lissajous curves of the paper.",
        ),
        "pos_embed_norm": dict(
            dims=("pos",),
            long_name="positional embedding norm",
            description="Euclidean norm of each position's embedding W_pos[pos] (C.2.1, figure C.3 row 5).",
        ),
    },
)
def pos_embed(model, probe) -> xr.Dataset:
    """Principal components and norms of the positional embedding (C.2.1, figure C.3)."""
    W = model.pos_embed.W_pos.detach().cpu()
    ratio, scores = pos_embed_pca(W)
    pos = np.arange(W.shape[0])
    return xr.Dataset(
        {
            "pos_embed_explained_variance": ("component", ratio),
            "pos_embed_pc": (("pc", "pos"), scores),
            "pos_embed_norm": ("pos", W.double().norm(dim=1).numpy()),
        },
        coords={"component": np.arange(1, len(ratio) + 1), "pc": np.arange(1, N_PCS + 1), "pos": pos},
    )
