"""The ``devarray`` command: the one front door to training, pipelines, figures and the demo.

User mistakes (bad arguments, missing or mismatched stores) end in one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .store import RunStore, StoreError


def _cmd_train(args) -> None:
    from .train import TrainConfig, format_summary, train

    if args.task != "lr":
        raise StoreError(f"unknown task {args.task!r}; available: lr (in-context linear regression)")
    config = TrainConfig.from_preset(args.preset, args.seed, num_steps=args.steps, lr=args.lr,
                                     batch_size=args.batch_size, num_tasks=args.num_tasks)
    out = args.out or f"stores/lr-{args.preset}-s{args.seed}.zarr"
    summary = train(out, config, overwrite=args.overwrite, progress=not args.quiet)
    print(format_summary(summary))


def _cmd_hessian(args) -> None:
    from pipelines import hessian

    if args.preset not in hessian.PRESETS:
        raise StoreError(f"unknown Hessian preset {args.preset!r}; choose one of {', '.join(hessian.PRESETS)}")
    settings = dict(hessian.PRESETS[args.preset])
    settings.update({k: getattr(args, k) for k in ("batch_size", "num_probes", "top_k") if getattr(args, k)})
    for path in args.stores:
        hessian.run(path, **settings, seed=args.seed, steps=_steps(args.steps), overwrite=args.overwrite,
                    workers=args.workers, scheduler=args.scheduler, threads=args.threads, progress=not args.quiet)
        ds = hessian.as_dataset(path)
        print(f"{path}: Hessian trace {float(ds.trace.min()):.3g}…{float(ds.trace.max()):.3g}, "
              f"top eigenvalue {float(ds.top_eigenvalues.isel(eig=0).min()):.3g}…"
              f"{float(ds.top_eigenvalues.isel(eig=0).max()):.3g} over {ds.sizes['step']} checkpoints")


def _cmd_stages(args) -> None:
    from pipelines import stages

    for path in args.stores:
        options = {"tolerance": args.tolerance} if args.tolerance is not None else {}
        if args.wrt:
            options["wrt"] = args.wrt
        stages.run(path, args.variable, **options)
        print(f"{path}: stages of {args.variable}")
        print(stages.table(path))


def _cmd_demo(args) -> None:
    from pipelines import hessian, llc, observe, stages

    from .slt.presets import PRESETS as LLC_PRESETS
    from .train import TrainConfig, format_summary, train

    path = Path(args.out_dir) / f"lr-{args.preset}-s{args.seed}.zarr"
    compute = dict(workers=args.workers, progress=not args.quiet)
    print(f"[1/5] training the regression transformer ({args.preset} preset) into {path}")
    print(format_summary(train(path, TrainConfig.from_preset(args.preset, args.seed), progress=not args.quiet)))
    preset = LLC_PRESETS["quick"]
    print(f"[2/5] LLC at every checkpoint ({preset.num_chains} chains x "
          f"{preset.num_burnin_steps + preset.num_draws} SGLD steps each)")
    results = llc.run(path, preset.settings(), dataset_size=preset.dataset_size, **compute)
    warning = llc.flagged(results)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print("[3/5] Hessian trace and top eigenvalues at every checkpoint")
    hessian.run(path, **hessian.PRESETS["quick"], **compute)
    print("[4/5] observables (ICL scores, OOD, attention, layer-norm collapse, ...)")
    observe.run(path, **compute)
    print("[5/5] stages from the LLC curve, and the figure")
    store = RunStore.open(path)
    n_llc = len(store.done_steps("llc"))
    if not store.has_group("stages") or store.dataset("stages").sizes["step"] != n_llc:
        stages.run(path)
    figure = path.with_suffix(".png")
    if not figure.exists() or figure.stat().st_mtime < (path / "stages" / "zarr.json").stat().st_mtime:
        _figure([str(path)], figure)
    print()
    if args.verbose:
        print(llc.summary_table(path))
    print(f"stages of {path} (LLC plateaus, appendix B.1):")
    print(stages.table(path))
    print(stages.lr1_lr2_report(path))
    print(f"figure: {figure}")
    print(f"explore: panel serve apps/stages.py --args {path}")


def _done(ds):
    return ds.isel(step=ds.done.values.astype(bool))


def figure_inputs(path) -> tuple:
    """(curves over step, stages Dataset or None, GP fits by variable) of one store."""
    import xarray as xr

    from pipelines.stages import CURVE_VARS

    store = RunStore.open(path, mode="r")
    parts = [_done(store.dataset("eval"))[["test_loss", "weight_norm"]]]
    if store.has_group("llc") and len(store.done_steps("llc")):
        parts.append(_done(store.dataset("llc"))[["llc_mean", "llc_std"]])
    ds = xr.merge(parts, join="outer").load()
    if not store.has_group("stages"):
        return ds, None, {}
    st = store.dataset("stages").load()
    fits = {}
    for name, prefix in (("llc_mean", "llc"), ("test_loss", "test_loss"), ("weight_norm", "weight_norm")):
        cols = [f"{prefix}_{v}" for v in CURVE_VARS]
        if all(c in st for c in cols):
            fits[name] = st[cols].rename({c: v for c, v in zip(cols, CURVE_VARS)}).assign_attrs(variable=name)
    stages = st.drop_vars([v for v in st.data_vars if v.split("_")[0] in ("test", "weight")])
    stages = stages.rename({f"llc_{v}": v for v in CURVE_VARS if f"llc_{v}" in stages})
    return ds, stages, fits


def _figure(paths: list[str], out) -> None:
    """Figure 1/B.2 of one run (B.3 with several: the runs overlaid), rendered to PNG."""
    import xarray as xr

    from . import plots

    inputs = [figure_inputs(p) for p in paths]
    if len(inputs) == 1:
        ds, stages, fits = inputs[0]
        fig = plots.run_figure(ds, stages, fits=fits)
    else:
        names = [Path(p).name.removesuffix(".zarr") for p in paths]
        ds = xr.concat([i[0] for i in inputs], dim="run", join="outer").assign_coords(run=names)
        st = [i[1] for i in inputs]
        stages = xr.concat(st, dim="run", join="outer").assign_coords(run=names) if all(s is not None for s in st) else None
        fig = plots.run_figure(ds, stages)
    plots.save_png(fig, out)


def _cmd_figure(args) -> None:
    _figure(args.stores, args.output)
    print(f"figure written to {args.output}")


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
                          compile=args.compile, overwrite=args.overwrite, workers=args.workers,
                          scheduler=args.scheduler, threads=args.threads, progress=not args.quiet)
        print(llc.summary_table(path))
        warning = llc.flagged(results)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise StoreError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def _cmd_calibrate(args) -> None:
    from pipelines.llc import sgld_dataset

    from .checkpoints import load_model
    from .slt.calibration import calibrate
    from .slt.presets import PRESETS
    from .store import RunStore
    from .tasks.regression import mse_loss

    if args.preset not in PRESETS:
        raise StoreError(f"unknown LLC preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[args.preset]
    store = RunStore.open(args.store, mode="r")
    if args.step is None:
        args.step = int(store.done_steps("params")[-1])
    model = load_model(store, args.step)
    model.fused_attention = True  # as the LLC pipeline samples it
    grid = calibrate(
        model, mse_loss, sgld_dataset(store.config, args.dataset_size or preset.dataset_size),
        epsilon=_floats(args.epsilon, "--epsilon"),
        beta_tilde=_floats(args.beta_tilde, "--beta-tilde") if args.beta_tilde else None,
        gamma_tilde=_floats(args.gamma_tilde, "--gamma-tilde"),
        batch_size=args.batch_size or preset.batch_size, num_chains=args.num_chains or preset.num_chains,
        num_draws=args.num_draws or preset.num_draws,
        num_burnin_steps=preset.num_burnin_steps if args.num_burnin_steps is None else args.num_burnin_steps,
        seed=args.seed, label=f"step {args.step}", progress=not args.quiet)
    print(calibration_table(grid, args.step))
    if args.out:
        grid.to_zarr(args.out, mode="w" if args.overwrite else "w-", zarr_format=3)
        print(f"calibration grid written to {args.out}")


def calibration_table(grid, step: int) -> str:
    """One row per grid point: settings, LLC, flagged chains; then the A.4.3 recommendation."""
    b_name, g_name = grid.acceptable.dims[1], grid.acceptable.dims[2]
    lines = [f"calibration at step {step} ({grid.attrs['num_chains']} chains x {grid.attrs['num_steps']} steps, "
             f"m={grid.attrs['batch_size']})",
             f"{'epsilon':>9} {'beta~':>8} {'nbeta':>8} {'gamma~':>8} {'llc':>9} {'± std':>7} "
             f"{'diverged':>8} {'not conv':>8} {'escaped':>8}  ok"]
    for e in grid.epsilon.values:
        for b in grid[b_name].values:
            for g in grid[g_name].values:
                p = grid.sel(epsilon=e, **{b_name: b, g_name: g})
                lines.append(f"{e:>9.2g} {float(p.beta_tilde):>8.3g} {float(p.nbeta):>8.3g} {float(p.gamma_tilde):>8.3g} "
                             f"{float(p.llc_mean):>9.2f} {float(p.llc_std):>7.2f} {int(p.diverged.sum()):>8d} "
                             f"{int(p.not_converged.sum()):>8d} {int(p.escaped.sum()):>8d}  "
                             f"{'yes' if bool(p.acceptable) else 'no'}")
    a = grid.attrs
    if np.isfinite(a["recommended_epsilon"]):
        lines.append(f"recommended (A.4.3): epsilon={a['recommended_epsilon']:g} beta~={a['recommended_beta_tilde']:.3g} "
                     f"(nbeta={a['recommended_nbeta']:.3g}) gamma~={a['recommended_gamma_tilde']:.3g}")
    else:
        lines.append("no acceptable grid point: widen the grid")
    return "\n".join(lines)


def _cmd_observe(args) -> None:
    from pipelines import observe

    # `devarray observe STORE... [NAME...]`: paths (existing, or ending in .zarr) are stores
    stores = [t for t in args.targets if t.endswith(".zarr") or Path(t).exists()]
    names = [t for t in args.targets if t not in stores] + (args.names or [])
    if not stores:
        raise StoreError(f"no run store among {' '.join(args.targets)}; give a store path first, e.g. "
                         "devarray observe stores/lr-quick-s0.zarr icl_scores")
    for path in stores:
        results = observe.run(path, names or None, probe_seed=args.probe_seed, modules=args.module,
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
    ll.add_argument("--compile", action="store_true",
                    help="torch.compile the gradient: faster long chains (e.g. --preset paper), ~15 s to compile per checkpoint")
    _add_compute_options(ll)
    ll.set_defaults(func=_cmd_llc)

    ca = sub.add_parser("calibrate", help="sweep SGLD settings at one checkpoint (A.4.3) and recommend one")
    ca.add_argument("store")
    ca.add_argument("--step", type=int, help="checkpoint (default: the last)")
    ca.add_argument("--preset", default="quick", help="LLC preset for the other settings")
    ca.add_argument("--epsilon", default="0.0003,0.001,0.003", help="comma-separated step sizes")
    ca.add_argument("--beta-tilde", help="comma-separated β̃ (default: nβ = m/log m)")
    ca.add_argument("--gamma-tilde", default="0.003,0.01,0.03", help="comma-separated γ̃")
    ca.add_argument("--chains", dest="num_chains", type=int)
    ca.add_argument("--draws", dest="num_draws", type=int)
    ca.add_argument("--burnin", dest="num_burnin_steps", type=int)
    ca.add_argument("--batch-size", type=int)
    ca.add_argument("--dataset-size", type=int)
    ca.add_argument("--seed", type=int, default=0)
    ca.add_argument("--out", help="also write the whole grid (chains, draws, diagnostics) to this zarr store")
    ca.add_argument("--overwrite", action="store_true")
    ca.add_argument("--quiet", action="store_true")
    ca.set_defaults(func=_cmd_calibrate)

    ob = sub.add_parser("observe", help="compute registered observables at every checkpoint")
    ob.add_argument("targets", nargs="+", metavar="STORE_OR_NAME",
                    help="run stores, then observables to compute (default: all registered)")
    ob.add_argument("--name", dest="names", action="append", help="observable to compute (repeatable)")
    ob.add_argument("--module", action="append", default=[], help="Python file or module that registers observables")
    ob.add_argument("--probe-seed", type=int, default=0)
    _add_compute_options(ob)
    ob.set_defaults(func=_cmd_observe)

    he = sub.add_parser("hessian", help="Hessian trace and top eigenvalues at every checkpoint (appendix B.5)")
    he.add_argument("stores", nargs="+")
    he.add_argument("--preset", default="quick", help="quick | paper (m=1,024, 100 probes, 64 Lanczos steps)")
    he.add_argument("--batch-size", type=int, help="size m of the fixed batch")
    he.add_argument("--num-probes", type=int, help="Hutchinson probes")
    he.add_argument("--top-k", type=int, help="number of top eigenvalues")
    he.add_argument("--seed", type=int, default=0)
    _add_compute_options(he)
    he.set_defaults(func=_cmd_hessian)

    st = sub.add_parser("stages", help="find stage boundaries on the LLC curve (writes the stages group)")
    st.add_argument("stores", nargs="+")
    st.add_argument("--variable", default="llc/llc_mean", help="GROUP/VARIABLE over step to divide (default llc/llc_mean)")
    st.add_argument("--tolerance", type=float, help="plateau tolerance as a fraction of the largest |slope| (0.1)")
    st.add_argument("--wrt", choices=["log_step", "step"], help="differentiate in log step (default) or step")
    st.set_defaults(func=_cmd_stages)

    fi = sub.add_parser("figure", help="the paper's figure 1/B.2 for a run (several runs: overlaid, B.3)")
    fi.add_argument("stores", nargs="+")
    fi.add_argument("-o", "--output", default="figure.png", help="PNG file to write")
    fi.set_defaults(func=_cmd_figure)

    de = sub.add_parser("demo", help="the main job: train (quick) -> LLC -> Hessian -> observables -> stages -> figure")
    de.add_argument("--out-dir", default="stores")
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--preset", default="quick", help="training preset (quick; tiny for a smoke run in seconds)")
    de.add_argument("--workers", type=int, default=0, help="LocalCluster processes for the pipelines (default in-process)")
    de.add_argument("--verbose", action="store_true", help="also print the LLC of every checkpoint")
    de.add_argument("--quiet", action="store_true", help="no progress bars")
    de.set_defaults(func=_cmd_demo)

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
