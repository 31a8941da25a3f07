"""An offline default corpus: a seeded synthetic language for the language setting (paper §3, §6).

The paper trains a 2-layer attention-only transformer on the DSIR-filtered Pile (appendix F.1) and
reads off stages in which it learns bigram statistics (LM1), common n-grams and the positional
embedding (LM2), then previous-token and induction heads (LM3, LM4). This module generates a
language, from one seed and without any download, in which each of those behaviours pays:

* **Zipfian vocabulary, strong bigrams.** A sparse random transition kernel T: each regular token
  has ``successors`` possible next tokens, drawn by a Zipfian unigram prior (so frequent tokens
  are frequent successors) and weighted by a Zipf law over the row (so each row is peaked). The
  context-free optimum (LM1) is the bigram distribution, well below the unigram entropy.
* **Frequent multi-token words** (LM2's common n-grams). A lexicon of ``n_words`` fixed token
  sequences of lengths ``word_lengths``, built from common tokens and used with Zipfian
  frequencies. Inside a word the next token is fixed by the word, which the current token alone
  does not determine: predicting it pays for looking one token back.
* **A skip-bigram** that rewards position. With probability ``p_skip`` a token ``a`` is followed by
  a filler ``b ~ T(a, ·)`` and then by its fixed target ``τ(a)``: the next token depends on the
  token two back. Without such a rule a small model formed no induction in 8 minutes of training;
  with it the model has a reason to attend to the previous position (previous-token heads, LM3).
* **Repeated spans** for induction (LM4). Each context draws ``n_phrases`` phrases of
  ``phrase_length`` tokens, i.i.d. uniform over the regular tokens (like rare names, "D/urs/ley"
  of figure C.1). With probability ``p_copy`` a phrase, chosen uniformly, is inserted; after its
  first occurrence in a context each later occurrence is a copy of an earlier span, predictable
  only by induction.

**The generative process is a finite-state Markov chain**, which makes its bigram statistics
exactly computable. Its states are BOS, FREE(a) for each regular token (emits a), WORD(w, i) (the
i-th token of word w, all but the last; the last is FREE of that token), SKIP(a, j) (the filler,
the j-th successor of a; next is FREE(τ(a))) and PHRASE(i) (emits a phrase token). After a phrase
the chain *resets*: the next token is drawn from the unigram prior, whatever the phrase was. So
no other state ever reads a phrase's content, and the joint law of any two adjacent tokens is the
same whether a context reuses its phrases (the sampler) or draws a fresh phrase at every
occurrence (the chain, in which PHRASE(i) emits i.i.d. uniform tokens): inside an occurrence both
are two i.i.d. phrase tokens, and across its boundaries one token is a phrase token, independent
of the other. Reuse only correlates tokens at distance ≥ 2, which is what induction exploits.

**"Exact" bigram statistics**, the floor of the bigram score (appendix C.1.1), are those of the
pairs a model is scored on: a context of ``n_ctx`` tokens starts with BOS at position 0, and the
model predicts positions 1..n_ctx−1 from the token before, so the pairs are (x_k, x_{k+1}) for
k = 0..n_ctx−2, *including* (BOS, x_1). The pooled pair law
Q(a, b) = 1/(n_ctx−1) Σ_k P(x_k = a, x_{k+1} = b) is computed by propagating the chain's state
law from BOS through n_ctx−1 steps (float64, no sampling). The best position-independent
predictor from the current token alone is q(b | a) = Q(a, b) / Σ_b Q(a, b) (:meth:`bigram_matrix`)
and its per-token mean cross entropy over positions 1..n_ctx−1 — the same average as the test
loss — is H(X_{k+1} | X_k) under Q (:meth:`bigram_entropy`). The best single next-token
distribution is the pooled marginal of x_1..x_{n_ctx−1} (:meth:`marginal`); its entropy
(:meth:`unigram_entropy`) is the loss before LM1 ends, so their gap is what the bigram stage closes.

Seeding follows :mod:`devarray.tasks.regression`: the language's structure is drawn from
``generator(seed, "language", part)``, a training batch from ``generator(seed, "train", step)``
and a fixed set from ``generator(seed, stream)``, so the same (seed, stream, step) always gives
the same bytes and resuming needs no RNG state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from devarray.seeding import generator

BOS_ID = 0

# kinds of token in a LanguageSample: which mechanism produced it
KIND_BOS, KIND_CHAIN, KIND_WORD, KIND_SKIP, KIND_PHRASE = 0, 1, 2, 3, 4
KIND_NAMES = ("bos", "chain", "word", "skip", "phrase")


@runtime_checkable
class TokenSource(Protocol):
    """What the language setting needs from a source of token contexts, synthetic or real.

    Contexts are LongTensors (n, n_ctx) whose position 0 is ``bos_id``. ``batch_for_step`` is a
    pure function of (seed, step); ``dataset`` returns the same fixed set for the same stream.
    """

    vocab_size: int
    bos_id: int
    n_ctx: int

    def batch_for_step(self, step: int, batch_size: int) -> torch.Tensor: ...

    def dataset(self, n: int, stream: str) -> torch.Tensor: ...

    def decode(self, ids) -> list[str]: ...


@dataclass(frozen=True)
class LanguageConfig:
    """The synthetic language's parameters; ``vocab_size`` counts BOS (id 0)."""

    vocab_size: int = 512
    n_ctx: int = 256
    seed: int = 0
    zipf_exponent: float = 1.0  # unigram prior over regular tokens: weight of rank r ∝ r^-exponent
    successors: int = 12  # support of each row of T
    successor_exponent: float = 1.2  # Zipf weights within a row: how peaked the bigrams are
    n_words: int = 64
    word_lengths: tuple[int, ...] = (2, 3, 4)
    word_exponent: float = 1.0  # word frequencies by rank
    p_word: float = 0.15  # per chain token: start a word
    p_skip: float = 0.15  # per chain token: filler, then the skip-bigram target
    p_copy: float = 0.03  # per chain token: insert a phrase
    n_phrases: int = 2
    phrase_length: int = 6

    def __post_init__(self):
        object.__setattr__(self, "word_lengths", tuple(int(n) for n in self.word_lengths))
        if self.vocab_size < 3:
            raise ValueError(f"vocab_size must be at least 3, got {self.vocab_size}")
        if not 1 <= self.successors <= self.vocab_size - 1:
            raise ValueError(f"successors must be in 1..{self.vocab_size - 1}, got {self.successors}")
        if min(self.word_lengths, default=2) < 2:
            raise ValueError(f"words have at least 2 tokens, got lengths {self.word_lengths}")
        p = (self.p_word, self.p_skip, self.p_copy)
        if min(p) < 0 or sum(p) >= 1:
            raise ValueError(f"p_word, p_skip, p_copy must be ≥ 0 with sum < 1, got {p}")
        if self.n_ctx < 2 or self.phrase_length < 1 or self.n_phrases < 1:
            raise ValueError("n_ctx ≥ 2, phrase_length ≥ 1 and n_phrases ≥ 1 are required")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["word_lengths"] = list(self.word_lengths)
        return d


@dataclass(frozen=True)
class LanguageSample:
    """Contexts with what produced each token: ``kind`` (KIND_*), ``phrase`` (the phrase id at
    phrase tokens, else −1) and ``occurrence`` (how many earlier occurrences of that phrase the
    context holds; ≥ 1 marks a copy). All (n, n_ctx)."""

    tokens: torch.Tensor
    kind: torch.Tensor
    phrase: torch.Tensor
    occurrence: torch.Tensor

    @property
    def copied(self) -> torch.Tensor:
        """Tokens of repeated phrase occurrences (the spans induction can copy)."""
        return (self.kind == KIND_PHRASE) & (self.occurrence >= 1)


def _zipf(n: int, exponent: float) -> np.ndarray:
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


class SyntheticLanguage:
    """The seeded synthetic language; see the module docstring for the process and its exactness."""

    bos_id = BOS_ID

    def __init__(self, config: LanguageConfig | None = None):
        self.config = config or LanguageConfig()
        self._build()
        self._exact: dict[int, np.ndarray] = {}

    # -- structure -------------------------------------------------------------------------------

    def _build(self) -> None:
        c = self.config
        V, deg = c.vocab_size, c.successors
        R = V - 1  # regular tokens 1..V-1; token id = 1 + Zipf rank, so ids are in frequency order
        self.prior = np.concatenate([[0.0], _zipf(R, c.zipf_exponent)])  # unigram prior (V,)
        g = generator(c.seed, "language", "successors")
        prior_t = torch.from_numpy(self.prior[1:])
        # row a's successors: drawn without replacement by the prior, the first drawn weighted most
        succ = torch.stack([torch.multinomial(prior_t, deg, generator=g) for _ in range(R)]) + 1
        self.succ = succ.numpy().astype(np.int64)  # (R, deg), row a-1
        self.succ_p = _zipf(deg, c.successor_exponent)  # (deg,) the same shape for every row
        g = generator(c.seed, "language", "skip")
        self.skip_target = np.concatenate([[0], torch.randint(1, V, (R,), generator=g).numpy()])  # τ, (V,)
        g = generator(c.seed, "language", "words")
        lengths = torch.tensor(c.word_lengths)[torch.randint(len(c.word_lengths), (c.n_words,), generator=g)]
        self.lexicon = [tuple((torch.multinomial(prior_t, int(n), True, generator=g) + 1).tolist()) for n in lengths]
        self.word_p = _zipf(c.n_words, c.word_exponent)
        self._build_chain()

    def _build_chain(self) -> None:
        """The chain's states, emitted tokens and transitions as a CSR table (see module docstring)."""
        c = self.config
        V, deg, R, L = c.vocab_size, c.successors, c.vocab_size - 1, c.phrase_length
        # state layout: 0 BOS | 1..V-1 FREE(a) (state id = token id) | WORD(w, i) | SKIP(a, j) | PHRASE(i)
        word_start = V + np.concatenate([[0], np.cumsum([len(w) - 1 for w in self.lexicon])])
        self.skip_base = int(word_start[-1])
        self.phrase_base = self.skip_base + R * deg
        n_states = self.phrase_base + L
        tok = np.full(n_states, -1, dtype=np.int64)  # −1: PHRASE states, which emit uniform tokens
        tok[:V] = np.arange(V)
        for w, word in enumerate(self.lexicon):
            tok[word_start[w] : word_start[w] + len(word) - 1] = word[:-1]
        tok[self.skip_base : self.phrase_base] = self.succ.reshape(-1)
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        probs: list[np.ndarray] = []

        def edges(r, cs, ps):
            """Transitions from state(s) r to states cs with probabilities ps (broadcast)."""
            r, cs, ps = np.broadcast_arrays(np.atleast_1d(r), np.atleast_1d(cs), np.atleast_1d(np.float64(ps)))
            rows.append(r.astype(np.int64)), cols.append(cs.astype(np.int64)), probs.append(ps.astype(np.float64))

        reset = (np.arange(1, V), self.prior[1:])  # the unigram prior over FREE states
        edges(0, *reset)
        p_chain = 1.0 - c.p_word - c.p_skip - c.p_copy
        for a in range(1, V):
            # duplicates cannot occur: successors are distinct, and so are the state blocks
            edges(a, self.succ[a - 1], p_chain * self.succ_p)
            edges(a, word_start[:-1], c.p_word * self.word_p)
            edges(a, self.skip_base + (a - 1) * deg + np.arange(deg), c.p_skip * self.succ_p)
            edges(a, self.phrase_base, c.p_copy)
        for w, word in enumerate(self.lexicon):
            s = word_start[w]
            for i in range(len(word) - 2):
                edges(s + i, s + i + 1, 1.0)
            edges(s + len(word) - 2, word[-1], 1.0)  # the last token of a word is FREE(last)
        for a in range(1, V):
            edges(self.skip_base + (a - 1) * deg + np.arange(deg), self.skip_target[a], 1.0)
        for i in range(L - 1):
            edges(self.phrase_base + i, self.phrase_base + i + 1, 1.0)
        edges(self.phrase_base + L - 1, *reset)  # reset: no state after a phrase reads its content
        rows_, cols_, probs_ = np.concatenate(rows), np.concatenate(cols), np.concatenate(probs)
        keep = probs_ > 0
        rows_, cols_, probs_ = rows_[keep], cols_[keep], probs_[keep]
        order = np.argsort(rows_, kind="stable")
        self.rows, self.cols, self.probs = rows_[order], cols_[order], probs_[order]
        self.tok = tok
        self.n_states = n_states
        # row r's cumulative probabilities, offset by r so that one searchsorted samples every row;
        # each row's last entry is exactly r + 1, so r + u (u < 1) never falls into the next row
        cum = np.empty_like(self.probs)
        starts = np.searchsorted(self.rows, np.arange(n_states))
        ends = np.searchsorted(self.rows, np.arange(n_states), side="right")
        for r, (s, e) in enumerate(zip(starts, ends)):
            if e == s:
                raise AssertionError(f"state {r} has no transitions")
            cum[s:e] = r + np.cumsum(self.probs[s:e]) / self.probs[s:e].sum()
            cum[e - 1] = r + 1.0
        self.cum = cum
        sums = np.bincount(self.rows, weights=self.probs, minlength=n_states)
        assert np.allclose(sums, 1.0), "transition rows must sum to 1"

    # -- TokenSource -----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def n_ctx(self) -> int:
        return self.config.n_ctx

    def decode(self, ids) -> list[str]:
        """Readable token strings for axis labels: ``<bos>``, then ``w1``, ``w2``, … (id = rank of the prior)."""
        ids = torch.as_tensor(ids).reshape(-1).tolist()
        return ["<bos>" if i == BOS_ID else f"w{i}" for i in ids]

    def words(self) -> list[tuple[int, ...]]:
        """The lexicon, most frequent first: the language's common n-grams (for n-gram scores, C.1.2)."""
        return list(self.lexicon)

    # -- sampling --------------------------------------------------------------------------------

    def sample(self, n: int, n_ctx: int | None, gen: torch.Generator) -> LanguageSample:
        """``n`` contexts with provenance; every draw comes from ``gen``, made up front in a fixed order."""
        c = self.config
        n_ctx = c.n_ctx if n_ctx is None else n_ctx
        L = c.phrase_length
        u = torch.rand(n, n_ctx - 1, generator=gen, dtype=torch.float64).numpy()
        choice = torch.randint(c.n_phrases, (n, n_ctx), generator=gen).numpy()
        content = torch.randint(1, c.vocab_size, (n, c.n_phrases, L), generator=gen).numpy()
        states = np.empty((n, n_ctx), dtype=np.int64)
        states[:, 0] = 0
        for k in range(1, n_ctx):
            states[:, k] = self.cols[np.searchsorted(self.cum, states[:, k - 1] + u[:, k - 1], side="right")]
        tokens = self.tok[states]
        phrase = np.full((n, n_ctx), -1, dtype=np.int64)
        occurrence = np.zeros((n, n_ctx), dtype=np.int64)
        pi, pk = np.nonzero(states >= self.phrase_base)
        if len(pi):
            i = states[pi, pk] - self.phrase_base
            m = choice[pi, pk - i]  # the phrase chosen at the occurrence's first token
            phrase[pi, pk] = m
            tokens[pi, pk] = content[pi, m, i]
            # occurrence index: earlier starts of the same phrase in the same context
            starts = i == 0
            si, sk, sm = pi[starts], pk[starts], m[starts]
            key = (si * c.n_phrases + sm) * n_ctx + sk
            order = np.argsort(key)
            si, sk, sm, key = si[order], sk[order], sm[order], key[order]
            group = si * c.n_phrases + sm
            first = np.r_[True, group[1:] != group[:-1]]
            idx = np.arange(len(group))
            rank = idx - np.maximum.accumulate(np.where(first, idx, 0))
            occ_at_start = np.zeros((n, n_ctx), dtype=np.int64)
            occ_at_start[si, sk] = rank
            occurrence[pi, pk] = occ_at_start[pi, pk - i]
        kind = np.full((n, n_ctx), KIND_CHAIN, dtype=np.int64)
        kind[:, 0] = KIND_BOS
        prev = states[:, :-1]
        cur = states[:, 1:]
        is_word = (cur >= c.vocab_size) & (cur < self.skip_base)
        after_word = (prev >= c.vocab_size) & (prev < self.skip_base)
        kind[:, 1:][is_word | after_word] = KIND_WORD
        kind[:, 1:][(prev >= self.skip_base) & (prev < self.phrase_base)] = KIND_SKIP  # the skip target
        kind[:, 1:][cur >= self.phrase_base] = KIND_PHRASE
        as_t = torch.from_numpy
        return LanguageSample(as_t(tokens), as_t(kind), as_t(phrase), as_t(occurrence))

    def sample_contexts(self, n: int, n_ctx: int | None, gen: torch.Generator) -> torch.Tensor:
        """LongTensor (n, n_ctx); position 0 is BOS."""
        return self.sample(n, n_ctx, gen).tokens

    def batch_for_step(self, step: int, batch_size: int, n_ctx: int | None = None) -> torch.Tensor:
        """The training batch of one step, seeded by (seed, "train", step): resuming needs no RNG state."""
        return self.sample_contexts(batch_size, n_ctx, generator(self.config.seed, "train", step))

    def dataset(self, n: int, stream: str = "test", n_ctx: int | None = None) -> torch.Tensor:
        """A fixed set of n contexts from a named stream ('test', 'sgld', …), independent of training's."""
        if stream == "train":
            raise ValueError("'train' is the stream of batch_for_step; name a held-out stream")
        return self.sample_contexts(n, n_ctx, generator(self.config.seed, stream))

    # -- exact statistics ------------------------------------------------------------------------

    def transition_matrix(self) -> np.ndarray:
        """T (V, V): the chain's bigram kernel between FREE tokens (row BOS is zero)."""
        V = self.config.vocab_size
        T = np.zeros((V, V))
        T[np.arange(1, V)[:, None], self.succ] = self.succ_p
        return T

    def pair_matrix(self, n_ctx: int | None = None) -> np.ndarray:
        """Q (V, V): the exact pooled law of (x_k, x_{k+1}) over k = 0..n_ctx−2; sums to 1."""
        n_ctx = self.config.n_ctx if n_ctx is None else n_ctx
        if n_ctx not in self._exact:
            self._exact[n_ctx] = self._pair_matrix(n_ctx)
        return self._exact[n_ctx].copy()

    def _pair_matrix(self, n_ctx: int) -> np.ndarray:
        V = self.config.vocab_size
        mu = np.zeros(self.n_states)
        mu[0] = 1.0
        occupation = np.zeros(self.n_states)  # Σ_k P(s_k = s) over k = 0..n_ctx−2
        for _ in range(n_ctx - 1):
            occupation += mu
            mu = np.bincount(self.cols, weights=mu[self.rows] * self.probs, minlength=self.n_states)
        w = occupation[self.rows] * self.probs  # expected count of each transition
        a, b = self.tok[self.rows], self.tok[self.cols]
        uniform = np.full(V, 1.0 / (V - 1))
        uniform[BOS_ID] = 0.0  # phrase tokens are uniform over the regular tokens
        Q = np.zeros((V, V))
        both = (a >= 0) & (b >= 0)
        Q += np.bincount(a[both] * V + b[both], weights=w[both], minlength=V * V).reshape(V, V)
        into = (a >= 0) & (b < 0)  # into a phrase: the phrase token is independent of the current one
        Q += np.outer(np.bincount(a[into], weights=w[into], minlength=V), uniform)
        out = (a < 0) & (b >= 0)  # out of a phrase: the reset ignores the phrase token
        Q += np.outer(uniform, np.bincount(b[out], weights=w[out], minlength=V))
        Q += w[(a < 0) & (b < 0)].sum() * np.outer(uniform, uniform)
        return Q / (n_ctx - 1)

    def bigram_matrix(self, n_ctx: int | None = None) -> np.ndarray:
        """q(b | a) (V, V), rows sum to 1: the exact bigram distribution (appendix C.1.1's q̃)."""
        Q = self.pair_matrix(n_ctx)
        rows = Q.sum(1, keepdims=True)
        return np.divide(Q, rows, out=np.full_like(Q, 1.0 / Q.shape[1]), where=rows > 0)

    def marginal(self, n_ctx: int | None = None) -> np.ndarray:
        """The exact pooled law of the predicted tokens x_1..x_{n_ctx−1} (V,): the unigram optimum."""
        return self.pair_matrix(n_ctx).sum(0)

    def bigram_entropy(self, n_ctx: int | None = None) -> float:
        """H(X_{k+1} | X_k) in nats under Q: the per-token test loss of the exact bigram predictor."""
        Q, q = self.pair_matrix(n_ctx), self.bigram_matrix(n_ctx)
        nz = Q > 0
        return float(-(Q[nz] * np.log(q[nz])).sum())

    def unigram_entropy(self, n_ctx: int | None = None) -> float:
        """H(X_{k+1}) in nats: the per-token test loss of the best context-free predictor."""
        p = self.marginal(n_ctx)
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())
