"""Fixed inputs of the language-model observables (appendix C), built once per run and probe seed.

:func:`probe_data` turns a run's token source and its fixed probe contexts into a
:class:`LanguageProbeData`, which :class:`devarray.settings.language.LanguageProbe` carries:

- **bigram pairs** (C.1.1, eqs. 15–16): :data:`N_BIGRAM_PAIRS` = 5,000 fixed random
  (context, position k) pairs of the probe contexts (all of them when the probe holds fewer), each
  with the row q̃(· | t_k) of the bigram distribution. For the synthetic language that is its exact
  :meth:`~devarray.tasks.synthetic_language.SyntheticLanguage.bigram_matrix`; for a corpus, counts of
  adjacent pairs over the first :data:`N_BIGRAM_COUNT_CONTEXTS` training contexts, kept sparse.
- **common n-grams** (C.1.2), n = 2, 3, 4, at most 1,000 each: the synthetic language's lexicon words
  of length n (:meth:`~devarray.tasks.synthetic_language.SyntheticLanguage.words`, most frequent first).
  For a BPE corpus the paper's construction needs a larger reference vocabulary (GPT-2's), re-tokenised
  by the run's tokenizer in the reference's merge order (:func:`merge_order_ngrams`); offline there
  is none, so the default is the n-grams most frequent in the counted training contexts, the
  statistic BPE's merge order ranks by.
- **previous-token sequences** (C.2.3): BOS then uniform non-BOS tokens, lengths uniform in 16..64
  (capped at n_ctx), right-padded; causal attention makes the padding invisible to the last real token.
- **prefix-matching sequences** (C.2.4): length 128 (capped at n_ctx); BOS, an [A] in the first half
  followed by [B], a second [A] in the second half, the rest uniform over the tokens other than A, B, BOS.

Both synthetic sets default to :data:`N_SYNTHETIC` = 500 sequences (the paper: 10,000; pass
``n_synthetic``): the standard error of a mean attention weight (each in [0, 1]) over 500 sequences is
at most 0.022, far below the 0.4 that names a head (``head_role``), and the paper's count made these
two scores most of a quick run's observable time on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from devarray.seeding import generator
from devarray.tasks.synthetic_language import SyntheticLanguage

N_BIGRAM_PAIRS = 5000  # C.1.1's n
N_BIGRAM_COUNT_CONTEXTS = 2000  # training contexts counted for a corpus's bigram table
N_GRAMS = (2, 3, 4)
N_COMMON = 1000  # C.1.2: the first 1,000 n-grams
N_SYNTHETIC = 500  # C.2.3/C.2.4 use 10,000; see the module docstring
PREV_LENGTHS = (16, 64)  # C.2.3
PREFIX_LENGTH = 128  # C.2.4


@dataclass(frozen=True, eq=False)
class LanguageProbeData:
    """What the language observables need besides the probe contexts; see the module docstring.

    ``bigram_table`` is (U, V) float32, dense (synthetic) or sparse COO (corpus): the rows q̃(· | u)
    of the U distinct current tokens of the pairs; ``pair_row`` indexes it per pair and
    ``bigram_row_entropy`` (U,) float64 is each row's entropy in nats."""

    n_ctx: int
    pair_context: torch.Tensor  # (P,) index into the probe contexts
    pair_position: torch.Tensor  # (P,) k: the model predicts t_{k+1} at position k
    pair_row: torch.Tensor  # (P,)
    bigram_table: torch.Tensor
    bigram_row_entropy: torch.Tensor
    ngrams: dict[int, torch.Tensor]  # n -> (m, n) common n-grams, m ≤ 1,000 (m = 0: none)
    ngram_source: str
    prev_tokens: torch.Tensor  # (N, ≤64) BOS + uniform tokens, right-padded with BOS
    prev_lengths: torch.Tensor  # (N,)
    prefix_tokens: torch.Tensor  # (N, ≤128)
    prefix_first: torch.Tensor  # (N,) position of the first [A]; [B] is at +1
    prefix_second: torch.Tensor  # (N,) position of the second [A]
    extra: dict = field(default_factory=dict)

    def attrs(self) -> dict:
        return {
            "probe_n_bigram_pairs": int(len(self.pair_row)),
            "probe_n_prev_token": int(len(self.prev_lengths)),
            "probe_n_prefix": int(len(self.prefix_first)),
            "probe_ngram_source": self.ngram_source,
        }


def _entropy_rows(table: torch.Tensor) -> torch.Tensor:
    dense = table.to_dense() if table.is_sparse else table
    return -torch.special.xlogy(dense.double(), dense.double()).sum(1)


def bigram_pairs(n_contexts: int, n_ctx: int, seed: int, n: int = N_BIGRAM_PAIRS) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` distinct fixed random (context, k) pairs, k in 0..n_ctx−2 (eq. 16), or all if fewer exist."""
    total = n_contexts * (n_ctx - 1)
    g = generator("observables", seed, "bigram-pairs")
    flat = torch.randperm(total, generator=g)[: min(n, total)].sort().values
    return flat // (n_ctx - 1), flat % (n_ctx - 1)


def count_bigrams(contexts: np.ndarray, vocab_size: int) -> torch.Tensor:
    """q̃(t' | t) counted over adjacent pairs of ``contexts`` (N, T), as a sparse COO (V, V) float32
    whose rows sum to 1 (rows of unseen tokens are empty)."""
    c = np.asarray(contexts, dtype=np.int64)
    keys, counts = np.unique(c[:, :-1] * vocab_size + c[:, 1:], return_counts=True)
    a, b = keys // vocab_size, keys % vocab_size
    totals = np.bincount(a, weights=counts, minlength=vocab_size)
    values = torch.from_numpy(counts / totals[a]).float()
    return torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([a, b])), values, (vocab_size, vocab_size), check_invariants=True
    ).coalesce()


def frequent_ngrams(contexts: np.ndarray, n: int, limit: int = N_COMMON, exclude: tuple[int, ...] = ()) -> torch.Tensor:
    """The ``limit`` most frequent n-grams of ``contexts`` (ties: first seen), without ``exclude`` tokens."""
    c = np.asarray(contexts, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(c, n, axis=1).reshape(-1, n)
    if exclude:
        windows = windows[~np.isin(windows, exclude).any(1)]
    if not len(windows):
        return torch.zeros(0, n, dtype=torch.long)
    uniq, first, counts = np.unique(windows, axis=0, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))[:limit]
    return torch.from_numpy(uniq[order].copy())


def merge_order_ngrams(tokenizer, reference, n: int, limit: int = N_COMMON) -> torch.Tensor:
    """C.1.2's common n-grams: the reference tokenizer's tokens (GPT-2's in the paper) in its merge
    order, each encoded by the run's ``tokenizer``; the first ``limit`` that give exactly n tokens."""
    from devarray.tasks.corpus import merges

    out: list[list[int]] = []
    for a, b in merges(reference):
        ids = tokenizer.encode(
            reference.decoder.decode([a + b]) if reference.decoder else a + b, add_special_tokens=False
        ).ids
        if len(ids) == n:
            out.append(ids)
            if len(out) == limit:
                break
    return torch.tensor(out, dtype=torch.long).reshape(-1, n)


def prev_token_sequences(vocab_size: int, bos: int, n_ctx: int, seed: int, n: int = N_SYNTHETIC):
    """C.2.3's sequences: (tokens (n, max length) right-padded with BOS, lengths (n,))."""
    lo, hi = min(PREV_LENGTHS[0], n_ctx), min(PREV_LENGTHS[1], n_ctx)
    g = generator("observables", seed, "prev-token")
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    tokens = _non_bos(torch.randint(0, vocab_size - 1, (n, hi), generator=g), bos)
    tokens[:, 0] = bos
    tokens[torch.arange(hi)[None, :] >= lengths[:, None]] = bos
    return tokens, lengths


def prefix_sequences(vocab_size: int, bos: int, n_ctx: int, seed: int, n: int = N_SYNTHETIC):
    """C.2.4's sequences: (tokens (n, L), first [A] positions, second [A] positions), L = min(128, n_ctx).

    The first [A] is at 1..L/2−2 with [B] right after it, inside the first half; the second at
    L/2+1..L−1, so it never sits right after [B] (a previous-token head then scores exactly 0)."""
    L = min(PREFIX_LENGTH, n_ctx)
    if L < 6 or vocab_size < 4:
        raise ValueError(f"prefix matching needs a context of at least 6 and 4 tokens, got {L} and {vocab_size}")
    half = L // 2
    g = generator("observables", seed, "prefix-matching")
    first = torch.randint(1, half - 1, (n,), generator=g)
    second = torch.randint(half + 1, L, (n,), generator=g)
    # A and B: two distinct non-BOS tokens; the rest uniform over the tokens other than A, B, BOS
    a = _non_bos(torch.randint(0, vocab_size - 1, (n,), generator=g), bos)
    b = _skip(torch.randint(0, vocab_size - 2, (n, 1), generator=g), torch.stack([torch.full((n,), bos), a], 1))[:, 0]
    rest = torch.randint(0, vocab_size - 3, (n, L), generator=g)
    tokens = _skip(rest, torch.stack([torch.full((n,), bos), a, b], 1))
    rows = torch.arange(n)
    tokens[:, 0] = bos
    tokens[rows, first] = a
    tokens[rows, first + 1] = b
    tokens[rows, second] = a
    return tokens, first, second


def _non_bos(ids: torch.Tensor, bos: int) -> torch.Tensor:
    """Ids 0..V−2 mapped onto the V−1 tokens other than ``bos``."""
    return ids + (ids >= bos).long()


def _skip(ids: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """Ids 0..V−1−k mapped, per row, onto the V−k tokens not in that row's ``excluded`` (n, k)."""
    out = ids.clone()
    for e in excluded.sort(1).values.T:  # ascending, so each shift sees the ids already shifted
        out = out + (out >= e[:, None]).long()
    return out


_BUILT: dict[tuple, tuple] = {}


def probe_data(source, contexts: torch.Tensor, seed: int, n_synthetic: int = N_SYNTHETIC) -> LanguageProbeData:
    """The language observables' inputs for a run's token source and its probe ``contexts``.

    Memoised per (source, seed, probe size) for the process: the observe pipeline asks for the probe
    once per checkpoint task, and the bigram table and synthetic sets are the same every time."""
    key = (id(source), seed, tuple(contexts.shape), n_synthetic)
    if key not in _BUILT:
        if len(_BUILT) >= 4:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = (source, _probe_data(source, contexts, seed, n_synthetic))  # holding the source pins its id
    return _BUILT[key][1]


def _probe_data(source, contexts: torch.Tensor, seed: int, n_synthetic: int) -> LanguageProbeData:
    n_ctx, V, bos = source.n_ctx, source.vocab_size, source.bos_id
    ctx, pos = bigram_pairs(len(contexts), contexts.shape[1], seed)
    current = contexts[ctx, pos]
    rows, pair_row = torch.unique(current, return_inverse=True)
    if isinstance(source, SyntheticLanguage):
        table = torch.from_numpy(source.bigram_matrix(contexts.shape[1])).float()[rows]
        words = source.words()
        ngrams = {
            n: torch.tensor([w for w in words if len(w) == n][:N_COMMON], dtype=torch.long).reshape(-1, n)
            for n in N_GRAMS
        }
        ngram_source = "lexicon"
    else:
        counted = np.asarray(source.train[:N_BIGRAM_COUNT_CONTEXTS])
        table = count_bigrams(counted, V).index_select(0, rows).coalesce()
        exclude = tuple({bos, getattr(source, "eos_id", bos)})
        ngrams = {n: frequent_ngrams(counted, n, exclude=exclude) for n in N_GRAMS}
        ngram_source = "frequency"
    prev, lengths = prev_token_sequences(V, bos, n_ctx, seed, n_synthetic)
    prefix, first, second = prefix_sequences(V, bos, n_ctx, seed, n_synthetic)
    return LanguageProbeData(
        n_ctx,
        ctx,
        pos,
        pair_row,
        table,
        _entropy_rows(table),
        ngrams,
        ngram_source,
        prev,
        lengths,
        prefix,
        first,
        second,
    )
