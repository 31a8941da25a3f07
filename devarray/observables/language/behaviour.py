"""Behavioural observables of the attention-only language model (paper §6, appendix C.1, C.2.1).

Measured on the run's probe (:class:`devarray.settings.language.LanguageProbe`, whose ``data`` is a
:class:`~devarray.observables.language.probes.LanguageProbeData`). Positions are 0-based context
indices with BOS at 0; "the loss at position k" is the cross entropy of predicting token k from
tokens 0..k−1, as in the ``eval`` group's ``test_loss_k``. Losses are in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch.nn import functional as F

from devarray.observables.language.probes import N_GRAMS, LanguageProbeData
from devarray.observables.registry import cached, observable

PAPER_POSITIONS = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000)  # C.2.1
ABLATIONS = ("none", "pos_embed")
# C.1.3: the loss at the 500th minus the 50th token of a 1,024-token context, scaled to the context
ICL_LATE, ICL_EARLY, ICL_PAPER_CTX = 500, 50, 1024
ICL_WINDOW = 0.1  # average ±10 % around each position: 256 probe contexts, not the paper's 100k rows
LOGIT_BUDGET = 2**24  # logits per model call (64 MiB of float32): bounds memory at the paper's size


def _data(probe) -> LanguageProbeData:
    if getattr(probe, "data", None) is None:
        raise ValueError(
            "the language observables need a probe built by the lm setting "
            "(setting.probe(config, seed)), which carries their fixed inputs"
        )
    return probe.data


@dataclass(frozen=True)
class Pass:
    """One pass over the probe contexts: mean loss per position k = 1..T−1 (float64; the ablated pass
    stops at the last of :data:`PAPER_POSITIONS` inside the context) and, unless ablated, the
    log-probabilities at the bigram pairs (P, V) float32."""

    loss_k: torch.Tensor
    pair_logp: torch.Tensor | None


def _chunk(model, T: int) -> int:
    return max(1, LOGIT_BUDGET // (T * model.cfg.d_vocab))


def _run(model, probe, ablate: bool) -> Pass:
    data = _data(probe) if not ablate else None
    tokens = probe.tokens
    if ablate:  # only loss_by_position reads the ablated pass: stop after its last position (causal)
        tokens = tokens[:, : max(k for k in PAPER_POSITIONS if k < tokens.shape[1]) + 1]
    n, T = tokens.shape
    loss = torch.zeros(T - 1, dtype=torch.float64)
    logp = None
    if data is not None:
        logp = torch.empty(len(data.pair_row), model.cfg.d_vocab)
    size = _chunk(model, T)
    for start in range(0, n, size):
        chunk = tokens[start : start + size]
        logits = model(chunk[:, :-1])
        loss += F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none").double().sum(0)
        if data is not None:
            sel = ((data.pair_context >= start) & (data.pair_context < start + len(chunk))).nonzero()[:, 0]
            logp[sel] = F.log_softmax(logits[data.pair_context[sel] - start, data.pair_position[sel]].float(), -1)
    return Pass(loss / n, logp)


def forward(model, probe, ablate: bool = False) -> Pass:
    """The model on the probe contexts, once per :func:`~devarray.observables.registry.compute` call;
    ``ablate`` zeroes the positional embedding W_pos for the pass (C.2.1)."""

    def run() -> Pass:
        if not ablate:
            return _run(model, probe, False)
        w = model.pos_embed.W_pos
        saved = w.detach().clone()
        try:
            with torch.no_grad():
                w.zero_()
            return _run(model, probe, True)
        finally:
            with torch.no_grad():
                w.copy_(saved)

    return cached(("lm-forward", id(model), id(probe), ablate), run)


def _table_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return table.index_select(0, idx).to_dense() if table.is_sparse else table[idx]


def bigram_cross_entropy(pair_logp: torch.Tensor, data: LanguageProbeData, chunk: int = 512) -> torch.Tensor:
    """B_k^S of eq. (15) at every pair: −Σ_i q̃(t^(i) | t_k) log p(t^(i) | t_{≤k}), (P,) float64."""
    out = torch.empty(len(data.pair_row), dtype=torch.float64)
    for s in range(0, len(out), chunk):
        q = _table_rows(data.bigram_table, data.pair_row[s : s + chunk]).double()
        out[s : s + chunk] = -torch.where(q > 0, q * pair_logp[s : s + chunk].double(), 0.0).sum(1)
    return out


@observable(
    name="bigram_score",
    task="language",
    variables={
        "bigram_score": dict(
            units="nats",
            long_name="bigram score",
            description="Average bigram score B̄ (C.1.1, eqs. 15–16): the cross entropy between the empirical bigram "
            "distribution q̃(· | t_k) and the model's next-token distribution at position k, averaged over "
            "5,000 fixed random (probe context, position) pairs (all pairs when the probe has fewer; "
            "attrs probe_n_bigram_pairs). q̃ is the synthetic language's exact bigram matrix, or counts "
            "over the first 2,000 training contexts of a corpus.",
        ),
        "bigram_entropy": dict(
            units="nats",
            long_name="bigram entropy",
            description="The floor of the bigram score (C.1.1): the entropy of q̃(· | t_k) averaged over the same "
            "pairs; the bigram score equals it exactly when the model predicts q̃.",
        ),
    },
)
def bigram_score(model, probe) -> xr.Dataset:
    """Bigram score and its floor (C.1.1, figure 4a)."""
    data = _data(probe)
    b = bigram_cross_entropy(forward(model, probe).pair_logp, data)
    return xr.Dataset(
        {"bigram_score": b.mean().item(), "bigram_entropy": data.bigram_row_entropy[data.pair_row].mean().item()}
    )


def _final_token_loss(model, contexts: torch.Tensor) -> float:
    """Mean cross entropy of each context's last token given the ones before."""
    logits = model(contexts[:, :-1])[:, -1]
    return F.cross_entropy(logits.float(), contexts[:, -1]).item()


@observable(name="ngram_score", task="language", dims=("n",), units="1", long_name="n-gram score")
def ngram_score(model, probe) -> xr.DataArray:
    """n-gram score ℓ_test^n / ℓ_gram^n (C.1.2, figure 4c) for n = 2, 3, 4: ℓ_gram^n is the model's mean loss
    on the last token of each common n-gram, given BOS and its first n−1 tokens; ℓ_test^n the mean loss at
    position n of the probe contexts truncated to BOS + n tokens (the same kind of prediction, on ordinary
    text). Above 1: the model predicts the common n-grams better than text in general. Common n-grams: the
    synthetic language's lexicon words of length n, or a corpus's most frequent n-grams (attr
    probe_ngram_source); NaN where there are none."""
    data = _data(probe)
    scores = []
    for n in N_GRAMS:
        grams = data.ngrams[n]
        if not len(grams) or n + 1 > probe.tokens.shape[1]:
            scores.append(np.nan)
            continue
        bos = torch.full((len(grams), 1), int(probe.tokens[0, 0]))
        gram = _final_token_loss(model, torch.cat([bos, grams], 1))
        test = _final_token_loss(model, probe.tokens[:, : n + 1])
        scores.append(test / gram)
    return xr.DataArray(np.array(scores), dims=("n",), coords={"n": list(N_GRAMS)})


def icl_positions(T: int) -> tuple[np.ndarray, np.ndarray]:
    """(late, early) positions averaged by the ICL score in a context of T tokens: the paper's 500th and
    50th of 1,024 scaled by T/1,024, each widened to ±10 % (at least the position itself)."""

    def window(paper: int) -> np.ndarray:
        k = paper * T / ICL_PAPER_CTX
        lo, hi = max(1, round(k * (1 - ICL_WINDOW))), min(T - 1, max(1, round(k * (1 + ICL_WINDOW))))
        return np.arange(lo, max(lo, hi) + 1)

    return window(ICL_LATE), window(ICL_EARLY)


@observable(name="icl_score", task="language", units="nats", long_name="in-context learning score")
def icl_score(model, probe) -> xr.DataArray:
    """In-context learning score (C.1.3, figure 4f): the probe loss at a late position minus the loss at an
    early one, Olsson et al.'s 500th minus 50th token of 1,024 scaled to the context (positions
    round(k·T/1024), each averaged over ±10 % of itself: 56–68 and 5–7 at T = 128). Negative: later tokens
    are predicted better, i.e. the model learns in context."""
    loss = forward(model, probe).loss_k  # index k−1 holds position k
    late, early = icl_positions(probe.tokens.shape[1])
    return xr.DataArray(loss[late - 1].mean().item() - loss[early - 1].mean().item())


@observable(
    name="loss_by_position", task="language", dims=("position", "ablation"), units="nats", long_name="loss by position"
)
def loss_by_position(model, probe) -> xr.DataArray:
    """Probe loss at positions 1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000 (those inside the
    context), with the positional embedding kept (ablation "none") and zero-ablated ("pos_embed") (C.2.1,
    figures 4b and C.2): where the two part, the model uses position."""
    T = probe.tokens.shape[1]
    positions = np.array([k for k in PAPER_POSITIONS if k <= T - 1])
    cols = [forward(model, probe, ablate=a != "none").loss_k[positions - 1].numpy() for a in ABLATIONS]
    return xr.DataArray(
        np.stack(cols, 1), dims=("position", "ablation"), coords={"position": positions, "ablation": list(ABLATIONS)}
    )
