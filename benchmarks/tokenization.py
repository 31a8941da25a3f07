"""Tokenisation throughput of the corpus path against raw ``Tokenizer.encode_batch``.

    python benchmarks/tokenization.py [--mb 4] [--vocab 5000] [--n-ctx 1024] [--repeats 3]

Writes a generated corpus of about ``--mb`` MB as JSON lines (Zipfian words, so BPE has merges to
learn), trains a BPE tokenizer on it, then times, on the same texts: the baseline
``encode_batch`` over all lines (nothing else), and the corpus path of :mod:`devarray.tasks.corpus`
(``load_dataset`` of the file, the batched ``Dataset.map`` that encodes, appends EOS, chunks and
prepends BOS, and the read back into an array). Printed: tokens/s of each (best of the repeats)
and their ratio; the gap is the cost of Arrow I/O and chunking.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np

from devarray.tasks.corpus import contexts_array, load_corpus, tokenize_contexts, train_tokenizer


def make_corpus(path: Path, megabytes: float, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    freq = 1.0 / np.arange(1, 27)
    words = ["".join(rng.choice(letters, size=int(rng.integers(1, 10)), p=freq / freq.sum())) for _ in range(20_000)]
    zipf = 1.0 / np.arange(1, len(words) + 1)
    words = np.array(words)
    lines, size = [], 0
    while size < megabytes * 1e6:
        # a block of lines per draw: one rng call per line would dominate the benchmark's run time
        drawn = words[rng.choice(len(words), size=100_000, p=zipf / zipf.sum())]
        cuts = np.cumsum(rng.integers(20, 200, size=1000))
        for chunk in np.split(drawn, cuts[cuts < len(drawn)]):
            line = " ".join(chunk)
            lines.append(line)
            size += len(line) + 1
    path.write_text("".join(json.dumps({"contents": t}) + "\n" for t in lines))
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=float, default=4.0)
    p.add_argument("--vocab", type=int, default=5000)
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        lines = make_corpus(path, args.mb)
        t0 = time.perf_counter()
        tok = train_tokenizer(lines, args.vocab)
        train_s = time.perf_counter() - t0
        raw, path_rates, n_tokens = [], [], 0
        for r in range(args.repeats):
            t0 = time.perf_counter()
            n_tokens = sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=False))
            raw.append(n_tokens / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            ds = load_corpus(path, cache_dir=Path(tmp) / f"hf{r}")  # a fresh cache: nothing is reused
            x = contexts_array(tokenize_contexts(ds, tok, args.n_ctx, text_column="contents", cache=False))
            path_rates.append(x.size / (time.perf_counter() - t0))
    print(f"corpus: {len(lines):,} lines, {args.mb:g} MB, {n_tokens:,} tokens")
    print(f"BPE of {args.vocab} tokens trained in {train_s:.1f} s")
    print(f"{'path':<34}{'tokens/s':>14}")
    print(f"{'encode_batch (baseline)':<34}{max(raw):>14,.0f}")
    print(f"{'load + batched map + array':<34}{max(path_rates):>14,.0f}")
    print(f"ratio corpus path / baseline: {max(path_rates) / max(raw):.2f}")


if __name__ == "__main__":
    main()
