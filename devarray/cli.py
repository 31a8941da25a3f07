"""The ``devarray`` command: the one front door to training, pipelines, figures and the demo.

User mistakes (bad arguments, missing or mismatched stores) end in one line on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import numpy as np

from .errors import ConfigError, DevarrayError, StoreError
from .store import RunStore


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"devarray: error: {self.prog.removeprefix('devarray ')}: {message}\n")


def _number(kind, *, low=None, low_ok=True, high=None, high_ok=True, what=""):
    """An argparse type: a finite number of ``kind`` within the bounds, else a clear message."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad = (
            not math.isfinite(value)
            or (low is not None and (value < low or (value == low and not low_ok)))
            or (high is not None and (value > high or (value == high and not high_ok)))
        )
        if bad:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    parse.bounds = (kind, low, low_ok, high, high_ok)  # what tests generate bad values from
    return parse


POSITIVE_INT = _number(int, low=1, what="a positive integer")
COUNT = _number(int, low=0, what="a non-negative integer")
POSITIVE = _number(float, low=0, low_ok=False, what="a positive finite number")
SEED = _number(int, low=0, what="a non-negative integer seed")


def _positive_list(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
        if not (math.isfinite(v) and v > 0):
            raise argparse.ArgumentTypeError(f"{part} in {text!r} is not a positive finite number")
        values.append(v)
    return values


def _cmd_train(args) -> None:
    from .settings import get
    from .train import format_summary, train

    setting = get(args.setting)
    overrides = {dest: getattr(args, dest) for dest in _setting_options()}
    config = setting.config(args.preset, args.seed, **overrides)
    out = args.out or f"stores/{setting.name}-{args.preset}-s{args.seed}.zarr"
    for parent in Path(out).resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out} lies under {parent}, which is a file; choose another --out")
            break
    summary = train(out, config, overwrite=args.overwrite, progress=not args.quiet)
    print(format_summary(summary))


def _setting_options() -> dict[str, dict]:
    """Training options of every registered setting, by Python argument name (``--steps`` is
    ``num_steps``); a setting refuses those it does not have."""
    from .settings import get, names

    options: dict[str, dict] = {}
    for name in names():
        for dest, spec in get(name).train_options.items():
            entry = options.setdefault(dest, dict(spec, settings=[]))
            entry["settings"].append(name)
    return options


def _cmd_hessian(args) -> None:
    stores = _stores(args)
    _writable_stores(stores)
    from devarray.pipelines import hessian

    from .settings import setting_for

    requests = []
    for path in stores:
        presets = setting_for(RunStore.open(path, mode="r").config).hessian_presets
        if args.preset not in presets:
            raise ConfigError(f"unknown Hessian preset {args.preset!r}; choose one of {', '.join(presets)}")
        settings = dict(presets[args.preset])
        settings.update(
            {k: getattr(args, k) for k in ("batch_size", "num_probes", "top_k") if getattr(args, k) is not None}
        )
        settings["num_lanczos"] = max(settings["num_lanczos"], settings["top_k"])
        requests.append(
            hessian.request(path, **settings, seed=args.seed, steps=_steps(args.steps), overwrite=args.overwrite)
        )
    failed = _run_all(requests, args, "hessian")
    for path in stores:
        if path in failed:
            continue
        ds = hessian.as_dataset(path)
        print(
            f"{path}: Hessian trace {float(ds.trace.min()):.3g}…{float(ds.trace.max()):.3g}, "
            f"top eigenvalue {float(ds.top_eigenvalues.isel(eig=0).min()):.3g}…"
            f"{float(ds.top_eigenvalues.isel(eig=0).max()):.3g} over {ds.sizes['step']} checkpoints"
        )
    _raise_failed(failed)


def _cmd_stages(args) -> None:
    stores = _stores(args)
    _writable_stores(stores)
    from devarray.pipelines import stages
    from devarray.pipelines.runner import Job, raise_first, run_jobs

    options = {"tolerance": args.tolerance} if args.tolerance is not None else {}
    if args.wrt:
        options["wrt"] = args.wrt
    # one GP fit per store, side by side on a cluster (--workers); --across keeps current divisions
    todo = [p for p in stores if not (args.across and stages.is_current(RunStore.open(p, mode="r"), args.variable))]
    for p in todo:  # every store's mistakes before any work starts
        stages.staged_curve(RunStore.open(p, mode="r"), args.variable, args.noise)
    jobs = [Job(stages.stages_task, p, None, dict(variable=args.variable, noise=args.noise, **options)) for p in todo]
    raise_first(run_jobs(jobs, **_compute(args, "stages")))
    if args.across:
        from .stages_across import across_table, match_runs

        runs = {p.name.removesuffix(".zarr"): RunStore.open(p, mode="r").dataset("stages").load() for p in stores}
        print(across_table(match_runs(runs, tolerance=args.match_tolerance)))
        return
    for path in stores:
        print(f"{path}: stages of {args.variable}")
        print(stages.table(path))
        report = stages.report(path)
        if report:
            print(report)


def _cmd_demo(args) -> None:
    from devarray.pipelines import hessian, llc, observe, stages

    from .settings import get
    from .train import format_summary, train

    setting = get(args.setting)
    path = Path(args.out_dir) / f"{setting.name}-{args.preset}-s{args.seed}.zarr"
    compute = dict(workers=args.workers, progress=not args.quiet)
    print(f"[1/5] training {setting.name} ({setting.title}, {args.preset} preset) into {path}")
    config = setting.config(args.preset, args.seed)
    print(format_summary(train(path, config, progress=not args.quiet)))
    # the sampler presets follow the training preset where the setting has one (tiny: a smoke run)
    presets = setting.llc_presets_for(config.to_dict())
    preset = presets.get(args.preset, presets["quick"])
    print(
        f"[2/5] LLC at every checkpoint ({preset.num_chains} chains x "
        f"{preset.num_burnin_steps + preset.num_draws} SGLD steps each)"
    )
    results = llc.run(path, preset.settings(), dataset_size=preset.dataset_size, **compute)
    warning = llc.flagged(results)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    print("[3/5] Hessian trace and top eigenvalues at every checkpoint")
    hessian.run(path, **setting.hessian_presets.get(args.preset, setting.hessian_presets["quick"]), **compute)
    print("[4/5] observables at every checkpoint")
    observe.run(path, **compute)
    print("[5/5] stages from the LLC curve, and the figure")
    store = RunStore.open(path)
    n_llc = len(store.done_steps("llc"))
    if not store.has_group("stages") or store.dataset("stages").attrs.get("source_checkpoints") != n_llc:
        stages.run(path)
    figure = path.with_suffix(".png")
    if not figure.exists() or figure.stat().st_mtime < (path / "stages" / "zarr.json").stat().st_mtime:
        _figure([str(path)], figure)
    print()
    if args.verbose:
        print(llc.summary_table(path))
    print(f"stages of {path} (LLC plateaus, appendix B.1):")
    print(stages.table(path))
    report = stages.report(path)
    if report:
        print(report)
    print(f"figure: {figure}")
    print(f"explore: panel serve apps/stages.py --args {path}")


def _cmd_sweep(args) -> int:
    from devarray.pipelines import sweep
    from devarray.pipelines.runner import client_for

    from .location import parse_storage_options

    specs = sweep.grid(
        args.setting,
        args.preset,
        sweep.parse_seeds(args.seeds),
        sweep.parse_sets(args.set, args.setting),
        args.out_dir,
        parse_storage_options(args.storage_options),
    )
    pipelines = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    sweep.check(specs, pipelines, args.llc_preset, args.hessian_preset)
    where = args.scheduler or f"a LocalCluster of {args.workers} processes"
    print(f"sweep: {len(specs)} runs of {args.setting} ({args.preset}) into {args.out_dir}, on {where}")
    with client_for(args.workers, args.scheduler) as client:
        result = sweep.run_sweep(
            specs,
            client=client,
            pipelines=pipelines,
            llc_preset=args.llc_preset,
            hessian_preset=args.hessian_preset,
            threads=args.threads,
            progress=not args.quiet,
        )
    done = ", ".join(f"{n} {k}" for k, n in result.computed.items())
    print(f"computed now: {done} tasks")
    print(result.table())
    return 1 if result.errors else 0


def figure_inputs(path) -> tuple:
    """(curves over step, stages Dataset or None, GP fits by variable) of one store."""
    import xarray as xr

    from devarray.pipelines.runner import done
    from devarray.pipelines.stages import fit

    store = RunStore.open(path, mode="r")
    parts = [done(store.dataset("eval"))[["test_loss", "weight_norm"]]]
    if store.has_group("llc") and len(store.done_steps("llc")):
        from devarray.pipelines.stages import _unrefined

        curves = _unrefined(done(store.dataset("llc")))[["llc_mean", "llc_std"]]
        if curves.llc_mean.dims == ("step",):  # a refined group without "all" has no plain curve
            parts.append(curves)
    ds = xr.merge(parts, join="outer").load()
    if not store.has_group("stages"):
        return ds, None, {}
    st = store.dataset("stages").load()
    fits = {str(c): fit(st, str(c)) for c in st.curve.values}
    staged = str(st.attrs.get("variable", "llc_mean"))
    stages = st.drop_vars(["smooth", "slope", "slope_lo", "slope_hi", "curve"]).merge(fits[staged], join="outer")
    stages.attrs = st.attrs
    return ds, stages, fits


def _object_text(ds):
    for v in ds.variables:
        if ds[v].dtype.kind in "TU":
            ds[v] = ds[v].astype(object)
    return ds


def _figure(paths: list[str], out) -> None:
    """Figure 1/B.2 of one run (B.3 with several: the runs overlaid), rendered to PNG."""
    import xarray as xr

    from . import plots

    inputs = [figure_inputs(p) for p in paths]
    if len(inputs) == 1:
        ds, stages, fits = inputs[0]
        fig = plots.run_figure(ds, stages, fits=fits)
    else:
        from .location import Location

        names = [Location.of(p).name.removesuffix(".zarr") for p in paths]
        ds = xr.concat([i[0] for i in inputs], dim="run", join="outer").assign_coords(run=names)
        # text read back is numpy's StringDType, which concat cannot pad: object arrays can
        st = [None if i[1] is None else _object_text(i[1]) for i in inputs]
        stages = (
            xr.concat(st, dim="run", join="outer").assign_coords(run=names) if all(s is not None for s in st) else None
        )
        matched = None
        if stages is not None:  # figure B.3 with the boundaries matched across the runs (B.4)
            from .stages_across import match_runs

            matched = match_runs(dict(zip(names, st)))
        fig = plots.run_figure(ds, stages, matched=matched)
    plots.save_png(fig, out)


def _refined_figure(paths: list[str], out) -> None:
    """Refined LLC curves of one run over log step with its stage shading (issue 17)."""
    from devarray.pipelines.runner import done

    from . import plots

    if len(paths) != 1:
        raise ConfigError("--refined draws one run; give one store")
    store = RunStore.open(paths[0], mode="r")
    if not store.has_group("llc") or not len(store.done_steps("llc")):
        raise StoreError(f"{paths[0]} has no done llc checkpoints; run `devarray llc {paths[0]} --restrict heads,all`")
    ds = done(store.dataset("llc")).load()
    if "restriction" not in ds.dims:
        raise StoreError(
            f"the llc group of {paths[0]} holds no refined LLCs; run `devarray llc {paths[0]} --restrict heads,all "
            "--overwrite` (all keeps the curve the stages divide)"
        )
    stages = store.dataset("stages").load() if store.has_group("stages") else None
    plots.save_png(plots.refined_figure(ds, stages), out)


def _cmd_figure(args) -> None:
    if Path(args.output).suffix.lower() != ".png":
        raise ConfigError(f"the figure is a PNG; give -o a name ending in .png, not {args.output}")
    _writable_dir(Path(args.output).parent, "-o")
    if args.refined:
        _refined_figure(args.stores, args.output)
    elif args.metrics:
        from .plots_language import store_metrics_figure

        if len(args.stores) != 1:
            raise ConfigError("--metrics draws one run; give one store")
        store_metrics_figure(args.stores[0], args.output)
    else:
        _figure(_stores(args), args.output)
    print(f"figure written to {args.output}")


def _cmd_compare(args) -> None:
    from devarray.compare import compare, format_comparison

    result = compare(args.store, args.step_from, args.step_to, n=args.n, n_samples=args.samples)
    print(format_comparison(result, top=args.top, color=sys.stdout.isatty() and not args.no_color))


def _cmd_app(args) -> None:
    from .app_server import serve

    serve(args.paths, port=args.port, show=args.show)


def _cmd_info(args) -> None:
    from .store import RunStore

    for path in _stores(args):
        print(RunStore.open(path, mode="r").summary())
    print("(from the done flags; `devarray verify STORE` reads every chunk)")


def _cmd_verify(args) -> None:
    from .verify import table, verify

    damaged = 0
    for path in args.stores:
        reports = verify(path)
        damaged += sum(len(r.problems) for r in reports)
        print(table(path, reports))
    if damaged:
        print(f"devarray verify: {damaged} problem(s) found; each line above names its fix", file=sys.stderr)
        sys.exit(1)


def _cmd_redo(args) -> None:
    from devarray.pipelines import redo

    _writable_stores([args.store])
    steps = _steps(args.steps)
    results = redo.run(
        args.store,
        args.group,
        steps,
        modules=args.module,
        workers=args.workers,
        scheduler=args.scheduler,
        threads=args.threads,
        progress=not args.quiet,
        wait=args.wait,
    )
    print(f"{args.store}: recomputed {args.group} at {len(results)} checkpoint(s) ({args.steps})")


def _steps(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--steps takes comma-separated integers, got {text!r}") from None


def _names(text: str | None) -> list[str] | None:
    """A comma-separated list of names ("heads,layer 0 attn"), or None when not given."""
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _writable_dir(path: Path, what: str) -> None:
    path = path if str(path) else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreError(f"{path} is not writable; choose a writable place for {what} (or fix its permissions)")


def _writable_stores(paths) -> None:
    """Stop before any work when a store cannot be written (read-only file system, permissions)."""
    for path in paths:
        RunStore.open(path, mode="r")  # a clear error for what is not a store
        if getattr(path, "is_local", True) and not os.access(path, os.W_OK):
            raise StoreError(f"{path} is read-only; copy it somewhere writable to compute into it")


def _stores(args, given=None) -> list:
    """The stores named on the command line (paths, URLs, and globs of either) as
    ``devarray.location.Location``s carrying ``--storage-options``."""
    from .location import Location, glob_locations, parse_storage_options

    options = parse_storage_options(getattr(args, "storage_options", None))
    found = []
    for text in given if given is not None else args.stores:
        if any(c in text for c in "*?["):
            matches = glob_locations(text, options)
            if not matches:
                raise StoreError(f"no run stores match {text!r}; check the pattern (quote it for the shell)")
            found += matches
        else:
            found.append(Location.of(text, options))
    return list(dict.fromkeys(found))


def _compute(args, desc: str) -> dict:
    """The cluster options of a pipeline command, as :func:`devarray.pipelines.runner.run_jobs` takes them."""
    return dict(
        workers=getattr(args, "workers", 0),
        scheduler=getattr(args, "scheduler", None),
        threads=getattr(args, "threads", None),
        progress=not getattr(args, "quiet", False),
        desc=desc,
    )


def _run_all(requests, args, desc: str, results: dict | None = None) -> dict:
    """Every store's checkpoints submitted together; returns {store: error} of the stores that
    failed (their neighbours' work is kept) and fills ``results`` {store: task results}."""
    from devarray.pipelines.runner import run_requests

    failed = {}
    for out in run_requests(requests, wait=args.wait, **_compute(args, desc)):
        if results is not None:
            results.setdefault(out.job.path, []).extend(out.results)
        if out.error is not None:
            failed.setdefault(out.job.path, out.error)
    return failed


def _raise_failed(failed: dict) -> None:
    """Name every failed store on stderr, then stop with the first one's error (exit status 2)."""
    if not failed:
        return
    for path, error in list(failed.items())[1:]:
        print(f"devarray: error: {path}: {error}", file=sys.stderr)
    path, error = next(iter(failed.items()))
    if isinstance(error, DevarrayError):
        raise type(error)(f"{path}: {error}", argument=error.argument) if len(failed) > 1 else error
    raise error


def _llc_preset(setting, config: dict, name: str):
    presets = setting.llc_presets_for(config)
    if name not in presets:
        raise ConfigError(
            f"unknown LLC preset {name!r} for the {setting.title} setting; choose one of {', '.join(presets)}"
        )
    return presets[name]


def _llc_settings(args, setting, config: dict):
    from .slt import sgld_settings

    preset = _llc_preset(setting, config, args.preset)
    given = {
        k: getattr(args, k)
        for k in (
            "num_chains",
            "num_draws",
            "num_burnin_steps",
            "batch_size",
            "epsilon",
            "nbeta",
            "beta_tilde",
            "localization",
            "gamma_tilde",
            "sampler",
            "rmsprop_alpha",
            "rmsprop_eps",
        )
        if getattr(args, k, None) is not None
    }
    if given.get("sampler", "sgld") != "rmsprop_sgld" and {"rmsprop_alpha", "rmsprop_eps"} & set(given):
        raise ConfigError("--rmsprop-alpha and --rmsprop-eps set the rmsprop_sgld sampler; add --sampler rmsprop_sgld")
    base = {k: v for k, v in vars(preset).items() if k != "dataset_size"}
    if {"nbeta", "beta_tilde"} & set(given) or "epsilon" in given:
        base.pop("beta_tilde")  # an override of either temperature knob replaces the preset's
    if {"localization", "gamma_tilde"} & set(given) or "epsilon" in given:
        base.pop("gamma_tilde")
    # a new step size alone keeps the posterior the preset samples (nβ and γ); β̃ = εnβ/2 and γ̃ = εγ/2 follow
    fixed = preset.settings()
    if "epsilon" in given and not ({"nbeta", "beta_tilde"} & set(given)):
        given["nbeta"] = fixed.nbeta
    if "epsilon" in given and not ({"localization", "gamma_tilde"} & set(given)):
        given["localization"] = fixed.localization
    try:
        settings = sgld_settings(**{**base, **given})
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return settings, args.dataset_size or preset.dataset_size


def _cmd_llc(args) -> None:
    stores = _stores(args)
    _writable_stores(stores)
    from devarray.pipelines import llc

    from .settings import setting_for

    requests = []
    for path in stores:
        config = RunStore.open(path, mode="r").config
        settings, n = _llc_settings(args, setting_for(config), config)
        print(
            f"LLC: {settings.num_chains} chains x {settings.num_steps} steps ({settings.num_burnin_steps} burn-in), "
            f"eps={settings.epsilon:g} beta~={settings.beta_tilde:g} (nbeta={settings.nbeta:.4g}) "
            f"gamma~={settings.gamma_tilde:g}, m={settings.batch_size}, n={n}"
            + (f"  [{path}]" if len(stores) > 1 else "")
        )
        if settings.sampler != "sgld":
            print(f"sampler {settings.sampler} (alpha={settings.rmsprop_alpha:g}, delta={settings.rmsprop_eps:g})")
        requests.append(
            llc.request(
                path,
                settings,
                restrictions=_names(args.restrict),
                data=_names(args.data),
                seed=args.seed,
                dataset_size=n,
                steps=_steps(args.steps),
                method=args.method,
                compile=args.compile,
                overwrite=args.overwrite,
            )
        )
    results: dict = {}
    failed = _run_all(requests, args, "llc", results)
    for path in stores:
        if path in failed:
            continue
        if len(stores) > 1:
            print(f"{path}:")
        print(llc.summary_table(path))
        warning = llc.flagged(results.get(path, []))
        if warning:
            print(f"warning: {path}: {warning}", file=sys.stderr)
    _raise_failed(failed)


def _cmd_calibrate(args) -> None:
    from .checkpoints import load_model
    from .settings import setting_for
    from .slt.calibration import calibrate

    if args.out and Path(args.out).exists() and not args.overwrite:
        raise StoreError(f"{args.out} already exists; pass --overwrite to replace it or choose another --out")
    store = RunStore.open(args.store, mode="r")
    setting = setting_for(store.config)
    preset = _llc_preset(setting, store.config, args.preset)
    if args.step is None:
        args.step = int(store.done_steps("params")[-1])
    model = load_model(store, args.step)
    model.fused_attention = True  # as the LLC pipeline samples it
    grid = calibrate(
        model,
        setting.loss,
        setting.sgld_dataset(store.config, args.dataset_size or preset.dataset_size),
        epsilon=args.epsilon,
        beta_tilde=args.beta_tilde,
        gamma_tilde=args.gamma_tilde,
        batch_size=args.batch_size or preset.batch_size,
        num_chains=args.num_chains or preset.num_chains,
        num_draws=args.num_draws or preset.num_draws,
        num_burnin_steps=preset.num_burnin_steps if args.num_burnin_steps is None else args.num_burnin_steps,
        seed=args.seed,
        label=f"step {args.step}",
        progress=not args.quiet,
    )
    print(calibration_table(grid, args.step))
    if args.out:
        grid.to_zarr(args.out, mode="w" if args.overwrite else "w-", zarr_format=3)
        print(f"calibration grid written to {args.out}")


def calibration_table(grid, step: int) -> str:
    """One row per grid point: settings, LLC, flagged chains; then the A.4.3 recommendation."""
    b_name, g_name = grid.acceptable.dims[1], grid.acceptable.dims[2]
    lines = [
        f"calibration at step {step} ({grid.attrs['num_chains']} chains x {grid.attrs['num_steps']} steps, "
        f"m={grid.attrs['batch_size']})",
        f"{'epsilon':>9} {'beta~':>8} {'nbeta':>8} {'gamma~':>8} {'llc':>9} {'± std':>7} "
        f"{'diverged':>8} {'not conv':>8} {'escaped':>8}  ok",
    ]
    for e in grid.epsilon.values:
        for b in grid[b_name].values:
            for g in grid[g_name].values:
                p = grid.sel(epsilon=e, **{b_name: b, g_name: g})
                lines.append(
                    f"{e:>9.2g} {float(p.beta_tilde):>8.3g} {float(p.nbeta):>8.3g} {float(p.gamma_tilde):>8.3g} "
                    f"{float(p.llc_mean):>9.2f} {float(p.llc_std):>7.2f} {int(p.diverged.sum()):>8d} "
                    f"{int(p.not_converged.sum()):>8d} {int(p.escaped.sum()):>8d}  "
                    f"{'yes' if bool(p.acceptable) else 'no'}"
                )
    a = grid.attrs
    if np.isfinite(a["recommended_epsilon"]):
        lines.append(
            f"recommended (A.4.3): epsilon={a['recommended_epsilon']:g} beta~={a['recommended_beta_tilde']:.3g} "
            f"(nbeta={a['recommended_nbeta']:.3g}) gamma~={a['recommended_gamma_tilde']:.3g}"
        )
    else:
        lines.append("no acceptable grid point: widen the grid")
    return "\n".join(lines)


def _cmd_observe(args) -> None:
    from devarray.pipelines import observe

    # `devarray observe STORE... [NAME...]`: paths (existing, or ending in .zarr) are stores
    stores = [t for t in args.targets if t.endswith(".zarr") or "://" in t or "*" in t or Path(t).exists()]
    names = [t for t in args.targets if t not in stores] + (args.names or [])
    if not stores:
        raise StoreError(
            f"no run store among {' '.join(args.targets)}; give a store path first, e.g. "
            "devarray observe stores/lr-quick-s0.zarr icl_scores"
        )
    stores = _stores(args, stores)
    _writable_stores(stores)
    requests = [
        observe.request(
            path,
            names or None,
            probe_seed=args.probe_seed,
            modules=args.module,
            steps=_steps(args.steps),
            overwrite=args.overwrite,
        )
        for path in stores
    ]
    results: dict = {}
    failed = _run_all(requests, args, "observe", results)
    for path in stores:
        if path not in failed:
            print(f"{path}: computed {sum(len(r['names']) for r in results.get(path, []))} observable-checkpoints")
    _raise_failed(failed)


def _add_compute_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", help="comma-separated checkpoint steps (default: every written checkpoint)")
    p.add_argument(
        "--workers", type=COUNT, default=0, help="run on a LocalCluster of N processes (default: in-process)"
    )
    p.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://host:8786")
    p.add_argument(
        "--threads", type=POSITIVE_INT, help="torch threads per task (default: all cores in-process, 1 per worker)"
    )
    p.add_argument("--wait", action="store_true", help="wait for another writer of the same group instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="recompute what was stored with other settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_storage_option(p)


def _add_storage_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage-options",
        metavar="JSON",
        help="fsspec options for store URLs (s3://, gs://, memory://), e.g. endpoint and credentials",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="devarray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    from .settings import get, names

    known = "; ".join(f"{n}: {get(n).title}" for n in names())
    t = sub.add_parser(
        "train",
        help="train a model into a run store",
        description=f"Train a setting's model into a run store. Settings: {known}.",
    )
    t.add_argument("setting", metavar="SETTING", help=f"the setting to train ({known})")
    t.add_argument("--preset", default="quick", help="tiny | quick | paper (default quick)")
    t.add_argument("--seed", type=SEED, default=0)
    t.add_argument("--out", help="store path (default stores/<setting>-<preset>-s<seed>.zarr)")
    for dest, spec in _setting_options().items():
        which = "" if len(spec["settings"]) == len(names()) else f" [{', '.join(spec['settings'])}]"
        kind = {int: POSITIVE_INT, float: POSITIVE}.get(spec["type"], spec["type"])
        t.add_argument(spec["flag"], dest=dest, type=kind, help=spec["help"] + which)
    t.add_argument("--overwrite", action="store_true", help="replace an existing store with another config")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    ll = sub.add_parser("llc", help="estimate the LLC at every checkpoint (writes the llc group)")
    ll.add_argument("stores", nargs="+")
    ll.add_argument("--preset", default="quick", help="LLC sampler preset: quick | paper (A.3.2)")
    ll.add_argument("--chains", dest="num_chains", type=POSITIVE_INT)
    ll.add_argument(
        "--draws",
        dest="num_draws",
        type=_number(int, low=4, what="an integer >= 4 (the drift diagnostic compares quarters of the draws)"),
        help="kept draws per chain (at least 4)",
    )
    ll.add_argument("--burnin", dest="num_burnin_steps", type=COUNT)
    ll.add_argument("--batch-size", type=POSITIVE_INT, help="SGLD minibatch size m")
    ll.add_argument("--dataset-size", type=POSITIVE_INT, help="size n of the fixed SGLD dataset")
    ll.add_argument(
        "--epsilon",
        "--lr",
        dest="epsilon",
        type=POSITIVE,
        help="SGLD step size; alone it keeps the preset's nβ and γ (β̃ and γ̃ move with it)",
    )
    ll.add_argument("--nbeta", type=POSITIVE)
    ll.add_argument("--beta-tilde", type=POSITIVE, help="ε nβ / 2")
    ll.add_argument("--localization", "--gamma", dest="localization", type=POSITIVE)
    ll.add_argument("--gamma-tilde", type=POSITIVE, help="ε γ / 2")
    ll.add_argument("--seed", type=SEED, default=0, help="SGLD seed, the same at every checkpoint (A.4.2)")
    ll.add_argument(
        "--restrict",
        metavar="NAMES",
        help="weight-refined LLCs: comma-separated restrictions of the setting's vocabulary, e.g. 'heads', "
        "'head 0.3,layer 1 attn,embed' (writes a restriction dim; an unknown name lists the vocabulary)",
    )
    ll.add_argument(
        "--data",
        metavar="NAMES",
        help="data-refined LLCs: comma-separated SGLD datasets the setting builds, e.g. 'train,bigram' (lm) or "
        "'ood-inputs-g10' (lr) (writes a data dim; an unknown name lists them)",
    )
    ll.add_argument(
        "--sampler",
        choices=["sgld", "rmsprop_sgld"],
        help="sgld (default) or rmsprop_sgld: RMSProp-preconditioned SGLD (Li et al. 2016, devinterp's)",
    )
    ll.add_argument(
        "--rmsprop-alpha",
        type=_number(float, low=0, high=1, high_ok=False, what="a number in [0, 1)"),
        help="decay of the running mean square gradient (rmsprop_sgld; default 0.99)",
    )
    ll.add_argument("--rmsprop-eps", type=POSITIVE, help="δ in G = 1/(√v + δ) (rmsprop_sgld; default 0.1)")
    ll.add_argument(
        "--method",
        choices=["auto", "batched", "loop", "shared"],
        default="auto",
        help="SGLD path: all chains in one vmap call, a loop over chains, each chain's restrictions in one call "
        "sharing what none of them moves (attention heads), or chosen by rule (default; see slt/sgld.py)",
    )
    ll.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the gradient: faster long chains (e.g. --preset paper), ~15 s to compile per checkpoint",
    )
    _add_compute_options(ll)
    ll.set_defaults(func=_cmd_llc)

    ca = sub.add_parser("calibrate", help="sweep SGLD settings at one checkpoint (A.4.3) and recommend one")
    ca.add_argument("store")
    ca.add_argument("--step", type=COUNT, help="checkpoint (default: the last)")
    ca.add_argument("--preset", default="quick", help="LLC preset for the other settings")
    ca.add_argument("--epsilon", type=_positive_list, default="0.0003,0.001,0.003", help="comma-separated step sizes")
    ca.add_argument("--beta-tilde", type=_positive_list, help="comma-separated β̃ (default: nβ = m/log m)")
    ca.add_argument("--gamma-tilde", type=_positive_list, default="0.003,0.01,0.03", help="comma-separated γ̃")
    ca.add_argument("--chains", dest="num_chains", type=POSITIVE_INT)
    ca.add_argument("--draws", dest="num_draws", type=_number(int, low=4, what="an integer >= 4"))
    ca.add_argument("--burnin", dest="num_burnin_steps", type=COUNT)
    ca.add_argument("--batch-size", type=POSITIVE_INT)
    ca.add_argument("--dataset-size", type=POSITIVE_INT)
    ca.add_argument("--seed", type=SEED, default=0)
    ca.add_argument("--out", help="also write the whole grid (chains, draws, diagnostics) to this zarr store")
    ca.add_argument("--overwrite", action="store_true")
    ca.add_argument("--quiet", action="store_true")
    ca.set_defaults(func=_cmd_calibrate)

    ob = sub.add_parser("observe", help="compute registered observables at every checkpoint")
    ob.add_argument(
        "targets",
        nargs="+",
        metavar="STORE_OR_NAME",
        help="run stores, then observables to compute (default: all registered)",
    )
    ob.add_argument("--name", dest="names", action="append", help="observable to compute (repeatable)")
    ob.add_argument("--module", action="append", default=[], help="Python file or module that registers observables")
    ob.add_argument("--probe-seed", type=SEED, default=0)
    _add_compute_options(ob)
    ob.set_defaults(func=_cmd_observe)

    he = sub.add_parser("hessian", help="Hessian trace and top eigenvalues at every checkpoint (appendix B.5)")
    he.add_argument("stores", nargs="+")
    he.add_argument("--preset", default="quick", help="quick | paper (m=1,024, 100 probes, 64 Lanczos steps)")
    he.add_argument("--batch-size", type=POSITIVE_INT, help="size m of the fixed batch")
    he.add_argument(
        "--num-probes",
        type=_number(int, low=2, what="an integer >= 2 (a standard error needs two)"),
        help="Hutchinson probes",
    )
    he.add_argument("--top-k", type=POSITIVE_INT, help="number of top eigenvalues")
    he.add_argument("--seed", type=SEED, default=0)
    _add_compute_options(he)
    he.set_defaults(func=_cmd_hessian)

    st = sub.add_parser("stages", help="find stage boundaries on the LLC curve (writes the stages group)")
    st.add_argument("stores", nargs="+")
    st.add_argument(
        "--variable", default="llc/llc_mean", help="GROUP/VARIABLE over step to divide (default llc/llc_mean)"
    )
    st.add_argument(
        "--tolerance",
        type=_number(float, low=0, low_ok=False, high=1, high_ok=False, what="a fraction strictly between 0 and 1"),
        help="plateau tolerance: a saddle's |slope| as a fraction of its neighbouring movements' "
        "(default: devarray.stages.StageOptions.tolerance)",
    )
    st.add_argument("--wrt", choices=["log_step", "step"], help="differentiate in log step (default) or step")
    st.add_argument(
        "--noise",
        choices=["learned", "chains"],
        default="learned",
        help="GP noise: learned from the curve (default), or each checkpoint's chain standard error",
    )
    st.add_argument(
        "--across",
        action="store_true",
        help="match the boundaries of the runs to each other and print the B.4 table (spread, missing, split)",
    )
    st.add_argument(
        "--match-tolerance",
        type=POSITIVE,
        default=None,
        help="--across: widest gap, in decades of step, between boundaries of one stage (default: from the data)",
    )
    st.add_argument("--workers", type=COUNT, default=0, help="fit the runs on a LocalCluster of N processes")
    st.add_argument("--scheduler", help="address of a running dask scheduler")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_storage_option(st)
    st.set_defaults(func=_cmd_stages)

    fi = sub.add_parser("figure", help="the paper's figure 1/B.2 for a run (several runs: overlaid, B.3)")
    fi.add_argument("stores", nargs="+")
    fi.add_argument("-o", "--output", default="figure.png", help="PNG file to write")
    fi.add_argument("--metrics", action="store_true", help="figure 4 of a language run: its appendix-C metrics")
    fi.add_argument(
        "--refined",
        action="store_true",
        help="refined LLC curves (devarray llc --restrict): one panel per layer's heads, stage shading",
    )
    _add_storage_option(fi)
    fi.set_defaults(func=_cmd_figure)

    co = sub.add_parser("compare", help="largest true-next-token logit changes between two checkpoints (C.1.4)")
    co.add_argument("store")
    co.add_argument("--from", dest="step_from", type=COUNT, required=True)
    co.add_argument("--to", dest="step_to", type=COUNT, required=True)
    co.add_argument("-n", type=POSITIVE_INT, default=5, help="samples to show")
    co.add_argument("--samples", type=POSITIVE_INT, default=64, help="validation contexts searched")
    co.add_argument("--top", type=POSITIVE_INT, default=8, help="tokens marked per sample")
    co.add_argument("--no-color", action="store_true")
    co.set_defaults(func=_cmd_compare)

    de = sub.add_parser("demo", help="the main job: train (quick) -> LLC -> Hessian -> observables -> stages -> figure")
    de.add_argument("setting", nargs="?", default="lr", metavar="SETTING", help=f"the setting (default lr; {known})")
    de.add_argument("--out-dir", default="stores")
    de.add_argument("--seed", type=SEED, default=0)
    de.add_argument("--preset", default="quick", help="training preset (quick; tiny: a smoke run of a few minutes)")
    de.add_argument(
        "--workers", type=COUNT, default=0, help="LocalCluster processes for the pipelines (default in-process)"
    )
    de.add_argument("--verbose", action="store_true", help="also print the LLC of every checkpoint")
    de.add_argument("--quiet", action="store_true", help="no progress bars")
    de.set_defaults(func=_cmd_demo)

    ap = sub.add_parser("app", help="serve the run explorer (apps/stages.py) and print its address")
    ap.add_argument("paths", nargs="*", metavar="PATH", help="run stores or globs (default stores/*.zarr)")
    ap.add_argument("--port", type=POSITIVE_INT, default=None, help="port (default: a free one)")
    ap.add_argument("--show", action="store_true", help="open it in a browser")
    ap.set_defaults(func=_cmd_app)

    sw = sub.add_parser(
        "sweep",
        help="train a grid of runs (seeds x options) and analyse them all on a dask cluster",
        description="Train every run of the grid as its own dask task, then its LLC, Hessian, observables and "
        "stages, every checkpoint of every run on the same cluster; the same command resumes.",
    )
    sw.add_argument("setting", metavar="SETTING", help=f"the setting ({known})")
    sw.add_argument("--preset", default="tiny", help="training preset (default tiny); LLC and Hessian follow it")
    sw.add_argument("--seeds", default="0-4", help="seeds: a range or list, e.g. 0-4 or 0,2,5 (default 0-4)")
    sw.add_argument(
        "--set", action="append", default=[], metavar="KEY=V1,V2", help="a training option's values (repeatable)"
    )
    sw.add_argument("--out-dir", default="stores", help="folder or URL (s3://bucket/runs) for the stores")
    cluster = sw.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers", type=POSITIVE_INT, default=os.cpu_count() or 1, help="LocalCluster processes (default: cores)"
    )
    cluster.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://host:8786")
    sw.add_argument("--pipelines", default="llc,hessian,observe,stages", help="analyses to run after training")
    sw.add_argument("--llc-preset", help="LLC sampler preset (default: the training preset's, else quick)")
    sw.add_argument("--hessian-preset", help="Hessian preset (default: the training preset's, else quick)")
    sw.add_argument("--threads", type=POSITIVE_INT, default=1, help="torch threads per task (default 1)")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_storage_option(sw)
    sw.set_defaults(func=_cmd_sweep)

    i = sub.add_parser("info", help="what a store holds and how complete it is (its done flags)")
    i.add_argument("stores", nargs="+")
    _add_storage_option(i)
    i.set_defaults(func=_cmd_info)

    ve = sub.add_parser(
        "verify", help="read every chunk of every group: decodes, finite where it must be, right fingerprint"
    )
    ve.add_argument("stores", nargs="+")
    ve.set_defaults(func=_cmd_verify)

    re_ = sub.add_parser("redo", help="recompute some checkpoints of llc, hessian or observables with their settings")
    re_.add_argument("store")
    re_.add_argument("group", help="llc, hessian or observables")
    re_.add_argument("--steps", required=True, help="comma-separated checkpoint steps to recompute")
    re_.add_argument("--module", action="append", default=[], help="Python file or module that registers observables")
    re_.add_argument("--workers", type=COUNT, default=0, help="run on a LocalCluster of N processes")
    re_.add_argument("--scheduler", help="address of a running dask scheduler, e.g. tcp://host:8786")
    re_.add_argument("--threads", type=POSITIVE_INT, help="torch threads per task")
    re_.add_argument("--wait", action="store_true", help="wait for another writer of the same group")
    re_.add_argument("--quiet", action="store_true", help="no progress bar")
    re_.set_defaults(func=_cmd_redo)
    return p


def _flag_names(parser: argparse.ArgumentParser, command: str) -> dict[str, str]:
    """Python argument name -> the flag of ``command`` that sets it (``num_steps`` -> ``--steps``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = {}
    for action in sub._actions:
        if action.option_strings:
            flags.setdefault(action.dest, max(action.option_strings, key=len))
    return flags


def _user_message(error: DevarrayError, parser: argparse.ArgumentParser, command: str) -> str:
    """The library's message with its Python argument name replaced by the command's flag."""
    message = str(error)
    flag = _flag_names(parser, command).get(error.argument or "")
    if flag:
        # the name as a word of its own, never inside a path or a longer name (runs/corpus-run.zarr)
        message = re.sub(rf"(?<![\w\-/.]){re.escape(error.argument)}(?![\w\-/.])", flag, message)
    return message


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)  # a command may end with its own status (sweep: 1 when a run failed)
    except DevarrayError as e:
        print(f"devarray: error: {_user_message(e, parser, args.command)}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only file system, a vanished path: not a bug of ours
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"devarray: error: {e.strerror or e}{where}; check that the path is writable and the disk has space; "
            "what was written before is kept",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("devarray: interrupted; what was written is kept and the same command resumes", file=sys.stderr)
        return 130
    except Exception:
        # a chunk that no longer decodes surfaces as the codec's own error, naming nothing of ours:
        # find it in the command's stores and name it (a real bug keeps its traceback)
        from .verify import first_undecodable

        found = first_undecodable(_store_arguments(args))
        if found is None:
            raise
        print(f"devarray: error: {found}", file=sys.stderr)
        return 1
    return status or 0


def _store_arguments(args) -> list[str]:
    """The run stores named on the command line (whatever the subcommand calls them)."""
    given = []
    for name in ("store", "stores", "targets", "paths"):
        value = getattr(args, name, None)
        given += [value] if isinstance(value, str) else list(value or [])
    return [p for p in given if isinstance(p, str) and (Path(p) / "zarr.json").is_file()]


if __name__ == "__main__":
    sys.exit(main())
