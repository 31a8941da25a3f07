"""The ``devarray`` command: the one front door to training, pipelines, figures and the demo.

User mistakes (bad arguments, missing or mismatched stores) end in one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from .store import StoreError


def _cmd_train(args) -> None:
    from .train import TrainConfig, format_summary, train

    if args.task != "lr":
        raise StoreError(f"unknown task {args.task!r}; available: lr (in-context linear regression)")
    config = TrainConfig.from_preset(args.preset, args.seed, num_steps=args.steps, lr=args.lr,
                                     batch_size=args.batch_size, num_tasks=args.num_tasks)
    out = args.out or f"stores/lr-{args.preset}-s{args.seed}.zarr"
    summary = train(out, config, overwrite=args.overwrite, progress=not args.quiet)
    print(format_summary(summary))


def _cmd_info(args) -> None:
    from .store import RunStore

    for path in args.stores:
        print(RunStore.open(path, mode="r").summary())


def _steps(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise StoreError(f"--steps takes comma-separated integers, got {text!r}") from None


def _llc_settings(args):
    from .slt import sgld_settings
    from .slt.presets import PRESETS

    if args.preset not in PRESETS:
        raise StoreError(f"unknown LLC preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[args.preset]
    given = {k: getattr(args, k) for k in ("num_chains", "num_draws", "num_burnin_steps", "batch_size", "epsilon",
                                           "nbeta", "beta_tilde", "localization", "gamma_tilde")
             if getattr(args, k) is not None}
    base = {k: v for k, v in vars(preset).items() if k != "dataset_size"}
    if {"nbeta", "beta_tilde"} & set(given) or "epsilon" in given:
        base.pop("beta_tilde")  # an override of either temperature knob replaces the preset's
    if {"localization", "gamma_tilde"} & set(given) or "epsilon" in given:
        base.pop("gamma_tilde")
    if "epsilon" in given and not ({"nbeta", "beta_tilde"} & set(given)):
        given["beta_tilde"] = preset.beta_tilde
    if "epsilon" in given and not ({"localization", "gamma_tilde"} & set(given)):
        given["gamma_tilde"] = preset.gamma_tilde
    try:
        settings = sgld_settings(**{**base, **given})
    except ValueError as e:
        raise StoreError(str(e)) from None
    return settings, args.dataset_size or preset.dataset_size


def _cmd_llc(args) -> None:
    from pipelines import llc

    settings, n = _llc_settings(args)
    print(f"LLC: {settings.num_chains} chains x {settings.num_steps} steps ({settings.num_burnin_steps} burn-in), "
          f"eps={settings.epsilon:g} beta~={settings.beta_tilde:g} (nbeta={settings.nbeta:.4g}) "
          f"gamma~={settings.gamma_tilde:g}, m={settings.batch_size}, n={n}")
    for path in args.stores:
        results = llc.run(path, settings, seed=args.seed, dataset_size=n, steps=_steps(args.steps),
                          overwrite=args.overwrite, workers=args.workers, scheduler=args.scheduler,
                          threads=args.threads, progress=not args.quiet)
        print(llc.summary_table(path))
        warning = llc.flagged(results)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)


def _cmd_observe(args) -> None:
    from pipelines import observe

    for path in args.stores:
        results = observe.run(path, args.names or None, probe_seed=args.probe_seed, modules=args.module,
                              steps=_steps(args.steps), overwrite=args.overwrite, workers=args.workers,
                              scheduler=args.scheduler, threads=args.threads, progress=not args.quiet)
        print(f"{path}: computed {sum(len(r['names']) for r in results)} observable-checkpoints")


def _add_compute_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", help="comma-separated checkpoint steps (default: every written checkpoint)")
    p.add_argument("--workers", type=int, default=0, help="run on a LocalCluster of N processes (default: in-process)")
    p.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--threads", type=int, help="torch threads per task (default: all cores in-process, 1 per worker)")
    p.add_argument("--overwrite", action="store_true", help="recompute what was stored with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="devarray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model into a run store")
    t.add_argument("task", choices=None, help="task to train: lr (in-context linear regression)")
    t.add_argument("--preset", default="quick", help="tiny | quick | paper (default quick)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="store path (default stores/lr-<preset>-s<seed>.zarr)")
    t.add_argument("--steps", type=int, help="override the preset's number of training steps")
    t.add_argument("--lr", type=float, help="override the maximum learning rate (0.003)")
    t.add_argument("--batch-size", type=int, help="override the batch size (256)")
    t.add_argument("--num-tasks", type=int, help="finite task set of size M (default: fresh tasks, M = ∞)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing store with another config")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    ll = sub.add_parser("llc", help="estimate the LLC at every checkpoint (writes the llc group)")
    ll.add_argument("stores", nargs="+")
    ll.add_argument("--preset", default="quick", help="LLC sampler preset: quick | paper (A.3.2)")
    ll.add_argument("--chains", dest="num_chains", type=int)
    ll.add_argument("--draws", dest="num_draws", type=int, help="kept draws per chain")
    ll.add_argument("--burnin", dest="num_burnin_steps", type=int)
    ll.add_argument("--batch-size", type=int, help="SGLD minibatch size m")
    ll.add_argument("--dataset-size", type=int, help="size n of the fixed SGLD dataset")
    ll.add_argument("--epsilon", "--lr", dest="epsilon", type=float, help="SGLD step size")
    ll.add_argument("--nbeta", type=float)
    ll.add_argument("--beta-tilde", type=float, help="ε nβ / 2")
    ll.add_argument("--localization", "--gamma", dest="localization", type=float)
    ll.add_argument("--gamma-tilde", type=float, help="ε γ / 2")
    ll.add_argument("--seed", type=int, default=0, help="SGLD seed, the same at every checkpoint (A.4.2)")
    _add_compute_options(ll)
    ll.set_defaults(func=_cmd_llc)

    ob = sub.add_parser("observe", help="compute registered observables at every checkpoint")
    ob.add_argument("stores", nargs="+", help="run stores")
    ob.add_argument("--name", dest="names", action="append", help="observable to compute (repeat; default: all)")
    ob.add_argument("--module", action="append", default=[], help="Python file or module that registers observables")
    ob.add_argument("--probe-seed", type=int, default=0)
    _add_compute_options(ob)
    ob.set_defaults(func=_cmd_observe)

    i = sub.add_parser("info", help="what a store holds and how complete it is")
    i.add_argument("stores", nargs="+")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except StoreError as e:
        print(f"devarray: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("devarray: interrupted; what was written is kept and the same command resumes", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
