"""Our LLC estimate against devinterp's, same settings, on a briefly trained regression transformer
(``--setting lr``, the default) or attention-only language model (``--setting lm``).

devinterp is not a dependency. Install it privately, without touching torch:

    pip install --no-deps --target /tmp/devinterp devinterp
    python benchmarks/compare_devinterp.py [--devinterp /tmp/devinterp] [--train-steps 1000]
    python benchmarks/compare_devinterp.py --setting lm [--train-steps 300]

``--setting lm`` trains the language setting's quick preset for ``--train-steps`` steps into a
temporary store, loads its last checkpoint, and runs both samplers with the setting's own loss
(per-token cross entropy averaged over positions, eq. 1), its fixed SGLD dataset and its quick LLC
preset (C, m, T, burn-in, ε, nβ = m / log m, γ); ``--chains``/``--draws`` override the preset.

devinterp 2.0.1's language entry point, ``devinterp.slt.llc.llc`` (→ ``sampling.sample``), imports
``transformers`` at module level and takes a Hugging Face dataset of ``input_ids``. For
``--setting lm`` the script runs it as a researcher would — the same checkpoint, SGLD tokens
(as a ``datasets.Dataset``), ε, nβ, γ, C, T, burn-in and batch size, a per-token loss of the same
model, its own init loss (32 batches per chain) and zarr output — and times it all-in. Both
settings also compare against devinterp's bare SGLD update, ``devinterp.optim.SGMCMC.sgld``,
driven the way ``devinterp.slt.sampler.sample_single_chain`` drives it (one deep-copied model per
chain, a shuffled DataLoader, the minibatch loss recorded before each ``optimizer.step()``, LLC =
nβ (mean loss − init loss) as ``compute_llc``, the init loss over the whole dataset as ours): the
least work devinterp's update can be driven with. The samplers use different random streams, so
the estimates agree up to sampling noise: the script prints each difference in units of its
standard error, and the speed ratios (time per chain-step, init loss included, best of two
rounds run in opposite orders).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from devarray.models.regression import RegressionTransformer
from devarray.slt import estimate_llc
from devarray.slt.llc import init_loss
from devarray.tasks.regression import RegressionTask, mse_loss


def train(steps: int) -> RegressionTransformer:
    torch.manual_seed(0)
    model = RegressionTransformer()
    task = RegressionTask(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        b = task.batch_for_step(step, 256)
        opt.zero_grad()
        mse_loss(model, b.x, b.y).backward()
        opt.step()
    return model


def devinterp_llc(
    model,
    data,
    *,
    epsilon,
    nbeta,
    localization,
    batch_size,
    num_chains,
    num_draws,
    seed,
    loss_fn=mse_loss,
    num_burnin_steps=0,
):
    """devinterp's SGLD (SGMCMC.sgld) in devinterp's per-chain loop; returns per-chain LLCs.

    Each chain takes ``num_burnin_steps + num_draws`` steps and keeps the last ``num_draws``
    losses, as ``sample_single_chain`` does."""
    from devinterp.optim import SGMCMC

    dataset = torch.utils.data.TensorDataset(*data)
    init = init_loss(model, loss_fn, data)
    per_chain = []
    for chain in range(num_chains):
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed + chain),
        )
        noise = torch.Generator().manual_seed(10_000 + seed + chain)
        m = copy.deepcopy(model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = SGMCMC.sgld(m.parameters(), lr=epsilon, nbeta=nbeta, localization=localization)
        losses, feed = [], iter(())
        while len(losses) < num_burnin_steps + num_draws:
            try:
                batch = next(feed)
            except StopIteration:
                feed = iter(loader)
                continue
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(m, *batch)
            loss.backward()
            losses.append(float(loss.detach()))
            opt.step(noise_generator=noise)
        per_chain.append(nbeta * (np.mean(losses[num_burnin_steps:]) - init))
    return np.array(per_chain)


class _Module(torch.nn.Module):
    """The model behind a plain ``forward(ids) -> logits``: devinterp takes any module with a ``cfg``
    holding ``n_heads`` for a TransformerLens model (``model.to(device, print_details=False)``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(ids)


def per_token_loss(model, ids):
    """(batch, seq − 1) next-token cross entropy, the shape devinterp's ``loss_fn`` returns."""
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")


def devinterp_entry_llc(
    model,
    data,
    *,
    epsilon,
    nbeta,
    localization,
    batch_size,
    num_chains,
    num_draws,
    seed,
    num_burnin_steps=0,
    loss_fn=per_token_loss,
    **_,
):
    """devinterp 2.0.1's language entry point, ``devinterp.slt.llc.llc``, on the given model, tokens
    and settings (its default init loss: 32 batches per chain); returns per-chain LLCs.

    Its ``llc_per_chain`` averages every step's loss, burn-in included; the LLCs returned here are
    nβ (mean loss after burn-in − init loss) from its own loss trace, the estimate both others give."""
    from datasets import Dataset
    from devinterp.slt.llc import llc

    ds = Dataset.from_dict({"input_ids": data[0].numpy()}).with_format("torch")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = llc(
            model,
            ds,
            {},
            lr=epsilon,
            n_beta=nbeta,
            localization=localization,
            batch_size=batch_size,
            num_chains=num_chains,
            num_draws=num_draws,
            num_burnin_steps=num_burnin_steps,
            init_seed=seed,
            device="cpu",
            loss_fn=loss_fn,
            output_path=Path(tmp) / "samples.zarr",
        )
        trace = out["loss_trace"].values[:, num_burnin_steps:]
        return nbeta * (trace.mean(axis=1) - float(out["init_loss"]))


def lm_case(args, path: Path):
    """The language setting's quick preset trained ``--train-steps`` steps into ``path``; its last
    checkpoint, SGLD dataset, loss and quick LLC preset (C, T, burn-in optionally overridden)."""
    from devarray.checkpoints import load_model
    from devarray.settings import setting_for
    from devarray.store import RunStore
    from devarray.train import make_config
    from devarray.train import train as train_run

    args.train_steps = args.train_steps or 300
    t = time.perf_counter()
    train_run(path, make_config("lm", "quick", 0, num_steps=args.train_steps), progress=False)
    store = RunStore.open(path, mode="r")
    setting = setting_for(store.config)
    step = int(store.done_steps("params")[-1])
    model = load_model(store, step)
    preset = setting.llc_presets_for(store.config)["quick"]
    s = preset.settings()
    data = setting.sgld_dataset(store.config, preset.dataset_size)
    kw = dict(
        epsilon=s.epsilon,
        nbeta=s.nbeta,
        localization=s.localization,
        batch_size=s.batch_size,
        num_chains=args.chains or s.num_chains,
        num_draws=args.draws or s.num_draws,
        num_burnin_steps=s.num_burnin_steps,
    )
    n_params = sum(p.numel() for p in model.parameters())
    label = (
        f"lm quick preset after {args.train_steps} AdamW steps (step {step}, {n_params:,} parameters, "
        f"trained in {time.perf_counter() - t:.0f} s)"
    )
    return model, data, setting.loss, kw, label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devinterp", default="/tmp/devinterp", help="where devinterp was pip-installed with --target")
    ap.add_argument("--setting", default="lr", choices=["lr", "lm"])
    ap.add_argument("--train-steps", type=int, help="default 1000 (lr), 300 (lm)")
    ap.add_argument("--chains", type=int, help="default 8 (lr), the LLC preset's (lm)")
    ap.add_argument("--draws", type=int, help="default 300 (lr), the LLC preset's (lm)")
    ap.add_argument("--batch-size", type=int, default=256, help="lr only (lm: the preset's)")
    ap.add_argument("--epsilon", type=float, default=1e-3, help="lr only (lm: the preset's)")
    ap.add_argument("--gamma-tilde", type=float, default=0.03, help="lr only (lm: the preset's)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, args.devinterp)
    try:
        import devinterp.optim  # noqa: F401  (torch only)
    except ImportError as e:
        print(f"devinterp cannot be imported from {args.devinterp} ({e}); skipping the comparison")
        return
    try:
        import devinterp.slt.llc  # noqa: F401

        entry = True
    except ImportError as e:
        entry = False
        print(f"devinterp.slt.llc cannot be imported without its dependencies ({e}); comparing its optimizer only")

    if args.setting == "lm":
        tmp = tempfile.TemporaryDirectory()
        model, data, loss_fn, kw, label = lm_case(args, Path(tmp.name) / "lm-quick.zarr")
    else:
        args.train_steps = args.train_steps or 1000
        args.chains, args.draws = args.chains or 8, args.draws or 300
        model = train(args.train_steps)
        batch = RegressionTask(seed=0).dataset(2**14, "sgld")
        data = (batch.x, batch.y)
        loss_fn = mse_loss
        m = args.batch_size
        nbeta = m / math.log(m)
        gamma = 2 * args.gamma_tilde / args.epsilon
        kw = dict(
            epsilon=args.epsilon,
            nbeta=nbeta,
            localization=gamma,
            batch_size=m,
            num_chains=args.chains,
            num_draws=args.draws,
        )
        label = f"regression transformer after {args.train_steps} Adam steps"
    burnin = kw.get("num_burnin_steps", 0)  # both samplers take the burn-in steps: they are timed

    def timed(fn, draws):
        t = time.perf_counter()
        out = fn(model, data, seed=0, **kw | dict(num_draws=draws))
        return out, (time.perf_counter() - t) / (kw["num_chains"] * (burnin + draws))

    def ours_fn(model, data, **k):
        return estimate_llc(model, loss_fn, data, warn=False, **k)

    theirs = {"devinterp sgld": lambda model, data, **k: devinterp_llc(model, data, loss_fn=loss_fn, **k)}
    if entry and args.setting == "lm":
        from devarray.models import to_hooked_transformer

        # the same module (its own attention), and its TransformerLens export, devinterp's usual model
        theirs["devinterp llc()"] = lambda model, data, **k: devinterp_entry_llc(_Module(model), data, **k)
        hooked = to_hooked_transformer(model)
        theirs["devinterp llc() TL"] = lambda model, data, **k: devinterp_entry_llc(hooked, data, loss_fn=None, **k)

    ours_fn(model, data, **kw | dict(num_draws=2))  # first-call set-up
    draws = kw["num_draws"]
    ours, t_ours = timed(ours_fn, draws)
    results, times = {}, {}
    for name, fn in theirs.items():
        results[name], times[name] = timed(fn, draws)
    # a second, shorter round in the opposite order; each sampler keeps its best time per chain-step
    for name, fn in reversed(theirs.items()):
        times[name] = min(times[name], timed(fn, max(draws // 3, 1))[1])
    t_ours = min(t_ours, timed(ours_fn, max(draws // 3, 1))[1])

    a = ours["llc_per_chain"].values
    eps, nbeta, gamma = kw["epsilon"], kw["nbeta"], kw["localization"]
    print(f"{label}, init loss {float(ours['init_loss']):.4f}, {torch.get_num_threads()} threads")
    print(
        f"settings: C={kw['num_chains']}, T={draws} (+{burnin} burn-in), m={kw['batch_size']}, n={len(data[0])}, "
        f"ε={eps}, nβ={nbeta:.2f}, γ={gamma:.1f} (β̃={eps * nbeta / 2:.4f}, γ̃={eps * gamma / 2:.4f})"
    )
    print(f"{'':16} {'LLC mean':>9} {'std':>7} {'ms/chain-step':>14}")
    print(f"{'devarray':16} {a.mean():9.2f} {a.std():7.2f} {t_ours * 1e3:14.1f}   ({ours.attrs['method']} path)")
    for name, b in results.items():
        print(f"{name:16} {b.mean():9.2f} {b.std():7.2f} {times[name] * 1e3:14.1f}")
    for name, b in results.items():
        se = math.hypot(a.std(ddof=1) / math.sqrt(len(a)), b.std(ddof=1) / math.sqrt(len(b)))
        print(
            f"against {name}: difference {a.mean() - b.mean():+.2f} = {(a.mean() - b.mean()) / se:+.1f} "
            f"standard errors; speed devarray/{name.split()[0]} = {times[name] / t_ours:.2f}x"
        )


if __name__ == "__main__":
    main()
