import numpy as np
import pytest
import torch

from devarray.tasks.regression import generator
from devarray.tasks.synthetic_language import (
    BOS_ID,
    KIND_PHRASE,
    KIND_SKIP,
    LanguageConfig,
    SyntheticLanguage,
    TokenSource,
)


@pytest.fixture(scope="module")
def lang():
    return SyntheticLanguage(LanguageConfig())


def _per_context_nll(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each context's mean −log q(x_{k+1} | x_k) over its predicted positions 1..n_ctx−1."""
    return -np.log(q[x[:, :-1], x[:, 1:]]).mean(1)


def test_exact_bigram_entropy_is_the_mean_cross_entropy_of_the_exact_bigram_predictor(lang):
    # E[−log q(x_{k+1}|x_k)] pooled over positions is exactly H(X'|X) under Q, so the sample mean is an
    # unbiased estimate; contexts are i.i.d., so its standard error comes from the per-context means.
    x = lang.sample_contexts(4000, None, generator(0, "check-entropy")).numpy()
    per = _per_context_nll(lang.bigram_matrix(), x)
    se = per.std(ddof=1) / np.sqrt(len(per))
    assert abs(per.mean() - lang.bigram_entropy()) < 5 * se
    assert se < 0.01  # the check is tight: 5 SE ≈ 0.02 nats
    # the unigram floor is far above, so the bigram stage has ≥ 1 nat to close
    assert lang.unigram_entropy() - lang.bigram_entropy() > 1.0


def test_exact_bigram_entropy_equals_the_counted_one_on_a_small_language():
    # Plug-in counting is biased by about (cells − rows)/(2N) (Miller–Madow); on a 24-token language with
    # N = 8·10⁵ pairs the corrected bias is far below the sampling error, so 5 SE is the tolerance.
    lang = SyntheticLanguage(
        LanguageConfig(vocab_size=24, successors=4, n_words=6, n_phrases=2, phrase_length=3, n_ctx=64, seed=2)
    )
    V = lang.vocab_size
    x = lang.sample_contexts(12_800, None, generator(2, "check-counts")).numpy()
    counts = np.bincount((x[:, :-1] * V + x[:, 1:]).ravel(), minlength=V * V).reshape(V, V).astype(float)
    n, rows = counts.sum(), counts.sum(1, keepdims=True)
    nz = counts > 0
    plug_in = -(counts[nz] / n * np.log((counts / np.maximum(rows, 1))[nz])).sum()
    miller_madow = plug_in + (nz.sum() - (rows > 0).sum()) / (2 * n)
    per = _per_context_nll(lang.bigram_matrix(), x)
    se = per.std(ddof=1) / np.sqrt(len(per))
    assert abs(miller_madow - lang.bigram_entropy()) < 5 * se
    # and the counted pair law is the exact one, cell by cell (each cell within 5 binomial σ, inflated ×3
    # for the correlation of pairs within a context)
    Q = lang.pair_matrix()
    sigma = np.sqrt(Q * (1 - Q) / n)
    assert np.all(np.abs(counts / n - Q) <= 3 * 5 * sigma + 1e-12)


def test_exact_statistics_are_distributions_that_count_the_bos_pair(lang):
    Q, q, p = lang.pair_matrix(), lang.bigram_matrix(), lang.marginal()
    assert Q.shape == q.shape == (512, 512)
    assert np.isclose(Q.sum(), 1.0) and np.allclose(q.sum(1), 1.0) and np.isclose(p.sum(), 1.0)
    # (BOS, x_1) is one of the n_ctx − 1 scored pairs; its row is the prior, and BOS is never a target
    assert np.isclose(Q[BOS_ID].sum(), 1 / (lang.n_ctx - 1))
    assert np.allclose(q[BOS_ID], lang.prior)
    assert p[BOS_ID] == 0 and np.all(Q[:, BOS_ID] == 0)
    assert np.isclose(lang.pair_matrix(64)[BOS_ID].sum(), 1 / 63)


def test_marginal_matches_counts(lang):
    x = lang.sample_contexts(2000, None, generator(0, "check-marginal")).numpy()
    counts = np.stack([np.bincount(row[1:], minlength=lang.vocab_size) for row in x])  # (n, V) per context
    freq = counts.sum(0) / counts.sum()
    se = counts.std(0, ddof=1) / np.sqrt(len(x)) / (lang.n_ctx - 1)
    top = np.argsort(lang.marginal())[::-1][:50]
    assert np.all(np.abs(freq[top] - lang.marginal()[top]) < 5 * se[top])


def test_same_seed_same_bytes():
    a, b = SyntheticLanguage(LanguageConfig(seed=3)), SyntheticLanguage(LanguageConfig(seed=3))
    assert a.batch_for_step(17, 8).numpy().tobytes() == b.batch_for_step(17, 8).numpy().tobytes()
    assert a.bigram_matrix().tobytes() == b.bigram_matrix().tobytes()
    assert torch.equal(a.dataset(16, "test"), b.dataset(16, "test"))
    assert not torch.equal(a.batch_for_step(18, 8), a.batch_for_step(17, 8))
    assert not torch.equal(a.dataset(16, "test"), a.dataset(16, "sgld"))
    other = SyntheticLanguage(LanguageConfig(seed=4))
    assert not torch.equal(other.batch_for_step(17, 8), a.batch_for_step(17, 8))
    assert not np.array_equal(other.bigram_matrix(), a.bigram_matrix())
    with pytest.raises(ValueError):
        a.dataset(4, "train")


def test_contexts_start_with_bos_and_have_the_requested_shape(lang):
    x = lang.batch_for_step(0, 32)
    assert x.dtype == torch.long and x.shape == (32, lang.n_ctx)
    assert torch.all(x[:, 0] == BOS_ID) and torch.all(x[:, 1:] != BOS_ID)
    assert int(x.max()) < lang.vocab_size
    assert lang.dataset(5, "test", n_ctx=40).shape == (5, 40)


def test_skip_bigram_rule_is_present_and_absent_when_switched_off(lang):
    def excess(language):
        x = language.sample_contexts(2000, None, generator(0, "check-skip")).numpy()
        q = language.bigram_matrix()
        target = language.skip_target[x[:, :-2]]  # τ(x_{k−1}) for the token at k+1
        hit = (x[:, 2:] == target).mean(1)
        predicted = q[x[:, 1:-1], target].mean(1)
        d = hit - predicted  # observed minus what the bigram distribution expects, per context
        return d.mean(), d.std(ddof=1) / np.sqrt(len(d))

    d, se = excess(lang)
    assert d > 0.05 and d > 10 * se
    d0, se0 = excess(SyntheticLanguage(LanguageConfig(p_skip=0.0)))
    assert abs(d0) < 5 * se0
    sample = lang.sample(500, None, generator(0, "kinds"))
    skip = sample.kind[:, 2:] == KIND_SKIP
    assert torch.equal(sample.tokens[:, 2:][skip], torch.from_numpy(lang.skip_target)[sample.tokens[:, :-2][skip]])


def _induction_loss(x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """A copy predictor: find the latest earlier occurrence of the current token and predict what
    followed it with probability 1 − eps (eps spread uniformly); −log p of each x_{k+1}, (n, n_ctx−1)."""
    T = x.shape[1]
    V = int(x.max()) + 1
    cur = x[:, :-1]
    same = cur[:, :, None] == cur[:, None, :]  # [k, j]: x_j == x_k
    same &= np.tri(T - 1, k=-1, dtype=bool)[None]  # j < k
    j = np.where(same.any(-1), (T - 2) - np.argmax(same[:, :, ::-1], -1), -1)
    guess = np.where(j >= 0, np.take_along_axis(x, np.maximum(j, 0) + 1, 1), -1)
    p = np.where(guess == x[:, 1:], 1 - eps, eps / V)
    return -np.log(p)


def test_copies_are_predictable_by_induction_below_the_bigram_floor(lang):
    sample = lang.sample(400, None, generator(0, "check-copies"))
    x = sample.tokens.numpy()
    copied = sample.copied.numpy()
    # copied tokens after the first of their occurrence (which phrase comes next is not copyable); two
    # occurrences are never adjacent, since a chain token always follows a phrase
    target = copied[:, 1:] & copied[:, :-1]
    assert target.sum() > 1000
    bigram = -np.log(lang.bigram_matrix()[x[:, :-1], x[:, 1:]])
    induction = _induction_loss(x)
    assert induction[target].mean() < 0.5 * bigram[target].mean()
    # on first occurrences the copy predictor has nothing to copy
    fresh = (sample.kind.numpy()[:, 1:] == KIND_PHRASE) & (sample.occurrence.numpy()[:, 1:] == 0)
    assert induction[fresh].mean() > 3.0


def _count(x: np.ndarray, gram: tuple[int, ...]) -> int:
    windows = np.lib.stride_tricks.sliding_window_view(x, len(gram), axis=1)
    return int(np.all(windows == np.array(gram), -1).sum())


def test_words_are_frequent_ngrams(lang):
    x = lang.dataset(500, "check-words").numpy()
    words = lang.words()
    top, rare = _count(x, words[0]), _count(x, words[-1])
    assert top > 3 * rare and top > 500
    # the most frequent word is far more frequent than its own bigram chain would make it
    q = lang.bigram_matrix()
    chain = lang.marginal()[words[0][0]] * np.prod([q[a, b] for a, b in zip(words[0], words[0][1:])])
    assert top / (x.shape[0] * (x.shape[1] - len(words[0]))) > 2 * chain


def test_config_round_trip_decode_and_protocol(lang):
    config = LanguageConfig(vocab_size=64, seed=5, word_lengths=[2, 5])
    assert LanguageConfig(**config.to_dict()) == config
    assert lang.decode(torch.tensor([0, 17, 3])) == ["<bos>", "w17", "w3"]
    assert isinstance(lang, TokenSource)
    with pytest.raises(ValueError):
        LanguageConfig(p_word=0.5, p_skip=0.3, p_copy=0.3)
