"""Cost of every head's refined LLC relative to one full LLC estimate (issue 17).

The language model of ``--preset`` (tiny: 2 layers of 4 heads, 13,824 parameters; quick: 2 layers
of 4 heads, d_model 64, 74,880 parameters; paper: 2 layers of 8 heads, 3,355,016 parameters),
with the LLC quick preset's sampler of the language setting (ε = 0.001, γ = 100, nβ = m/log m)
cut to ``--draws`` steps. tiny and quick are trained here into a temporary store (``--train-steps``
to shorten it) unless ``--store`` names one, and estimated at their last checkpoint; paper is
the model at its initialisation (a chain step costs the same at any weights), with ``--batch``
contexts of 1,024 tokens per step. Times, measured in the same run:

- ``full (loop)``: one ordinary LLC estimate on the per-chain loop (the baseline, ratio 1), and
  ``full (auto)`` on the path ``method="auto"`` picks;
- ``one head (loop)``: one head's refined LLC alone;
- ``heads alone (loop)``: all heads' refined LLCs as one stack of heads × chains, each row its
  own forward and backward pass;
- ``heads shared``: the same on the "shared" path (``method="auto"`` with the setting's stack):
  per chain one call for all heads, the residual stream below a head's layer and the other heads'
  outputs computed once;
- with ``--batched``, the stack on the batched (vmap) path (many GB of memory on the LM).

Paths run in alternating rounds and each keeps its best round (a shared machine hurts all alike).
The ratio to ``full`` is what the issue asks: far under the number of heads.

    python benchmarks/refined_llc.py [--preset tiny|quick|paper] [--store STORE] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from devarray.checkpoints import load_model
from devarray.settings import get, setting_for
from devarray.slt import estimate_llc
from devarray.store import RunStore
from devarray.train import make_config, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=["tiny", "quick", "paper"])
    p.add_argument("--store", help="a language-model run store (default: train --preset here)")
    p.add_argument("--train-steps", type=int, help="train the preset this many steps instead of its own")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dataset-size", type=int, help="SGLD dataset rows (default 1,024; paper 4 batches)")
    p.add_argument("--draws", type=int, help="SGLD steps per chain (default 20; paper 3)")
    p.add_argument("--chains", type=int, help="chains (default the preset's 4; paper 2)")
    p.add_argument("--batch", type=int, help="SGLD batch m (default the preset's 32; paper 4)")
    p.add_argument("--batched", action="store_true", help="also time the stack on the batched path")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    paper = args.preset == "paper" and not args.store
    tmp = tempfile.TemporaryDirectory()
    if paper:
        setting = get("lm")
        config = setting.config("paper").to_dict()
        model, where = setting.init_model(config), "at initialisation"
    else:
        path = args.store
        if not path:
            t = time.perf_counter()
            overrides = {"num_steps": args.train_steps} if args.train_steps else {}
            path = str(Path(tmp.name) / f"lm-{args.preset}-s0.zarr")
            train(path, make_config("lm", args.preset, seed=0, **overrides), progress=False)
            print(f"trained the {args.preset} LM in {time.perf_counter() - t:.1f} s -> {path}")
        store = RunStore.open(path, mode="r")
        setting, config = setting_for(store.config), store.config
        step = int(store.done_steps("params")[-1])
        model, where = load_model(store, step), f"step {step}"
    model.fused_attention = True
    batch = args.batch or (4 if paper else None)
    settings = setting.llc_presets_for(config)["quick"].settings()
    settings = dataclasses.replace(
        settings,
        num_draws=args.draws or (3 if paper else 20),
        num_burnin_steps=0,
        num_chains=args.chains or (2 if paper else settings.num_chains),
        **({"batch_size": batch, "nbeta": batch / torch.log(torch.tensor(batch)).item()} if batch else {}),
    )
    n = args.dataset_size or (4 * settings.batch_size if paper else 1024)
    data = setting.sgld_dataset(config, n)
    vocab = setting.restrictions(model)
    heads = setting.restriction_groups(model)["heads"]
    restricted = [vocab[h] for h in heads]
    print(
        f"{args.preset} LM {where}, {model.n_params:,} parameters, {len(heads)} heads of "
        f"{restricted[0].size(model):,}; {settings.num_chains} chains x {settings.num_steps} steps, "
        f"m={settings.batch_size} contexts of {data[0].shape[1]} tokens, n={n}, {torch.get_num_threads()} threads"
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
        "heads alone (loop)": lambda: run(restricted, "loop"),
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
            methods[name] = ds.attrs["method"]
    base = best["full (loop)"]
    print(f"{'case':<26} {'seconds':>8} {'x full':>7}  path")
    for name, seconds in best.items():
        print(f"{name:<26} {seconds:>8.2f} {seconds / base:>7.2f}  {methods[name]}")
    for name in ("heads alone (loop)", "heads shared"):
        print(f"{len(heads)} heads, {name}: {best[name] / base:.2f}x one full estimate")


if __name__ == "__main__":
    main()
