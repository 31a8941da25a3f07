import json
from collections import Counter
from itertools import chain, pairwise

import datasets
import numpy as np
import pytest
import torch

from devarray.tasks import corpus
from devarray.tasks.corpus import (
    CorpusSource,
    CorpusSplits,
    Slice,
    TokenSource,
    contexts_array,
    load_corpus,
    load_tokenizer,
    merges,
    save_tokenizer,
    tokenize_contexts,
    tokenizer_hash,
    train_tokenizer,
)

WORDS = ["the", "of", "and", "to", "in", "is", "was", "for", "on", "that", "with", "as", "by", "at", "from", "his"]


def _lines(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"line {i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(5, 30)))) for i in range(n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    lines = _lines(400)
    (d / "c.txt").write_text("\n".join(lines) + "\n")
    (d / "c.jsonl").write_text("".join(json.dumps({"contents": t}) + "\n" for t in lines))
    datasets.Dataset.from_dict({"contents": lines}).to_parquet(str(d / "c.parquet"))
    return d, lines


@pytest.fixture(scope="module")
def tok(files):
    return train_tokenizer(files[1], vocab_size=300)


def test_local_files_load_by_extension(files, tmp_path):
    d, lines = files
    assert load_corpus(d / "c.txt", cache_dir=tmp_path)["text"] == lines
    assert load_corpus(d / "c.jsonl", cache_dir=tmp_path)["contents"] == lines
    assert load_corpus(d / "c.parquet", cache_dir=tmp_path)["contents"] == lines
    with pytest.raises(ValueError):
        load_corpus([d / "c.txt", d / "c.jsonl"], cache_dir=tmp_path)


def test_hub_names_are_streamed_with_the_paper_arguments(monkeypatch):
    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.IterableDataset.from_generator(lambda: ({"contents": t} for t in _lines(50)))

    monkeypatch.setattr(corpus.datasets, "load_dataset", fake)
    splits = CorpusSplits.paper()
    assert splits.train == Slice("timaeus/dsir-pile-10m", 0, 10_000_000) and splits.text_column == "contents"
    ds = Slice("timaeus/dsir-pile-10m", 10, 30).load()
    assert calls[0][0] == ("timaeus/dsir-pile-10m",)
    assert calls[0][1]["split"] == "train" and calls[0][1]["streaming"] is True
    assert [r["contents"] for r in ds] == _lines(50)[10:30]  # skip/take on the stream
    # the streamed path tokenises too
    tok = train_tokenizer(_lines(50), 300)
    x = contexts_array(tokenize_contexts(ds, tok, 8, text_column="contents"), limit=5)
    assert x.shape == (5, 8) and np.all(x[:, 0] == tok.token_to_id("<|bos|>"))


def test_splits_never_overlap(files, tmp_path):
    d, lines = files
    with pytest.raises(ValueError, match="overlap"):
        CorpusSplits(train=Slice("a", 0, 100), test=Slice("b"), sgld=Slice("a", 99, 200))
    with pytest.raises(ValueError, match="overlap"):
        CorpusSplits(train=Slice("a", 10), test=Slice("a", 0, 11), sgld=Slice("c"))
    CorpusSplits(train=Slice("a", 0, 100), test=Slice("a", 100, 101), sgld=Slice("a", 0, 100, split="validation"))
    splits = CorpusSplits.contiguous(str(d / "c.jsonl"), 250, 100, 50, text_column="contents")
    loaded = {name: sl.load(cache_dir=tmp_path)["contents"] for name, sl in splits.slices().items()}
    assert [len(v) for v in loaded.values()] == [250, 50, 100]
    assert sorted(chain(*loaded.values())) == sorted(lines)  # disjoint and complete (lines are unique)
    assert loaded["sgld"] == lines[250:350]  # SGLD follows training, as lines 10m–11m do in A.3.1


def test_tokenizer_vocabulary_specials_hash_and_merge_order(files, tok, tmp_path):
    assert tok.get_vocab_size() == 300
    assert tok.token_to_id("<|bos|>") == 0 and tok.token_to_id("<|eos|>") == 1
    m = merges(tok)
    assert len(m) == 300 - 256 - 2  # byte alphabet + 2 specials + one token per merge
    # merge order: the first merge is the most frequent adjacent pair within pre-tokens
    pairs = Counter()
    for text in files[1]:
        for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text):
            pairs.update(pairwise(piece))
    assert pairs[m[0]] == max(pairs.values())
    assert tok.token_to_id(m[0][0] + m[0][1]) == 258
    # the hash names the tokenizer: stable through save/load, different for another vocabulary
    path = save_tokenizer(tok, tmp_path / "run")
    assert path.name == "tokenizer.json" and tokenizer_hash(load_tokenizer(path)) == tokenizer_hash(tok)
    assert len(tokenizer_hash(tok)) == 64
    assert tokenizer_hash(train_tokenizer(files[1], vocab_size=280)) != tokenizer_hash(tok)


def test_contexts_are_bos_then_the_documents_concatenated_with_eos(files, tok, tmp_path):
    d, lines = files
    n_ctx = 17
    x = contexts_array(
        tokenize_contexts(load_corpus(d / "c.txt", cache_dir=tmp_path), tok, n_ctx, map_batch_size=10_000)
    )
    assert x.dtype == np.int32 and x.shape[1] == n_ctx and np.all(x[:, 0] == 0)
    stream = list(chain.from_iterable(tok.encode(t).ids + [1] for t in lines))
    assert len(stream) // (n_ctx - 1) == len(x)  # one map batch: only the final partial run is dropped
    assert x[:, 1:].ravel().tolist() == stream[: len(x) * (n_ctx - 1)]
    # with smaller map batches each batch drops under n_ctx − 1 tokens
    small = contexts_array(
        tokenize_contexts(load_corpus(d / "c.txt", cache_dir=tmp_path), tok, n_ctx, map_batch_size=50)
    )
    assert len(x) - len(lines) // 50 <= len(small) <= len(x)


@pytest.fixture(scope="module")
def source(files, tok, tmp_path_factory):
    d, _ = files
    splits = CorpusSplits.contiguous(str(d / "c.parquet"), 300, 50, 50, text_column="contents")
    return CorpusSource.build(splits, tok, 16, seed=1, cache_dir=tmp_path_factory.mktemp("hf"))


def test_batches_are_a_pure_function_of_seed_and_step(source):
    assert isinstance(source, TokenSource)
    a = source.batch_for_step(5, 8)
    assert a.dtype == torch.long and a.shape == (8, 16)
    assert a.numpy().tobytes() == source.batch_for_step(5, 8).numpy().tobytes()
    fresh = CorpusSource(source.train, source.held, source.tokenizer, seed=1)  # no state carried over
    assert torch.equal(fresh.batch_for_step(5, 8), a)
    assert not torch.equal(source.batch_for_step(6, 8), a)
    assert not torch.equal(CorpusSource(source.train, source.held, source.tokenizer, seed=2).batch_for_step(5, 8), a)
    # one epoch visits every context once
    n = len(source.train)
    epoch = torch.cat([source.batch_for_step(s, 1) for s in range(n)])
    assert sorted(map(bytes, epoch.numpy().astype(np.int32))) == sorted(map(bytes, source.train))


def test_fixed_sets_decode_and_round_trip(source, tmp_path):
    test, sgld = source.dataset(10, "test"), source.dataset(10, "sgld")
    assert torch.equal(test, source.dataset(10, "test")) and not torch.equal(test, sgld)
    assert torch.all(test[:, 0] == source.bos_id)
    with pytest.raises(ValueError):
        source.dataset(10_000, "test")
    with pytest.raises(KeyError):
        source.dataset(1, "nope")
    labels = source.decode(test[0])
    assert labels[0] == "<|bos|>" and "".join(labels) == source.decode_text(test[0])
    assert source.vocab_size == 300 and source.n_ctx == 16
    back = CorpusSource.load(source.save(tmp_path / "data"))
    assert torch.equal(back.batch_for_step(3, 4), source.batch_for_step(3, 4))
    assert torch.equal(back.dataset(10, "sgld"), sgld)


def test_a_corpus_run_into_a_url_is_refused_in_one_line_before_anything_is_written(files, capsys):
    from devarray.cli import main

    url = "memory://runs/corpus-run.zarr"
    status = main(["train", "lm", "--preset", "tiny", "--corpus", str(files[0] / "c.txt"), "--out", url])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert "keeps its tokenised corpus in a local folder" in err and "train it to a local path" in err
    import fsspec

    assert not fsspec.filesystem("memory").exists("/runs")
