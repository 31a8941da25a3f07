"""The LLC of every checkpoint of a run store, written to its ``llc`` group (paper §4, A.3.2).

One task per checkpoint: read the weights, take the setting's fixed SGLD dataset and loss, run
the chains with the same seed at every checkpoint (A.4.2),
write the (step, chain, draw) region and the done flag. Done steps are skipped; a store holding
estimates made with other settings is refused unless ``overwrite``.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch

from devarray import schemas
from devarray.checkpoints import load_model
from devarray.errors import StoreError
from devarray.models.attention import attention_implementation
from devarray.settings import setting_for
from devarray.slt import SGLDSettings, estimate_llc
from devarray.slt.sgld import choose_method
from devarray.store import RunStore

from .runner import Job, Request, done, pending_steps, prepare_group, raise_first, run_requests, write_checkpoint

GROUP = "llc"


def _estimate(
    path: str,
    step: int,
    *,
    settings: dict,
    seed: int,
    dataset_size: int,
    init_loss_rows: int | None,
    method: str,
    settings_id: int,
    compile: bool = False,
) -> dict:
    store = RunStore.open(path, validate=False)
    setting = setting_for(store.config)
    model = load_model(store, step)
    model.fused_attention = True  # SGLD needs first derivatives only
    ds = estimate_llc(
        model,
        setting.loss,
        setting.sgld_dataset(store.config, dataset_size),
        SGLDSettings(**settings),
        seed=seed,
        method=method,
        compile=compile,
        init_loss_rows=init_loss_rows,
        label=f"step {step}",
        warn=False,
    )
    schemas.validate(ds, GROUP)
    names = [v for v in schemas.load(GROUP)["variables"] if v not in ("done", "settings_id")]
    write_checkpoint(store, GROUP, step, {v: ds[v].values for v in names}, settings_id)
    return {
        "step": step,
        "llc_mean": float(ds.llc_mean),
        "llc_std": float(ds.llc_std),
        "all_diverged": bool(ds.all_diverged),
        "init_loss": float(ds.init_loss),
        "method": ds.attrs["method"],
        **{flag: np.flatnonzero(ds[flag].values).tolist() for flag in ("diverged", "not_converged", "escaped")},
    }


def sampler_attrs(
    store: RunStore,
    settings: SGLDSettings,
    seed: int,
    dataset_size: int,
    init_loss_rows: int | None,
    method: str = "auto",
    compile: bool = False,
) -> dict:
    """Everything that determines the stored numbers: the sampler settings, the data and loss,
    and the code path (SGLD path and attention implementation), which changes the rounding."""
    setting = setting_for(store.config)
    example = setting.sgld_dataset(store.config, settings.batch_size)
    path = choose_method(method, torch.device("cpu"), example, settings.num_chains)
    model = setting.build_model(store.config)
    model.fused_attention = True
    return {
        **settings.to_dict(),
        "seed": seed,
        "dataset_size": dataset_size,
        "init_loss_rows": dataset_size if init_loss_rows is None else init_loss_rows,
        "dataset": "the setting's fixed SGLD dataset (stream 'sgld')",
        "loss": setting.loss_description,
        "method": path,
        "attention": attention_implementation(model, path, compile),
        "compile": bool(compile),
    }


def prepare(store: RunStore, attrs: dict, num_chains: int, num_draws: int, *, overwrite: bool) -> int:
    """Allocate the llc group, or check that the existing one was made with the same settings;
    returns the settings' fingerprint."""
    coords = {"step": store.steps("params"), "chain": np.arange(num_chains), "draw": np.arange(num_draws)}
    return prepare_group(store, GROUP, coords, attrs, "LLC estimates", overwrite=overwrite)


def request(
    path,
    settings: SGLDSettings,
    *,
    seed: int = 0,
    dataset_size: int,
    init_loss_rows: int | None = None,
    steps=None,
    method: str = "auto",
    compile: bool = False,
    overwrite: bool = False,
) -> Request:
    """The LLC of one store, checked (nothing written yet) and ready to plan under its lock."""
    store = RunStore.open(path)
    if dataset_size < settings.batch_size:
        raise StoreError(
            f"dataset_size ({dataset_size}) is smaller than the SGLD batch ({settings.batch_size}); "
            "give a larger dataset or a smaller batch",
            argument="dataset_size",
        )
    pending_steps(store, GROUP, steps)  # refuses steps that are not checkpoints before anything is written
    attrs = sampler_attrs(store, settings, seed, dataset_size, init_loss_rows, method, compile)

    def plan() -> list[Job]:
        sid = prepare(store, attrs, settings.num_chains, settings.num_draws, overwrite=overwrite)
        kwargs = dict(
            settings=asdict(settings),
            seed=seed,
            dataset_size=dataset_size,
            init_loss_rows=init_loss_rows,
            method=method,
            compile=compile,
            settings_id=sid,
        )
        return [Job(_estimate, store.location, pending_steps(store, GROUP, steps).tolist(), kwargs)]

    return Request(store, GROUP, plan)


def run(
    path,
    settings: SGLDSettings,
    *,
    workers: int = 0,
    scheduler: str | None = None,
    threads: int | None = None,
    progress: bool = True,
    wait: bool = False,
    **options,
) -> list[dict]:
    """Estimate the LLC at every done checkpoint (or at ``steps``) not yet done; returns one
    summary dict per checkpoint computed now. ``options`` are :func:`request`'s.

    ``compile=True`` runs the gradient under ``torch.compile`` (with the explicit attention, which
    it fuses itself) for about 10–20 s of compiling per checkpoint; it paid off for long chains at
    small batches (benchmarks/llc_throughput.py --compile); numbers agree within rounding."""
    compute = dict(workers=workers, scheduler=scheduler, threads=threads, progress=progress, desc="llc")
    outcomes = run_requests([request(path, settings, **options)], wait=wait, **compute)
    raise_first(outcomes)
    return outcomes[0].results


def summary_table(path) -> str:
    """One line per done checkpoint: LLC, its spread over chains, ℓ_n(w*) and flagged chains."""
    ds = done(RunStore.open(path, mode="r").dataset(GROUP))
    lines = [f"{'step':>8} {'llc':>9} {'± std':>8} {'init loss':>10}  flags"]
    for s in ds.step.values:
        d = ds.sel(step=s)
        flags = ", ".join(
            f"{f} {np.flatnonzero(d[f].values).tolist()}"
            for f in ("diverged", "not_converged", "escaped")
            if d[f].values.any()
        )
        lines.append(
            f"{int(s):>8} {float(d.llc_mean):>9.2f} {float(d.llc_std):>8.2f} {float(d.init_loss):>10.4f}  {flags}"
        )
    return "\n".join(lines)


def flagged(results: list[dict]) -> str | None:
    """A one-paragraph warning naming the checkpoints and chains whose diagnostics failed."""
    parts = []
    for r in sorted(results, key=lambda r: r["step"]):
        bad = [f"{flag} chains {r[flag]}" for flag in ("diverged", "not_converged", "escaped") if r[flag]]
        if bad:
            parts.append(f"step {r['step']}: " + "; ".join(bad))
    return ("LLC diagnostics flagged " + " | ".join(parts)) if parts else None
