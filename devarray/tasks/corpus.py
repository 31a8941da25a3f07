"""Real corpora and tokenizers for the language setting (paper appendices F.1.2, F.1.3, A.3.1).

The paper trains on the first 10 million lines of the DSIR-filtered Pile (F.1.3; on the hub as
``timaeus/dsir-pile-10m``, text column ``contents``), estimates the LLC on a disjoint set of lines
10m–11m whose first 100k lines are the SGLD validation set (A.3.1; ``georgeyw/dsir-pile-100k`` is
"rows 10m to 10.1m in the DSIR pile"), tests on ``georgeyw/dsir-pile-10k``, and tokenises with a
5,000-token vocabulary (F.1.2). Here:

* :func:`load_corpus` loads a hub name (streamed) or local ``.txt`` / ``.json(l)`` / ``.parquet``
  files with ``datasets.load_dataset``; rows are lines (documents).
* :class:`CorpusSplits` names the train / test / SGLD row ranges and refuses overlapping ones.
* :func:`train_tokenizer` trains a byte-level BPE with BOS and EOS special tokens (ids 0 and 1);
  :func:`tokenizer_hash` identifies a tokenizer for a store; :func:`merges` lists its merges in
  merge order (for the common n-grams of appendix C.1.2).
* :func:`tokenize_contexts` turns documents into fixed-length contexts with a batched
  ``Dataset.map``: each document's tokens are followed by EOS, the documents of a map batch are
  concatenated and cut into runs of n_ctx − 1 tokens, and each run gets a leading BOS, so every
  context has the synthetic language's layout (position 0 is BOS, positions 1..n_ctx−1 are
  predicted). The last, partial run of each map batch is dropped (under n_ctx − 1 tokens per
  ``map_batch_size`` documents), which keeps the map stateless, hence cacheable and parallel.
* :class:`CorpusSource` serves the tokenised contexts behind the :class:`TokenSource` protocol:
  training batches are a pure function of (seed, step) — a seeded permutation per epoch — and
  the fixed sets are the held-out slices.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path

import datasets
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from devarray.seeding import generator
from devarray.tasks.synthetic_language import TokenSource

__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "CorpusSource",
    "CorpusSplits",
    "Slice",
    "TokenSource",
    "load_corpus",
    "load_tokenizer",
    "merges",
    "save_tokenizer",
    "tokenize_contexts",
    "tokenizer_hash",
    "train_tokenizer",
]

BOS_TOKEN, EOS_TOKEN = "<|bos|>", "<|eos|>"
PAPER_TRAIN, PAPER_SGLD, PAPER_TEST = "timaeus/dsir-pile-10m", "georgeyw/dsir-pile-100k", "georgeyw/dsir-pile-10k"
PAPER_TEXT_COLUMN = "contents"
_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


# -- corpora -------------------------------------------------------------------------------------


def _local_files(source) -> list[str] | None:
    files = [source] if isinstance(source, (str, Path)) else list(source)
    if all(Path(f).suffix.lower() in _BUILDERS for f in files) and all(Path(f).exists() for f in files):
        return [str(f) for f in files]
    if len(files) > 1 or Path(files[0]).exists():
        raise ValueError(f"local corpora are .txt, .json, .jsonl or .parquet files that exist, got {source}")
    return None


def load_corpus(
    source: str | Path | Sequence[str | Path],
    *,
    split: str = "train",
    streaming: bool | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """A corpus as rows of documents: local files by extension (a .txt file's column is ``text``), or a
    hub dataset name, streamed by default (the paper's 10m lines need not be downloaded to use a slice)."""
    files = _local_files(source)
    cache_dir = None if cache_dir is None else str(cache_dir)
    if files is None:
        return datasets.load_dataset(
            str(source), split=split, streaming=True if streaming is None else streaming, cache_dir=cache_dir
        )
    builders = {_BUILDERS[Path(f).suffix.lower()] for f in files}
    if len(builders) != 1:
        raise ValueError(f"files of one corpus share a format, got {sorted(builders)}")
    return datasets.load_dataset(
        builders.pop(), data_files=files, split="train", streaming=bool(streaming), cache_dir=cache_dir
    )


@dataclass(frozen=True)
class Slice:
    """Rows [start, stop) of one split of one corpus (``stop=None``: to the end)."""

    source: str
    start: int = 0
    stop: int | None = None
    split: str = "train"

    def __post_init__(self):
        if self.start < 0 or (self.stop is not None and self.stop < self.start):
            raise ValueError(f"a slice needs 0 ≤ start ≤ stop, got [{self.start}, {self.stop})")

    def overlaps(self, other: Slice) -> bool:
        if (self.source, self.split) != (other.source, other.split):
            return False
        inf = float("inf")
        return max(self.start, other.start) < min(self.stop or inf, other.stop or inf)

    def select(self, ds: datasets.Dataset | datasets.IterableDataset):
        if isinstance(ds, datasets.IterableDataset):
            ds = ds.skip(self.start) if self.start else ds
            return ds if self.stop is None else ds.take(self.stop - self.start)
        stop = len(ds) if self.stop is None else min(self.stop, len(ds))
        return ds.select(range(min(self.start, stop), stop))

    def load(self, *, cache_dir=None, streaming: bool | None = None):
        return self.select(load_corpus(self.source, split=self.split, streaming=streaming, cache_dir=cache_dir))


@dataclass(frozen=True)
class CorpusSplits:
    """The train / test / SGLD slices (F.1.3, A.3.1); slices of the same corpus must not overlap."""

    train: Slice
    test: Slice
    sgld: Slice
    text_column: str = PAPER_TEXT_COLUMN

    def __post_init__(self):
        named = self.slices()
        for i, (a, sa) in enumerate(named.items()):
            for b, sb in list(named.items())[i + 1 :]:
                if sa.overlaps(sb):
                    raise ValueError(f"the {a} and {b} slices overlap: {sa} and {sb}")

    def slices(self) -> dict[str, Slice]:
        return {"train": self.train, "test": self.test, "sgld": self.sgld}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def paper(cls) -> CorpusSplits:
        """The paper's data: lines 0–10m for training; the SGLD set is the hub's copy of lines 10m–10.1m."""
        return cls(
            train=Slice(PAPER_TRAIN, 0, 10_000_000),
            test=Slice(PAPER_TEST),
            sgld=Slice(PAPER_SGLD),
            text_column=PAPER_TEXT_COLUMN,
        )

    @classmethod
    def contiguous(cls, source: str, n_train: int, n_sgld: int, n_test: int, text_column: str = "text"):
        """Three consecutive row ranges of one corpus, in the paper's order: train, then SGLD, then test."""
        s = str(source)
        return cls(
            train=Slice(s, 0, n_train),
            sgld=Slice(s, n_train, n_train + n_sgld),
            test=Slice(s, n_train + n_sgld, n_train + n_sgld + n_test),
            text_column=text_column,
        )


# -- tokenizers ----------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int = 5000, *, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens (5,000 in F.1.2) with BOS = 0 and EOS = 1."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: no unknowns
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer from its ``tokenizer.json`` (e.g. the paper's truncated GPT-2 tokenizer)."""
    return Tokenizer.from_file(str(path))


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> Path:
    """Write ``tokenizer.json`` beside a run; returns its path."""
    path = Path(directory) / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def tokenizer_hash(tok: Tokenizer) -> str:
    """sha256 of the tokenizer's JSON, so that a store can record which tokenizer made its data."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def merges(tok: Tokenizer) -> list[tuple[str, str]]:
    """The BPE merges in merge order (the order tokens were created), as pairs of token strings."""
    model = json.loads(tok.to_str())["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"merges are defined for BPE tokenizers, got {model.get('type')}")
    # older tokenizer.json files store a merge as "a b", newer ones as ["a", "b"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def special_ids(tok: Tokenizer, bos: str = BOS_TOKEN, eos: str = EOS_TOKEN) -> tuple[int, int]:
    """(BOS, EOS) ids; a tokenizer with only GPT-2's ``<|endoftext|>`` uses it for both."""
    ids = [tok.token_to_id(t) for t in (bos, eos)]
    if None in ids:
        fallback = tok.token_to_id("<|endoftext|>")
        if fallback is None:
            raise ValueError(f"the tokenizer has neither {bos}/{eos} nor <|endoftext|>")
        ids = [fallback if i is None else i for i in ids]
    return ids[0], ids[1]


# -- contexts ------------------------------------------------------------------------------------


class _Chunker:
    """The batched map of :func:`tokenize_contexts` (a class, so ``datasets`` can hash it for its cache)."""

    def __init__(self, tok: Tokenizer, n_ctx: int, text_column: str, bos: int, eos: int):
        self.tok, self.n_ctx, self.text_column, self.bos, self.eos = tok, n_ctx, text_column, bos, eos

    def __call__(self, batch: dict) -> dict:
        encodings = self.tok.encode_batch([t or "" for t in batch[self.text_column]], add_special_tokens=False)
        eos = (self.eos,)
        ids = np.fromiter(chain.from_iterable(chain(e.ids, eos) for e in encodings), dtype=np.int32)
        run = self.n_ctx - 1
        body = ids[: len(ids) // run * run].reshape(-1, run)
        contexts = np.concatenate([np.full((len(body), 1), self.bos, dtype=np.int32), body], axis=1)
        return {"input_ids": contexts}


def tokenize_contexts(
    ds: datasets.Dataset | datasets.IterableDataset,
    tok: Tokenizer,
    n_ctx: int,
    *,
    text_column: str = "text",
    map_batch_size: int = 1000,
    num_proc: int | None = None,
    cache: bool = True,
):
    """Documents -> rows ``input_ids`` of n_ctx tokens, BOS first (see the module docstring for the layout)."""
    if n_ctx < 2:
        raise ValueError(f"n_ctx must be at least 2, got {n_ctx}")
    bos, eos = special_ids(tok)
    fn = _Chunker(tok, n_ctx, text_column, bos, eos)
    if isinstance(ds, datasets.IterableDataset):
        # a stream's columns may be unknown before it is read: keep only the text, then drop it
        ds = ds.select_columns([text_column])
        return ds.map(fn, batched=True, batch_size=map_batch_size, remove_columns=[text_column])
    return ds.map(
        fn,
        batched=True,
        batch_size=map_batch_size,
        remove_columns=ds.column_names,
        num_proc=num_proc,
        load_from_cache_file=cache,
        features=datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"), length=n_ctx)}),
    )


def contexts_array(tokenized, limit: int | None = None) -> np.ndarray:
    """The contexts as an int32 array (n, n_ctx), at most ``limit`` of them."""
    if isinstance(tokenized, datasets.IterableDataset):
        rows = tokenized if limit is None else tokenized.take(limit)
        arrays = [np.asarray(r["input_ids"], dtype=np.int32) for r in rows]
        return np.stack(arrays) if arrays else np.zeros((0, 0), dtype=np.int32)
    if limit is not None:
        tokenized = tokenized.select(range(min(limit, len(tokenized))))
    return np.asarray(tokenized.with_format("numpy")["input_ids"], dtype=np.int32)


@dataclass
class CorpusSource:
    """Tokenised contexts of a real corpus behind :class:`TokenSource`.

    ``train`` (N, n_ctx) feeds :meth:`batch_for_step`; ``held`` maps stream names ('test', 'sgld')
    to fixed sets. Arrays may be memory-mapped (:meth:`load`), so the paper's 5M contexts need not
    fit in memory.
    """

    train: np.ndarray
    held: dict[str, np.ndarray]
    tokenizer: Tokenizer
    seed: int = 0
    _orders: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.bos_id, self.eos_id = special_ids(self.tokenizer)
        if self.train.ndim != 2 or len(self.train) == 0:
            raise ValueError(f"train contexts must be a non-empty (N, n_ctx) array, got shape {self.train.shape}")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def n_ctx(self) -> int:
        return self.train.shape[1]

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            if len(self._orders) > 2:  # batches move forward; keep the current epoch and its neighbour
                self._orders.pop(min(self._orders))
            self._orders[epoch] = torch.randperm(len(self.train), generator=generator(self.seed, "train", epoch))
        return self._orders[epoch]

    def batch_for_step(self, step: int, batch_size: int) -> torch.Tensor:
        """Contexts step·B … step·B + B − 1 of a seeded shuffle: a pure function of (seed, step), each
        context once per epoch (the paper's single pass, F.1.3), a fresh permutation per epoch."""
        flat = np.arange(step * batch_size, (step + 1) * batch_size)
        epochs, offsets = np.divmod(flat, len(self.train))
        idx = np.concatenate([self._order(int(e))[offsets[epochs == e]].numpy() for e in np.unique(epochs)])
        return torch.from_numpy(np.asarray(self.train[idx], dtype=np.int64))

    def dataset(self, n: int, stream: str = "test") -> torch.Tensor:
        """The first n contexts of a held-out slice."""
        if stream not in self.held:
            raise KeyError(f"no held-out stream {stream!r}; have {sorted(self.held)}")
        data = self.held[stream]
        if n > len(data):
            raise ValueError(f"stream {stream!r} has {len(data)} contexts, {n} asked for")
        return torch.from_numpy(np.asarray(data[:n], dtype=np.int64))

    def decode(self, ids) -> list[str]:
        """One readable string per token (special tokens kept), for axis labels."""
        return [self.tokenizer.decode([int(i)], skip_special_tokens=False) for i in torch.as_tensor(ids).reshape(-1)]

    def decode_text(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in torch.as_tensor(ids).reshape(-1)], skip_special_tokens=False)

    @classmethod
    def build(
        cls,
        splits: CorpusSplits,
        tokenizer: Tokenizer,
        n_ctx: int,
        *,
        seed: int = 0,
        limits: dict[str, int] | None = None,
        cache_dir=None,
        map_batch_size: int = 1000,
        num_proc: int | None = None,
    ) -> CorpusSource:
        """Load, slice and tokenise every split; ``limits`` caps the contexts kept per split."""
        limits = limits or {}
        arrays = {}
        for name, sl in splits.slices().items():
            tokenized = tokenize_contexts(
                sl.load(cache_dir=cache_dir),
                tokenizer,
                n_ctx,
                text_column=splits.text_column,
                map_batch_size=map_batch_size,
                num_proc=num_proc,
            )
            arrays[name] = contexts_array(tokenized, limits.get(name))
        train = arrays.pop("train")
        return cls(train, arrays, tokenizer, seed)

    def save(self, directory: str | Path) -> Path:
        """``train.npy``, one ``<stream>.npy`` per held-out set and ``tokenizer.json``, beside a run."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "train.npy", np.asarray(self.train))
        for name, data in self.held.items():
            np.save(directory / f"{name}.npy", np.asarray(data))
        save_tokenizer(self.tokenizer, directory)
        meta = {"seed": self.seed, "held": sorted(self.held), "tokenizer_sha256": tokenizer_hash(self.tokenizer)}
        (directory / "corpus.json").write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True) -> CorpusSource:
        directory = Path(directory)
        meta = json.loads((directory / "corpus.json").read_text())
        tok = load_tokenizer(directory / "tokenizer.json")
        if tokenizer_hash(tok) != meta["tokenizer_sha256"]:
            raise ValueError(f"{directory}: tokenizer.json does not match the hash recorded with its contexts")
        mode = "r" if mmap else None
        held = {name: np.load(directory / f"{name}.npy", mmap_mode=mode) for name in meta["held"]}
        return cls(np.load(directory / "train.npy", mmap_mode=mode), held, tok, meta["seed"])
