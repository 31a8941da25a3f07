"""Cost of every head's refined LLC relative to one full LLC estimate (issue 17).

On the tiny language model (``devarray train lm --preset tiny``: 2 layers of 4 heads, d_model 32,
13,824 parameters; trained here into a temporary store unless ``--store`` names one), at its last
checkpoint, with the quick LLC preset's sampler of the language setting (8 chains, m = 32,
ε = 0.001, γ = 100) cut to ``--draws`` steps (default 20) so it runs in about a minute, n = 1,024.
Times, measured in the same run:

- ``full (loop)``: one ordinary LLC estimate on the per-chain loop (the baseline, ratio 1), and
  ``full (auto)`` on the path ``method="auto"`` picks (batched for this small model);
- ``one head``: one head's refined LLC (the frozen tensors get no weight gradient);
- ``heads stacked (loop)``: all heads' refined LLCs as one stack of heads × chains;
- with ``--batched``, the same stack on the batched (vmap) path (many GB of memory on the LM:
  see BENCHMARKS.md).

Paths run in alternating rounds and each keeps its best round (a shared machine hurts all alike).
The ratio to ``full`` is what the issue asks: far under the number of heads when the stack shares
its work (one batched gradient for all rows, the frozen parameters' weight gradients skipped).

    python benchmarks/refined_llc.py [--store STORE] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from devarray.checkpoints import load_model
from devarray.settings import setting_for
from devarray.slt import estimate_llc
from devarray.store import RunStore
from devarray.train import make_config, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="a language-model run store (default: train the tiny preset here)")
    p.add_argument("--preset", default="tiny", help="training preset of the model when no --store (tiny, quick)")
    p.add_argument("--train-steps", type=int, help="train the preset this many steps instead of its own")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dataset-size", type=int, default=1024)
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--batched", action="store_true", help="also time the stack on the batched path")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    path = args.store
    if not path:
        t = time.perf_counter()
        overrides = {"num_steps": args.train_steps} if args.train_steps else {}
        path = str(Path(tmp.name) / f"lm-{args.preset}-s0.zarr")
        train(path, make_config("lm", args.preset, seed=0, **overrides), progress=False)
        print(f"trained the {args.preset} LM in {time.perf_counter() - t:.1f} s -> {path}")
    store = RunStore.open(path, mode="r")
    setting = setting_for(store.config)
    step = int(store.done_steps("params")[-1])
    model = load_model(store, step)
    model.fused_attention = True
    preset = setting.llc_presets_for(store.config)["quick"]
    settings = dataclasses.replace(preset.settings(), num_draws=args.draws, num_burnin_steps=0)
    data = setting.sgld_dataset(store.config, args.dataset_size)
    vocab = setting.restrictions(model)
    heads = setting.restriction_groups(model)["heads"]
    restricted = [vocab[h] for h in heads]
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"step {step}, {n_params:,} parameters, {len(heads)} heads of {restricted[0].size(model):,}; "
        f"{settings.num_chains} chains x {settings.num_steps} steps, m={settings.batch_size}, "
        f"n={args.dataset_size}, {torch.get_num_threads()} threads"
    )

    def run(restrictions=None, method="auto", stack=None):
        t = time.perf_counter()
        ds = estimate_llc(
            model, setting.loss, data, settings, method=method, warn=False, restrictions=restrictions, stack=stack
        )
        return time.perf_counter() - t, ds

    cases = {
        "full (loop)": lambda: run(method="loop"),
        "full (auto)": lambda: run(),
        "one head (loop)": lambda: run(restricted[:1], "loop"),
        "heads stacked (loop)": lambda: run(restricted, "loop"),
        "heads shared": lambda: run(restricted, stack=setting.restriction_stack),
    }
    if args.batched:
        cases["heads stacked (batched)"] = lambda: run(restricted, "batched")
    best = {k: float("inf") for k in cases}
    methods = {}
    for _ in range(args.rounds):
        for name, case in cases.items():
            seconds, ds = case()
            best[name] = min(best[name], seconds)
            if ds is not None:
                methods[name] = ds.attrs["method"]
    base = best["full (loop)"]
    print(f"{'case':<26} {'seconds':>8} {'x full':>7}  path")
    for name, seconds in best.items():
        print(f"{name:<26} {seconds:>8.2f} {seconds / base:>7.2f}  {methods[name]}")
    print(f"{len(heads)} heads: stacked costs {best['heads stacked (loop)'] / base:.2f}x one full estimate (loop)")
    print(f"{len(heads)} heads: shared costs {best['heads shared'] / base:.2f}x one full estimate (loop)")


if __name__ == "__main__":
    main()
