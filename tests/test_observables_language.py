"""Language-model observables (appendix C) on hand-built attention-only transformers with known answers,
against TransformerLens, and through the observe pipeline on a tiny run."""

import numpy as np
import pytest
import torch

from devarray import observables as obs
from devarray.models import AttentionOnlyConfig, AttentionOnlyTransformer
from devarray.observables.language import behaviour, probes, structure
from devarray.settings import get
from devarray.settings.language import token_source

V, N_CTX, D, E = 16, 32, 128, 32  # vocabulary, context, d_model, d_head of the hand-built circuits
BIG = 100.0  # attention logit margin of a wired head


def _zero(model):
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for ln in model.layer_norms().values():
            ln.w.fill_(1.0)


def _pair(i):
    """A zero-mean direction e_i − e_{i+1}: layer norms keep it (no mean to subtract)."""
    v = torch.zeros(D)
    v[i], v[i + 1] = 1.0, -1.0
    return v


TOK, PREV, OUT = N_CTX, N_CTX + 2 * V, N_CTX + 4 * V  # residual blocks: token, previous token, copy


def induction_model(seed: int = 0) -> AttentionOnlyTransformer:
    """Two layers, two heads each. Head 0:0 attends to the previous token (through one-hot positions in
    the query/key input) and writes that token into a 'previous token' subspace; head 1:0 matches its
    query's current token against each key's previous token (K-composition) and copies the key's token
    into a subspace the unembedding reads. The other heads are random and tiny."""
    torch.manual_seed(seed)
    model = AttentionOnlyTransformer(
        AttentionOnlyConfig(n_layers=2, d_vocab=V, n_ctx=N_CTX, d_model=D, n_heads=2, d_head=E)
    )
    _zero(model)
    with torch.no_grad():
        for v in range(V):
            model.embed.W_E[v] = _pair(TOK + 2 * v)
        model.pos_embed.W_pos[:] = torch.eye(N_CTX, D)
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        for t in range(1, N_CTX):
            a0.W_Q[0, t, t - 1] = BIG * E**0.5  # query at t looks for key position t − 1
        a0.W_K[0, torch.arange(N_CTX), torch.arange(N_CTX)] = 1.0
        for v in range(V):
            a0.W_V[0, TOK + 2 * v, v], a0.W_V[0, TOK + 2 * v + 1, v] = 1.0, -1.0
            a0.W_O[0, v] = _pair(PREV + 2 * v)
            a1.W_Q[0, TOK + 2 * v, v], a1.W_Q[0, TOK + 2 * v + 1, v] = 5.0, -5.0
            a1.W_K[0, PREV + 2 * v, v], a1.W_K[0, PREV + 2 * v + 1, v] = 1.0, -1.0
            a1.W_V[0, TOK + 2 * v, v], a1.W_V[0, TOK + 2 * v + 1, v] = 1.0, -1.0
            a1.W_O[0, v] = 10 * _pair(OUT + 2 * v)
            model.unembed.W_U[OUT + 2 * v, v], model.unembed.W_U[OUT + 2 * v + 1, v] = 10.0, -10.0
        for a in (a0, a1):
            for w in (a.W_Q, a.W_K, a.W_V, a.W_O):
                w[1] = 1e-3 * torch.randn_like(w[1])
    return model.eval()


def synthetic_probe(n_ctx=N_CTX, vocab=V, seed=0):
    """A probe with only the synthetic attention sets (all the structural scores need)."""
    tokens, lengths = probes.prev_token_sequences(vocab, 0, n_ctx, seed)
    prefix, first, second = probes.prefix_sequences(vocab, 0, n_ctx, seed)
    data = probes.LanguageProbeData(
        n_ctx,
        *(torch.zeros(0, dtype=torch.long),) * 3,
        torch.zeros(0, vocab),
        torch.zeros(0),
        {},
        "none",
        tokens,
        lengths,
        prefix,
        first,
        second,
    )
    from devarray.settings.language import LanguageProbe

    return LanguageProbe(torch.zeros(1, n_ctx, dtype=torch.long), seed, data)


def test_synthetic_sequences_follow_c23_and_c24():
    tokens, lengths = probes.prev_token_sequences(50, 0, 1024, seed=1)
    assert tokens.shape == (probes.N_SYNTHETIC, 64) and lengths.min() == 16 and lengths.max() == 64
    real = torch.arange(64)[None] < lengths[:, None]
    assert (tokens[:, 0] == 0).all() and (tokens[:, 1:][real[:, 1:]] != 0).all()
    seq, first, second = probes.prefix_sequences(50, 0, 1024, seed=1)
    assert seq.shape == (probes.N_SYNTHETIC, 128) and (seq[:, 0] == 0).all()
    rows = torch.arange(len(seq))
    a, b = seq[rows, first], seq[rows, first + 1]
    assert (first >= 1).all() and (first + 1 < 64).all() and (second > 64).all() and (seq[rows, second] == a).all()
    assert (a != b).all() and (a != 0).all() and (b != 0).all()
    others = torch.ones_like(seq, dtype=torch.bool)
    others[:, 0] = others[rows, first] = others[rows, first + 1] = others[rows, second] = False
    rest = seq[others].view(len(seq), -1)
    assert not ((rest == a[:, None]) | (rest == b[:, None]) | (rest == 0)).any()
    assert probes.prefix_sequences(50, 0, 32, seed=1)[0].shape[1] == 32  # capped at n_ctx


def test_previous_token_head_scores_one_and_induction_head_matches_prefixes():
    model, probe = induction_model(), synthetic_probe()
    prev = obs.compute(model, ["prev_token_score", "prefix_matching_score", "head_role"], probe)
    assert float(prev.prev_token_score.sel(layer=0, head=0)) > 0.999
    assert float(prev.prefix_matching_score.sel(layer=0, head=0)) < 1e-6  # never attends past t − 1
    assert float(prev.prefix_matching_score.sel(layer=1, head=0)) > 0.99
    others = prev.prefix_matching_score.values.ravel()[[1, 3]]
    assert (others < 0.2).all()  # the random heads spread their attention
    assert prev.head_role.sel(layer=0, head=0) == "previous-token"
    assert prev.head_role.sel(layer=1, head=0) == "induction"
    assert set(prev.head_role.values.ravel()[[1, 3]]) == {"other"}


def test_induction_circuit_k_composition_dominates_and_it_copies_repeated_spans():
    model = induction_model()
    comp = obs.compute(model, ["composition_score"], synthetic_probe()).composition_score
    k = float(comp.sel(composition="K", head_1=0, head_2=0))
    # OV of 0:0 and the transposed QK of 1:0 are the same rank-V projection up to scale: ‖AB‖/‖A‖‖B‖ = 1/√V,
    # the largest a rank-V pair can score
    assert k == pytest.approx(V**-0.5, rel=1e-3)
    assert float(comp.sel(composition="Q", head_1=0, head_2=0)) < 1e-6
    assert float(comp.sel(composition="V", head_1=0, head_2=0)) < 1e-6
    assert k > 2 * float(comp.sel(composition="K").drop_sel(head_1=0).max())
    span = torch.randperm(V - 1, generator=torch.Generator().manual_seed(0)) + 1  # 15 distinct tokens
    seq = torch.cat([torch.zeros(1, dtype=torch.long), span, span])[None]
    pred = model(seq)[0].argmax(-1)
    second = torch.arange(V, 2 * V - 2)  # positions of the repeat, each followed by the next span token
    assert (pred[second] == seq[0, second + 1]).all()


def test_composition_scores_equal_transformer_lens():
    pytest.importorskip("transformer_lens")
    from devarray.models import to_hooked_transformer

    torch.manual_seed(3)
    model = AttentionOnlyTransformer(
        AttentionOnlyConfig(n_layers=2, d_vocab=20, n_ctx=8, d_model=24, n_heads=3, d_head=5)
    )
    ours = structure.composition_score(model, None)
    ht = to_hooked_transformer(model)
    for c in "QKV":
        want = ht.all_composition_scores(c)[0, :, 1, :].detach().double().numpy()
        np.testing.assert_allclose(ours.sel(composition=c).values, want, rtol=1e-5, atol=1e-7)


def test_one_layer_composition_is_nan_of_the_declared_shape():
    model = AttentionOnlyTransformer(
        AttentionOnlyConfig(n_layers=1, d_vocab=20, n_ctx=8, d_model=24, n_heads=3, d_head=5)
    )
    comp = structure.composition_score(model, None)
    assert comp.shape == (3, 3, 3) and comp.isnull().all()


@pytest.fixture(scope="module")
def tiny():
    s = get("lm")
    config = s.config("tiny").to_dict()
    return s, config, s.probe(config, 0)


def bigram_model(q: np.ndarray, n_ctx: int) -> AttentionOnlyTransformer:
    """Logits log q(· | current token): attention writes nothing, the embedding is one-hot (zero-mean pairs),
    the unembedding holds log q."""
    v = q.shape[0]
    model = AttentionOnlyTransformer(
        AttentionOnlyConfig(n_layers=1, d_vocab=v, n_ctx=n_ctx, d_model=2 * v, n_heads=1, d_head=4, eps=1e-12)
    )
    _zero(model)
    scale = v**0.5  # the layer norm's gain on a pair direction in 2v dimensions
    with torch.no_grad():
        for t in range(v):
            model.embed.W_E[t, 2 * t], model.embed.W_E[t, 2 * t + 1] = 1.0, -1.0
        model.unembed.W_U[0::2] = torch.from_numpy(np.log(np.maximum(q, 1e-30))).float() / scale
    return model.eval()


def test_model_predicting_the_bigram_distribution_scores_the_bigram_entropy(tiny):
    s, config, probe = tiny
    q = token_source(config).bigram_matrix(config["model"]["n_ctx"])
    ds = obs.compute(bigram_model(q, config["model"]["n_ctx"]), ["bigram_score"], probe)
    h = float(ds.bigram_entropy)
    assert h == pytest.approx(token_source(config).bigram_entropy(), rel=0.1)  # same law, 5,000 pairs
    assert float(ds.bigram_score) == pytest.approx(h, abs=1e-4)
    other = obs.compute(s.build_model(config), ["bigram_score"], probe)  # an untrained model is worse
    assert float(other.bigram_score) > h + 0.5
    assert probe.data.pair_row.shape == (probes.N_BIGRAM_PAIRS,)


def test_icl_positions_scale_the_papers_500th_and_50th_token():
    late, early = behaviour.icl_positions(1024)
    assert (late.min(), late.max(), early.min(), early.max()) == (450, 550, 45, 55)
    late, early = behaviour.icl_positions(128)
    assert 62 in late and 6 in early and late.max() < 128 and early.min() >= 1


def test_pos_embed_pca_of_a_line_has_one_component_growing_with_position():
    t = torch.arange(16.0)[:, None]
    W = -t * torch.tensor([[1.0, 2.0, 0.0, 0.0]]) + 0.01 * torch.randn(16, 4)
    ratio, pcs = structure.pos_embed_pca(W)
    assert ratio[0] > 0.999 and ratio.sum() == pytest.approx(1.0)
    assert np.corrcoef(pcs[0], t[:, 0])[0, 1] > 0.999


def test_corpus_bigram_counts_and_frequent_ngrams():
    ctx = np.array([[0, 1, 2, 1, 2, 3], [0, 1, 2, 3, 3, 1]])
    q = probes.count_bigrams(ctx, 5).to_dense()
    np.testing.assert_allclose(q.sum(1).numpy(), [1, 1, 1, 1, 0], atol=1e-6)
    assert q[1, 2] == 1.0 and q[2, 1] == pytest.approx(1 / 3) and q[3, 3] == pytest.approx(1 / 2)
    grams = probes.frequent_ngrams(ctx, 2, limit=2, exclude=(0,))
    assert grams.tolist() == [[1, 2], [2, 3]]  # (1, 2) three times; (2, 3) twice


# -- through the store -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_store(tmp_path_factory):
    """A tiny run with every language observable stored at every checkpoint, the way pipelines/observe.py
    stores them (allocated from the first checkpoint, then one region write and done flag per step); the
    store side alone, so the test does not follow the pipeline package's other changes."""
    from devarray import store_observables as storage
    from devarray.checkpoints import load_model
    from devarray.store import RunStore
    from devarray.train import make_config, train

    path = tmp_path_factory.mktemp("lmobs") / "lm-tiny-s0.zarr"
    train(path, make_config("lm", "tiny"), progress=False)
    store = RunStore.open(path)
    names = obs.names(task=get("lm").observables)
    probe = get("lm").probe(store.config, 0)
    steps = store.done_steps("params")
    storage.allocate(store, names, obs.compute(load_model(store, int(steps[0])), names, probe))
    for step in steps:
        storage.write(store, int(step), storage.values(obs.compute(load_model(store, int(step)), names, probe), names))
    return path


def test_observe_writes_every_language_metric_at_every_checkpoint(lm_store):
    from devarray.store import RunStore

    store = RunStore.open(lm_store, mode="r")
    ds = store.dataset("observables")
    for name in obs.names(task="language"):
        assert ds[f"done_{name}"].all(), name
    steps = ds.sizes["step"]
    assert ds.prev_token_score.dims == ("step", "layer", "head")
    assert ds.loss_by_position.sizes == {"step": steps, "position": 7, "ablation": 2}  # 1..30 of a 32 context
    assert ds.composition_score.sizes == {"step": steps, "composition": 3, "head_1": 4, "head_2": 4}
    assert set(np.unique(ds.head_role.values)) <= set(structure.HEAD_ROLES)
    assert (ds.bigram_score >= ds.bigram_entropy - 1e-6).all()
    assert ds.bigram_score.attrs["units"] == "nats" and "C.1.1" in ds.bigram_score.attrs["description"]
    assert ds.bigram_score.attrs["probe_n_bigram_pairs"] == probes.N_BIGRAM_PAIRS
    np.testing.assert_allclose(ds.pos_embed_explained_variance.sum("component"), 1.0, rtol=1e-6)
    # the ablated loss at step 0 differs from the kept one only through position
    assert np.isfinite(ds.loss_by_position.values).all() and np.isfinite(ds.ngram_score.values).all()


def test_compare_finds_the_largest_true_logit_changes(lm_store):
    from devarray.compare import compare, format_comparison
    from devarray.store import RunStore

    steps = RunStore.open(lm_store, mode="r").steps()
    result = compare(lm_store, int(steps[0]), int(steps[-1]), n=3, n_samples=16)
    assert result.sizes["sample"] == 3
    delta = result.logit_change.values
    top = np.nanmax(np.abs(delta), axis=1)
    assert (np.diff(top) <= 0).all()  # samples ordered by their largest change
    text = format_comparison(result, color=False)
    assert text.count("\n") >= 3 and "w" in text and "[" in text


def test_figure_4_renders_from_the_store(lm_store, tmp_path):
    from devarray.plots_language import metrics_figure, store_inputs, store_metrics_figure

    out = store_metrics_figure(lm_store, tmp_path / "fig4.png")
    assert out.stat().st_size > 10_000
    ds, _ = store_inputs(lm_store)
    assert len(metrics_figure(ds)) == 6
    with pytest.raises(ValueError, match="devarray observe"):
        metrics_figure(ds.drop_vars("icl_score"))


def test_corpus_probe_counts_sparse_bigrams_and_merge_order_ngrams():
    from devarray.tasks.corpus import CorpusSource, train_tokenizer

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"]
    texts = [" ".join(rng.choice(words, size=30)) for _ in range(200)]
    tok = train_tokenizer(texts, 300)
    ids = np.array([[0] + tok.encode(t).ids[:31] for t in texts[:120]])
    source = CorpusSource(ids[:100], {"test": ids[100:]}, tok)
    contexts = torch.from_numpy(ids[100:])
    data = probes.probe_data(source, contexts, seed=0)
    assert data.bigram_table.is_sparse and data.ngram_source == "frequency"
    rows = data.bigram_table.to_dense()
    np.testing.assert_allclose(rows.sum(1).numpy(), 1.0, rtol=1e-5)  # every pair's current token was counted
    assert data.ngrams[2].shape[1] == 2 and len(data.ngrams[2]) > 0 and not (data.ngrams[3] == 0).any()
    # the paper's construction: a reference vocabulary in merge order, re-tokenised by the run's tokenizer
    small = train_tokenizer(texts, 262)
    grams = probes.merge_order_ngrams(small, tok, 2, limit=5)
    assert grams.shape[1] == 2 and len(grams) > 0
    assert all(len(small.encode(small.decode(g.tolist())).ids) == 2 for g in grams)
