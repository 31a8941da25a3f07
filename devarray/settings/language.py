"""The language-model setting, ``"lm"`` (paper §3, §6, appendices A.3.1, E, F.1).

Model: the attention-only transformer of F.1.1 (``devarray.models.AttentionOnlyTransformer``),
one or two layers (``--layers``). Training (Table 3): AdamW, lr 0.001, weight decay 0.05, betas
(0.9, 0.999), batch 100, no schedule; per-token cross entropy averaged over positions (eq. 1).

Data: by default the package's seeded synthetic language (``devarray.tasks.synthetic_language``:
bigrams, words, a skip-bigram and repeated spans, so each of the paper's stages has something to
learn, offline); or a real corpus (``--corpus`` a hub dataset name or local text / JSON lines /
parquet files, ``--tokenizer`` a ``tokenizer.json`` or a BPE tokenizer trained on the corpus),
tokenised once into ``<store>.corpus/`` beside the run, whose tokenizer hash is in the config.

Presets:
- ``tiny``: seconds, for tests.
- ``quick``: d_model 64, 4 heads of 16, context 128, vocabulary 256 of the synthetic language,
  the positional embedding initialised with std 1, 4,000 steps of batch 32 with 32 linear and 20
  log-spaced checkpoints (minutes on a 2-core CPU; BENCHMARKS.md). Its language is tuned so that
  the stages follow one another instead of overlapping (``benchmarks/lm_stages.py`` measured the
  variants): one 8-token phrase repeated at 8 % of chain tokens (the package default, 3 % over two
  phrases of 6, formed no induction in 8,000 steps); a flatter unigram prior (Zipf exponent 0.5)
  and 4 equally likely successors per token, so the bigram table has no long tail of rare pairs
  and its learning ends rather than fading into the n-grams (with the default peaked rows the
  LLC kept climbing through LM1's end); and 16 words, so the n-grams are learned as a stage of
  their own before the induction circuit. The test loss reaches the bigram entropy near step
  1,000, the LLC's plateaus end LM1 there and again where the climb into the induction circuit
  begins (~1,600), and induction forms near step 2,800 (the ICL score falls from about 0 to −0.9
  between checkpoints 2,600 and 3,100).
- ``paper``: Table 3 exactly (vocabulary 5,000, context 1,024, d_model 256, 8 heads of 32,
  50,000 steps of batch 100) with checkpoints every 100 steps plus log-spaced early ones.

LLC presets (A.3.1): ``paper`` is C = 20 chains of T = 200 steps (no burn-in, one draw per
step) on batches of m = 100, ε = 0.001 and γ = 100 for two layers (ε = 0.003, γ = 300 for one),
at nβ = m / log m as the text says (β = 1/log m per token). Table 1's β̃ = 0.0000217 does not
match the text's settings (ε nβ / 2 = 0.011); we follow the text. ``quick`` keeps ε and γ and
takes 4 chains of 16 + 32 steps at m = 32: on the quick run the chains' mean LLC trace is flat
after a dozen steps, so longer chains change the curve by little (BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F

from devarray.errors import ConfigError
from devarray.models.attention_only import Attention, AttentionOnlyConfig, AttentionOnlyTransformer
from devarray.observables.language.probes import LanguageProbeData, probe_data
from devarray.schedules import checkpoint_schedule
from devarray.slt.presets import LLCPreset
from devarray.slt.restrictions import ALL, Restriction, everything, from_names, head_masks
from devarray.tasks.synthetic_language import LanguageConfig, SyntheticLanguage, TokenSource

from .base import Setting, register


@dataclass(frozen=True)
class LMSchedule:
    """What a training preset changes besides the model: length, checkpoints, optimiser."""

    num_steps: int
    n_linear: int
    n_log: int
    batch_size: int = 100
    lr: float = 0.001
    weight_decay: float = 0.05
    n_test: int = 512


@dataclass(frozen=True)
class LMPreset:
    schedule: LMSchedule
    model: AttentionOnlyConfig
    language: LanguageConfig


def _model(**kw) -> AttentionOnlyConfig:
    return AttentionOnlyConfig(**kw)


PRESETS: dict[str, LMPreset] = {
    "tiny": LMPreset(
        LMSchedule(num_steps=60, n_linear=6, n_log=8, batch_size=16, n_test=64),
        _model(d_vocab=64, n_ctx=32, d_model=32, n_heads=4, d_head=8, pos_init_std=1.0),
        LanguageConfig(vocab_size=64, n_ctx=32, n_words=8, successors=6, phrase_length=4),
    ),
    "quick": LMPreset(
        LMSchedule(num_steps=4000, n_linear=32, n_log=20, batch_size=32, n_test=256),
        _model(d_vocab=256, n_ctx=128, d_model=64, n_heads=4, d_head=16, pos_init_std=1.0),
        LanguageConfig(
            vocab_size=256,
            n_ctx=128,
            zipf_exponent=0.5,
            successors=4,
            successor_exponent=0.0,
            n_words=16,
            p_copy=0.08,
            n_phrases=1,
            phrase_length=8,
        ),
    ),
    "paper": LMPreset(
        LMSchedule(num_steps=50_000, n_linear=501, n_log=100), _model(), LanguageConfig(vocab_size=5000, n_ctx=1024)
    ),
}

_M = 100  # A.3.1's SGLD batch


def _llc_presets(epsilon: float, gamma: float) -> dict[str, LLCPreset]:
    """A.3.1's sampler at one depth's (ε, γ), with nβ = m / log m for each preset's batch m."""

    def preset(dataset_size: int, m: int, chains: int, draws: int, burnin: int) -> LLCPreset:
        return LLCPreset(
            dataset_size=dataset_size,
            batch_size=m,
            num_chains=chains,
            num_draws=draws,
            num_burnin_steps=burnin,
            epsilon=epsilon,
            beta_tilde=epsilon * m / np.log(m) / 2,
            gamma_tilde=epsilon * gamma / 2,
        )

    return {
        "paper": preset(100_000, _M, 20, 200, 0),
        "quick": preset(4096, 32, 4, 32, 16),
        "tiny": preset(128, 16, 2, 12, 4),  # a smoke run in seconds
    }


LLC_PRESETS = {2: _llc_presets(1e-3, 100), 1: _llc_presets(3e-3, 300)}

HESSIAN_PRESETS = {
    "paper": {"batch_size": 100, "num_probes": 100, "top_k": 5, "num_lanczos": 64},
    "quick": {"batch_size": 32, "num_probes": 8, "top_k": 2, "num_lanczos": 16},
    "tiny": {"batch_size": 16, "num_probes": 4, "top_k": 2, "num_lanczos": 8},
}


@dataclass
class LanguageRun:
    """Everything that determines a language-model run's numbers; stored as JSON in the root attrs."""

    seed: int = 0
    preset: str = "quick"
    schedule: LMSchedule = field(default_factory=lambda: PRESETS["quick"].schedule)
    model: AttentionOnlyConfig = field(default_factory=lambda: PRESETS["quick"].model)
    data: dict = field(default_factory=lambda: {"source": "synthetic", **PRESETS["quick"].language.to_dict()})
    setting: str = "lm"

    @property
    def num_steps(self) -> int:
        return self.schedule.num_steps

    def checkpoints(self) -> np.ndarray:
        s = self.schedule
        return checkpoint_schedule(s.num_steps, s.n_linear, s.n_log)

    def to_dict(self) -> dict:
        return {
            "setting": self.setting,
            "seed": self.seed,
            "preset": self.preset,
            "schedule": asdict(self.schedule),
            "model": self.model.to_dict(),
            "data": self.data,
            "optimizer": {
                "name": "AdamW",
                "betas": [0.9, 0.999],
                "weight_decay": self.schedule.weight_decay,
                "scheduler": None,
            },
        }


@functools.lru_cache(maxsize=4)
def _source(data_json: str, seed: int) -> TokenSource:
    """The run's token source, built once per process (the language's exact tables, a corpus's
    memory-mapped contexts)."""
    data = json.loads(data_json)
    if data["source"] == "synthetic":
        cfg = {k: v for k, v in data.items() if k != "source"}
        return SyntheticLanguage(LanguageConfig(**{**cfg, "seed": seed}))
    from devarray.tasks.corpus import CorpusSource, tokenizer_hash

    if not Path(data["contexts"], "corpus.json").exists():
        raise ConfigError(
            f"the run's tokenised corpus {data['contexts']} is missing; train again with the same "
            "--corpus to rebuild it"
        )
    source = CorpusSource.load(data["contexts"])
    if tokenizer_hash(source.tokenizer) != data["tokenizer_sha256"]:
        raise ConfigError(f"{data['contexts']} holds other tokens than this run was trained on (tokenizer hash)")
    return source


def token_source(config: dict) -> TokenSource:
    return _source(json.dumps(config["data"], sort_keys=True), config["seed"])


# Sub-languages for data-refined LLCs: the run's language with some of its mechanisms switched off
# or up. The structure (bigram kernel, lexicon, skip targets) is drawn from the seed alone, so each
# sub-language shares the run's tables.
SUB_LANGUAGES = {
    "bigram": (
        {"p_word": 0.0, "p_skip": 0.0, "p_copy": 0.0},
        "bigram-only text: the run's bigram chain, no words, skips or repeats",
    ),
    "repeated": (
        {"p_copy": 0.3},
        "repeated-span text: the run's language with a phrase inserted at 30 % of chain tokens",
    ),
}


def sgld_tokens(config: dict, n: int, data: str) -> torch.Tensor:
    """n fixed SGLD contexts of the run's language ("train") or of a sub-language; KeyError for
    a name this run cannot build."""
    if data == "train":
        return fixed(config, n, "sgld")
    if data not in SUB_LANGUAGES or config["data"]["source"] != "synthetic":
        raise KeyError(data)
    cfg = {k: v for k, v in config["data"].items() if k != "source"}
    language = _sub_language(json.dumps({**cfg, **SUB_LANGUAGES[data][0]}, sort_keys=True), config["seed"])
    return language.dataset(n, f"sgld-{data}")


@functools.lru_cache(maxsize=4)
def _sub_language(cfg_json: str, seed: int) -> SyntheticLanguage:
    return SyntheticLanguage(LanguageConfig(**{**json.loads(cfg_json), "seed": seed}))


def restriction_vocabulary(model: AttentionOnlyTransformer) -> dict[str, Restriction]:
    """Restrictions by TransformerLens's names of the parts: embed, pos_embed, layer L, layer L attn,
    head L.H (its slices of W_Q, W_K, W_V and W_O: the head's own weights; the biases are left
    out as in Wang et al.'s per-head restriction, and b_O is shared by all heads), ln_final, unembed."""
    names = [k for k, _ in model.named_parameters()]
    vocab = {
        ALL: everything(model),
        "embed": from_names(model, ["embed.W_E"], "embed"),
        "pos_embed": from_names(model, ["pos_embed.W_pos"], "pos_embed"),
    }
    for i in range(model.cfg.n_layers):
        block = f"blocks.{i}."
        vocab[f"layer {i}"] = from_names(model, [k for k in names if k.startswith(block)], f"layer {i}")
        vocab[f"layer {i} attn"] = from_names(
            model, [k for k in names if k.startswith(block + "attn.")], f"layer {i} attn"
        )
    for i in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            name = f"head {i}.{h}"
            vocab[name] = head_masks(
                model, {f"blocks.{i}.attn.{w}": (0, h) for w in ("W_Q", "W_K", "W_V", "W_O")}, name
            )
    vocab["ln_final"] = from_names(model, ["ln_final.w", "ln_final.b"], "ln_final")
    vocab["unembed"] = from_names(model, ["unembed.W_U", "unembed.b_U"], "unembed")
    return vocab


_HEAD_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O")
# logits of at most this many elements per call of the shared path (float32: 512 MB); more rows
# than fit are taken in chunks, each recomputing the shared prefix
_ROW_ELEMENTS = 2**27


def head_stack(model: AttentionOnlyTransformer, flat, restrictions) -> Callable | None:
    """The "shared" SGLD path for restrictions that are each one attention head (``head L.H``, by
    their masks, whatever their names): ``(w_rows, tokens) -> (grads, losses)`` for R rows of
    ``flat`` on one batch, through :meth:`AttentionOnlyTransformer.head_rows_logits` and eq. (1)'s
    loss; None for any other restriction, or a model whose modules compute something else."""
    if type(model) is not AttentionOnlyTransformer or any(type(b.attn) is not Attention for b in model.blocks):
        return None
    vocab = restriction_vocabulary(model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    known = {(i, h): vocab[f"head {i}.{h}"].masks for i in range(L) for h in range(H)}

    def same(a, b) -> bool:
        return set(a) == set(b) and all(a[k] is not None and torch.equal(a[k], m) for k, m in b.items())

    heads = []
    for r in restrictions:
        hit = [key for key, masks in known.items() if same(r.masks, masks)]
        if not hit:
            return None
        heads.append(hit[0])
    offsets, start = {}, 0
    for name, n in zip(flat.param_names, flat.numels):
        offsets[name], start = start, start + n
    shapes = {w: tuple(getattr(model.blocks[0].attn, w).shape[1:]) for w in _HEAD_WEIGHTS}
    sizes = [math.prod(shapes[w]) for w in _HEAD_WEIGHTS]
    index = torch.stack(
        [
            torch.cat([torch.arange(n) + offsets[f"blocks.{i}.attn.{w}"] + h * n for w, n in zip(_HEAD_WEIGHTS, sizes)])
            for i, h in heads
        ]
    ).to(flat.w0.device)  # (R, the head's coordinates in W_Q, W_K, W_V, W_O order)

    def grad_and_loss(w_rows: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        per_row = targets.numel() * model.cfg.d_vocab
        chunk = max(1, _ROW_ELEMENTS // per_row)
        grads, losses = torch.zeros_like(w_rows), torch.empty(len(w_rows), dtype=w_rows.dtype, device=w_rows.device)
        for lo in range(0, len(w_rows), chunk):
            rows = slice(lo, lo + chunk)
            theta = w_rows[rows].gather(1, index[rows]).detach().requires_grad_()
            parts = theta.split(sizes, dim=1)
            weights = {w: p.view(len(theta), *shapes[w]) for w, p in zip(_HEAD_WEIGHTS, parts)}
            logits = model.head_rows_logits(inputs, heads[rows], weights)
            ce = F.cross_entropy(logits.flatten(0, 2), targets.repeat(len(theta), 1).flatten(), reduction="none")
            loss = ce.view(len(theta), -1).mean(1)  # eq. (1) per row
            (g,) = torch.autograd.grad(loss.sum(), theta)
            grads[rows] = grads[rows].scatter(1, index[rows], g)
            losses[rows] = loss.detach()
        return grads, losses

    return grad_and_loss


def fixed(config: dict, n: int, stream: str) -> torch.Tensor:
    """n fixed contexts of a named stream. The synthetic language draws any stream; a corpus has
    its held-out slices: 'test' (also the probes) and 'sgld' (also the Hessian batch, A.3.1)."""
    source = token_source(config)
    if not isinstance(source, SyntheticLanguage):
        stream = "sgld" if stream in ("sgld", "hessian") else "test"
    return source.dataset(n, stream)


def build_corpus(corpus: str, tokenizer: str | None, vocab_size: int, n_ctx: int, out: Path, seed: int) -> dict:
    """Tokenise a corpus into fixed-length contexts under ``out`` (train 90 %, SGLD 5 %, test 5 %
    of its rows, in the paper's order), training a BPE tokenizer of ``vocab_size`` on the
    training rows when none is given (a byte-level BPE has at least 258 tokens: the model's
    vocabulary follows the tokenizer's size); returns the run's data config."""
    from devarray.tasks.corpus import (
        CorpusSource,
        CorpusSplits,
        load_corpus,
        load_tokenizer,
        tokenizer_hash,
        train_tokenizer,
    )

    rows = load_corpus(corpus, streaming=False)
    column = next((c for c in ("text", "contents") if c in rows.column_names), None)
    if column is None:
        raise ConfigError(
            f"corpus {corpus} has no 'text' or 'contents' column (columns: {rows.column_names})", argument="corpus"
        )
    n = len(rows)
    n_held = max(1, n // 20)
    if n - 2 * n_held < 1:
        raise ConfigError(f"corpus {corpus} has {n} rows, too few for train, SGLD and test slices", argument="corpus")
    splits = CorpusSplits.contiguous(corpus, n - 2 * n_held, n_held, n_held, text_column=column)
    tok = (
        load_tokenizer(tokenizer)
        if tokenizer
        else train_tokenizer(rows.select(range(n - 2 * n_held))[column], vocab_size)
    )
    CorpusSource.build(splits, tok, n_ctx, seed=seed).save(out)
    return {
        "source": "corpus",
        "corpus": str(corpus),
        "tokenizer": tokenizer,
        "contexts": str(out),
        "tokenizer_sha256": tokenizer_hash(tok),
        "text_column": column,
        "vocab_size": tok.get_vocab_size(),
    }


def next_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy of the next token, averaged over positions 1..n−1 and contexts (eq. 1)."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))


class LanguageEvaluator:
    """Per-position test loss on the fixed test contexts (stream 'test'), and the weight norm."""

    def __init__(self, source: TokenSource, n_test: int):
        self.tokens = source.dataset(n_test, "test")
        n_ctx = self.tokens.shape[1]
        self.coords = {"k": np.arange(1, n_ctx)}
        self.attrs = {}
        if isinstance(source, SyntheticLanguage):  # the exact reference levels of LM1 (C.1.1)
            self.attrs = {
                "bigram_entropy": float(source.bigram_entropy(n_ctx)),
                "unigram_entropy": float(source.unigram_entropy(n_ctx)),
            }

    @torch.no_grad()
    def __call__(self, model) -> dict[str, np.ndarray]:
        per_k = torch.zeros(self.tokens.shape[1] - 1, dtype=torch.float64)
        for chunk in self.tokens.split(64):
            logits = model(chunk[:, :-1])
            ce = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")  # (b, n−1)
            per_k += ce.double().sum(0)
        per_k /= len(self.tokens)
        norm = torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters()))
        return {
            "test_loss": per_k.mean().float().numpy(),
            "test_loss_k": per_k.float().numpy(),
            "weight_norm": norm.float().numpy(),
        }


@dataclass(frozen=True, eq=False)
class LanguageProbe:
    """Fixed probe contexts of the language observables (stream 'probe'), and ``data``: the rest of
    their fixed inputs (bigram pairs and table, common n-grams, synthetic attention sequences; see
    :mod:`devarray.observables.language.probes`), None for a bare probe."""

    tokens: torch.Tensor
    seed: int
    data: LanguageProbeData | None = None

    def attrs(self) -> dict:
        return {
            "probe_seed": self.seed,
            "probe_n": int(self.tokens.shape[0]),
            **(self.data.attrs() if self.data is not None else {}),
        }


class LanguageSetting(Setting):
    name = "lm"
    title = "attention-only language model"
    eval_schema = "eval_lm"
    observables = "language"
    training_presets = tuple(PRESETS)
    hessian_presets = HESSIAN_PRESETS
    loss_description = "per-token cross entropy of the next token, averaged over positions (eq. 1)"
    train_options = {
        "num_steps": {"flag": "--steps", "type": int, "help": "override the preset's number of training steps"},
        "lr": {"flag": "--lr", "type": float, "help": "override the learning rate"},
        "batch_size": {"flag": "--batch-size", "type": int, "help": "override the batch size"},
        "n_layers": {"flag": "--layers", "type": int, "help": "attention-only layers, 1 or 2 (default 2)"},
        "corpus": {
            "flag": "--corpus",
            "type": str,
            "help": "hub dataset name or local .txt/.jsonl/.parquet files (default: the synthetic language)",
        },
        "tokenizer": {
            "flag": "--tokenizer",
            "type": str,
            "help": "tokenizer.json for --corpus (default: train a BPE tokenizer of the model's vocabulary)",
        },
    }

    @property
    def llc_presets(self) -> dict:  # the default for two layers; see :meth:`llc_presets_for`
        return LLC_PRESETS[2]

    def llc_presets_for(self, config: dict) -> dict:
        return LLC_PRESETS[config["model"]["n_layers"]]

    def config(self, preset: str = "quick", seed: int = 0, **overrides) -> LanguageRun:
        sched, given = self._overrides(
            PRESETS, preset, seed, overrides, LMSchedule.__dataclass_fields__, ["n_layers", "corpus", "tokenizer"]
        )
        p = PRESETS[preset]
        model = p.model
        if "n_layers" in given:
            if given["n_layers"] not in (1, 2):
                raise ConfigError(
                    f"n_layers must be 1 or 2 (appendix E, F.1), got {given['n_layers']}", argument="n_layers"
                )
            model = replace(model, n_layers=given["n_layers"])
        if "tokenizer" in given and "corpus" not in given:
            raise ConfigError("tokenizer needs a corpus to tokenise; pass corpus too", argument="tokenizer")
        data = (
            {"source": "synthetic", **p.language.to_dict()}
            if "corpus" not in given
            else {"source": "corpus", "corpus": given["corpus"], "tokenizer": given.get("tokenizer")}
        )
        data.pop("seed", None)  # the language's seed is the run's
        return LanguageRun(seed=seed, preset=preset, schedule=replace(p.schedule, **sched), model=model, data=data)

    def prepare(self, config: LanguageRun, store_path, *, local: bool = True) -> LanguageRun:
        """A corpus is tokenised once into ``<store>.corpus/`` (reused when the run resumes)."""
        if config.data["source"] != "corpus" or "contexts" in config.data:
            return config
        if not local:
            raise ConfigError(
                f"a corpus run keeps its tokenised corpus in a local folder beside the store, so {store_path} "
                "cannot hold one; train it to a local path (copy the store to object storage after)"
            )
        out = Path(store_path).with_suffix(".corpus")
        if (out / "corpus.json").exists():
            from devarray.tasks.corpus import CorpusSource, load_corpus, tokenizer_hash

            tok = CorpusSource.load(out).tokenizer
            column = next(c for c in ("text", "contents") if c in load_corpus(config.data["corpus"]).column_names)
            data = {
                **config.data,
                "contexts": str(out),
                "tokenizer_sha256": tokenizer_hash(tok),
                "text_column": column,
                "vocab_size": tok.get_vocab_size(),
            }
        else:
            data = build_corpus(
                config.data["corpus"],
                config.data["tokenizer"],
                config.model.d_vocab,
                config.model.n_ctx,
                out,
                config.seed,
            )
        return replace(config, data=data, model=replace(config.model, d_vocab=data["vocab_size"]))

    def build_model(self, config: dict) -> AttentionOnlyTransformer:
        model = AttentionOnlyTransformer(AttentionOnlyConfig(**config["model"]))
        # SDPA wherever no pattern is asked for and no torch.func transform runs (Hessians, vmap
        # take the explicit form): at the paper's context of 1,024 the explicit scores are large
        model.fused_attention = True
        return model

    def optimizer(self, model: nn.Module, config: dict) -> torch.optim.AdamW:
        s = config["schedule"]
        return torch.optim.AdamW(model.parameters(), lr=s["lr"], betas=(0.9, 0.999), weight_decay=s["weight_decay"])

    def learning_rate(self, step: int, config: dict) -> float:
        return config["schedule"]["lr"]  # Table 3: no schedule

    def train_batch(self, config: dict, step: int) -> tuple[torch.Tensor, ...]:
        return (token_source(config).batch_for_step(step, config["schedule"]["batch_size"]),)

    def loss(self, model: nn.Module, *batch: torch.Tensor) -> torch.Tensor:
        return next_token_loss(model, *batch)

    def evaluator(self, config: dict) -> LanguageEvaluator:
        return LanguageEvaluator(token_source(config), config["schedule"]["n_test"])

    def sgld_dataset(self, config: dict, n: int, data: str = "train") -> tuple[torch.Tensor, ...]:
        return (sgld_tokens(config, n, data),)

    def sgld_data(self, config: dict) -> dict[str, str]:
        subs = {k: d for k, (_, d) in SUB_LANGUAGES.items()} if config["data"]["source"] == "synthetic" else {}
        return super().sgld_data(config) | subs

    def restrictions(self, model: nn.Module) -> dict[str, Restriction]:
        return restriction_vocabulary(model)

    def restriction_stack(self, model: nn.Module, flat, restrictions):
        return head_stack(model, flat, restrictions)

    def restriction_groups(self, model: nn.Module) -> dict[str, list[str]]:
        L, H = model.cfg.n_layers, model.cfg.n_heads
        return {
            "heads": [f"head {i}.{h}" for i in range(L) for h in range(H)],
            "layers": [f"layer {i}" for i in range(L)],
        }

    def hessian_batch(self, config: dict, m: int) -> tuple[torch.Tensor, ...]:
        return (fixed(config, m, "hessian"),)

    def probe(self, config: dict, seed: int = 0, n: int = 256) -> LanguageProbe:
        tokens = fixed(config, n, f"probe-{seed}")
        return LanguageProbe(tokens, seed, probe_data(token_source(config), tokens, seed))

    def probe_context(self, config: dict, seed: int = 0, length: int = 32) -> tuple[torch.Tensor, list[str]]:
        tokens = fixed(config, 1, f"probe-{seed}")[:, :length]
        return tokens, [f"{i}:{t}" for i, t in enumerate(token_source(config).decode(tokens[0]))]

    def stage_report(self, stages: xr.Dataset, evaluation: xr.Dataset) -> str | None:
        return lm_stage_report(lm_stage_check(stages, evaluation))


def icl_score(evaluation: xr.Dataset) -> xr.DataArray:
    """Loss at late positions minus loss at early ones (C.1.3's 500th minus 50th token of 1,024,
    scaled to the context: the mean over the last tenth minus the mean over positions around 5 %)."""
    k = evaluation.k.values
    n = int(k[-1]) + 1
    early = (k >= max(1, round(0.04 * n))) & (k <= max(2, round(0.06 * n)))
    late = k >= round(0.9 * n)
    per_k = evaluation.test_loss_k
    return per_k.isel(k=late).mean("k") - per_k.isel(k=early).mean("k")


def lm_stage_check(stages: xr.Dataset, evaluation: xr.Dataset) -> dict:
    """Do the boundaries fall where the paper's LM stages end? The first where the test loss has
    come down to the bigram entropy (LM1: bigram statistics learned; within a fifth of the way
    from the bigram entropy to the unigram entropy), and a later one within a factor 2 in step of
    where induction forms: the first checkpoint from which the ICL score stays below −0.1 nats
    (late tokens predicted better than early ones; "stays" ignores the positional wobble of the
    first steps). Boundaries before LM1's end where the loss is still within a fifth of the way
    from the unigram entropy end a *unigram stage* (the model predicts token frequencies before
    it reads the current token): the synthetic language's Zipf unigrams make that plateau plain
    on a log-step schedule from step 1; they are reported, not counted as LM1's end. Needs the
    exact entropies of the synthetic language (``eval`` attrs)."""
    out: dict = {"ok": False}
    if "bigram_entropy" not in evaluation.attrs:
        return out
    h2, h1 = float(evaluation.attrs["bigram_entropy"]), float(evaluation.attrs["unigram_entropy"])
    loss = evaluation.test_loss
    icl = icl_score(evaluation)
    above = np.flatnonzero(icl.values >= -0.1)
    formed = icl.step[above[-1] + 1 :] if above.size else icl.step
    out |= {
        "bigram_entropy": h2,
        "unigram_entropy": h1,
        "induction_step": int(formed[0]) if formed.size else None,
        "final_icl_score": float(icl[-1]),
    }
    if not stages.sizes.get("boundary", 0):
        return out
    b = stages.boundary_step.values.astype(int)
    at = loss.sel(step=b, method="nearest").values.astype(float)
    unigram = np.cumprod(np.abs(at - h1) <= 0.2 * (h1 - h2)).astype(bool)  # the leading ones only
    if unigram.any():
        out["unigram_boundary"] = int(b[unigram][-1])
    b, at = b[~unigram], at[~unigram]
    if not b.size:
        return out
    out |= {"boundary_step": int(b[0]), "loss_at_boundary": float(at[0])}
    out["bigram_ok"] = abs(out["loss_at_boundary"] - h2) <= 0.2 * (h1 - h2)
    if out["induction_step"] is not None:
        later = b[1:]
        near = later[(later >= out["induction_step"] / 2) & (later <= 2 * max(out["induction_step"], 1))]
        out["induction_boundary"] = int(near[0]) if near.size else None
    out["ok"] = bool(out["bigram_ok"] and out.get("induction_boundary") is not None)
    return out


def lm_stage_report(c: dict) -> str | None:
    if "bigram_entropy" not in c:
        return None  # a corpus: no exact reference levels to judge the boundaries by
    unigram = (
        f"boundary at step {c['unigram_boundary']} ends a unigram stage (test loss near the unigram entropy "
        f"{c['unigram_entropy']:.3f}); "
        if "unigram_boundary" in c
        else ""
    )
    if "boundary_step" not in c:
        formed = f"at step {c['induction_step']}" if c["induction_step"] is not None else "not (yet)"
        found = "no later" if unigram else "no"
        return unigram + (
            f"{found} stage boundary found on this LLC curve; induction forms {formed} (ICL score < −0.1; "
            f"{c['final_icl_score']:.3f} at the end)"
        )
    first = unigram + (
        f"{'next' if unigram else 'first'} boundary at step {c['boundary_step']}: test loss "
        f"{c['loss_at_boundary']:.3f}, bigram entropy "
        f"{c['bigram_entropy']:.3f} (unigram {c['unigram_entropy']:.3f}) — "
        + ("bigram statistics learned (end of LM1)" if c["bigram_ok"] else "NOT the end of LM1")
    )
    if c["induction_step"] is None:
        return first + f"; no induction yet (ICL score {c['final_icl_score']:.3f} at the end)"
    where = (
        f"a boundary at step {c['induction_boundary']}"
        if c.get("induction_boundary") is not None
        else "no boundary near it"
    )
    return first + f"; induction forms at step {c['induction_step']} (ICL score < −0.1), {where}"


register(LanguageSetting())
