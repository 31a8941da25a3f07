"""The LLC of every checkpoint of a run store, written to its ``llc`` group (paper §4, A.3.2).

One task per checkpoint: read the weights, take the setting's fixed SGLD dataset and loss, run
the chains with the same seed at every checkpoint (A.4.2),
write the (step, chain, draw) region and the done flag. Done steps are skipped; a store holding
estimates made with other settings is refused unless ``overwrite``.

Refined LLCs (issue 17): ``restrictions`` (names in the setting's vocabulary, e.g. "heads",
"layer 1 attn") give the group a ``restriction`` dim and ``data`` (datasets the setting can build)
a ``data`` dim, right after ``step`` (schemas/llc.yaml's ``refinements``). Without either the group
has its plain layout (step, chain, draw) and the settings fingerprint it always had.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict

import numpy as np
import xarray as xr

from devarray import schemas
from devarray.checkpoints import load_model
from devarray.errors import ConfigError, StoreError
from devarray.models.attention import attention_implementation
from devarray.settings import setting_for
from devarray.slt import SGLDSettings, estimate_llc
from devarray.slt.sgld import planned_method
from devarray.store import RunStore, VarSpec

from .runner import (
    Job,
    Request,
    done,
    pending_steps,
    prepare_group,
    raise_first,
    run_requests,
    selected_steps,
    write_checkpoint,
)

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
    restrictions: list[str] | None = None,
    data: list[str] | None = None,
) -> dict:
    store = RunStore.open(path, validate=False)
    setting = setting_for(store.config)
    model = load_model(store, step)
    model.fused_attention = True  # SGLD needs first derivatives only
    vocabulary = setting.restrictions(model) if restrictions else {}
    parts = []
    for name in data or ["train"]:
        parts.append(
            estimate_llc(
                model,
                setting.loss,
                setting.sgld_dataset(store.config, dataset_size, name),
                SGLDSettings(**settings),
                seed=seed,
                method=method,
                compile=compile,
                init_loss_rows=init_loss_rows,
                label=f"step {step}",
                warn=False,
                restrictions=[vocabulary[r] for r in restrictions] if restrictions else None,
                stack=setting.restriction_stack,
            )
        )
    ds = parts[0] if data is None else xr.concat(parts, dim="data").assign_coords(data=np.array(data, dtype=object))
    ds = ds.transpose(*(d for d in ("restriction", "data", "chain", "draw") if d in ds.dims))  # the schema's order
    schemas.validate(ds, GROUP)
    names = [v for v in schemas.load(GROUP)["variables"] if v not in ("done", "settings_id")]
    refined = [d for d in ("restriction", "data") if d in ds.dims]
    values = {v: ds[v].transpose(*schemas.variable_dims(GROUP, v, refined)[1:]).values for v in names}
    write_checkpoint(store, GROUP, step, values, settings_id)
    at = ds.isel(**{d: 0 for d in refined})  # the first restriction and dataset stand for the step
    return {
        "step": step,
        "llc_mean": float(at.llc_mean),
        "llc_std": float(at.llc_std),
        "all_diverged": bool(ds.all_diverged.all()),
        "init_loss": float(at.init_loss),
        "method": ds.attrs["method"],
        **{flag: _flagged_chains(ds[flag]) for flag in ("diverged", "not_converged", "escaped")},
    }


def _flagged_chains(flag: xr.DataArray) -> list:
    """The flagged chains: their indices, or for refined LLCs 'restriction[, data] chain c' labels."""
    if flag.dims == ("chain",):
        return np.flatnonzero(flag.values).tolist()
    hits = flag.to_series()
    return [" ".join(str(k) for k in key[:-1]) + f" chain {key[-1]}" for key, v in hits.items() if v]


def sampler_attrs(
    store: RunStore,
    settings: SGLDSettings,
    seed: int,
    dataset_size: int,
    init_loss_rows: int | None,
    method: str = "auto",
    compile: bool = False,
    restrictions: list[str] | None = None,
    data: list[str] | None = None,
) -> dict:
    """Everything that determines the stored numbers: the sampler settings, the data and loss,
    and the code path (SGLD path and attention implementation), which changes the rounding.
    Restrictions and datasets enter only when given, so a plain run's fingerprint is unchanged."""
    setting = setting_for(store.config)
    example = setting.sgld_dataset(store.config, settings.batch_size)
    model = setting.build_model(store.config)
    model.fused_attention = True
    vocabulary = setting.restrictions(model) if restrictions else {}
    try:
        path = planned_method(
            model,
            setting.loss,
            example,
            settings.num_chains,
            restrictions=[vocabulary[r] for r in restrictions] if restrictions else None,
            stack=setting.restriction_stack,
            method=method,
            compile=compile,
        )
    except ValueError as e:
        if method != "shared":
            raise
        raise ConfigError(
            "--method shared needs at least two restrictions that the setting computes together (the "
            "language model's heads: --restrict heads); use --method auto, loop or batched",
            argument="method",
        ) from e
    refined = {}
    if restrictions:
        refined |= {
            "restrictions": list(restrictions),
            "restriction_size": [vocabulary[r].size(model) for r in restrictions],
        }
    if data:
        described = setting.sgld_data(store.config)
        refined |= {"data": list(data), "data_description": [described.get(d, d) for d in data]}
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
        **refined,
    }


def prepare(store: RunStore, attrs: dict, num_chains: int, num_draws: int, *, overwrite: bool) -> int:
    """Allocate the llc group, or check that the existing one was made with the same settings;
    returns the settings' fingerprint. Restrictions and datasets in ``attrs`` become dims."""
    coords = {"step": store.steps("params"), "chain": np.arange(num_chains), "draw": np.arange(num_draws)}
    refined = {}
    if attrs.get("restrictions"):
        refined["restriction"] = np.array(attrs["restrictions"], dtype=object)
    if attrs.get("data"):
        refined["data"] = np.array(attrs["data"], dtype=object)
    variables = None
    if refined:
        spec = schemas.load(GROUP)["variables"]
        variables = {
            v: VarSpec(schemas.variable_dims(GROUP, v, refined), s["dtype"], schemas.attrs(GROUP, v), s.get("chunk"))
            for v, s in spec.items()
        }
    return prepare_group(
        store, GROUP, coords | refined, attrs, "LLC estimates", overwrite=overwrite, variables=variables
    )


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
    restrictions: list[str] | None = None,
    data: list[str] | None = None,
    redo: bool = False,
) -> Request:
    """The LLC of one store, checked (nothing written yet) and ready to plan under its lock.

    ``restrictions`` (the setting's vocabulary; groups such as "heads" expand) and ``data`` (names
    of :meth:`devarray.settings.Setting.sgld_data`) make refined LLCs: one estimate per
    restriction and dataset, along the group's ``restriction`` and ``data`` dims; all restrictions
    of a checkpoint run together as one stack of chains. ``redo`` recomputes ``steps`` even if done
    (the group must hold these settings already; see :mod:`devarray.pipelines.redo`)."""
    store = RunStore.open(path)
    if dataset_size < settings.batch_size:
        raise StoreError(
            f"dataset_size ({dataset_size}) is smaller than the SGLD batch ({settings.batch_size}); "
            "give a larger dataset or a smaller batch",
            argument="dataset_size",
        )
    selected_steps(store, steps)  # refuses steps that are not checkpoints before anything is written
    setting = setting_for(store.config)
    if restrictions is not None:
        restrictions = setting.check_restrictions(setting.build_model(store.config), restrictions)
    if data is not None:
        data = setting.check_data(store.config, data)
    attrs = sampler_attrs(store, settings, seed, dataset_size, init_loss_rows, method, compile, restrictions, data)

    def plan() -> list[Job]:
        sid = prepare(store, attrs, settings.num_chains, settings.num_draws, overwrite=overwrite)
        if redo:  # these steps only, done or not (what is damaged may include the done flags)
            pending = selected_steps(store, steps)
            store.clear_done(GROUP, pending)
        else:
            pending = pending_steps(store, GROUP, steps)
        kwargs = dict(
            settings=asdict(settings),
            seed=seed,
            dataset_size=dataset_size,
            init_loss_rows=init_loss_rows,
            method=method,
            compile=compile,
            settings_id=sid,
            restrictions=restrictions,
            data=data,
        )
        return [Job(_estimate, store.location, pending.tolist(), kwargs)]

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


def settings_from_attrs(attrs: dict) -> dict:
    """The arguments of :func:`run` that made a group with these attrs (the inverse of
    :func:`sampler_attrs`): what ``redo`` recomputes with."""
    fields = {f.name for f in dataclasses.fields(SGLDSettings)}  # sampler keys only where recorded
    return {
        "settings": SGLDSettings(**{k: attrs[k] for k in fields if k in attrs}),
        "seed": int(attrs["seed"]),
        "dataset_size": int(attrs["dataset_size"]),
        "init_loss_rows": int(attrs["init_loss_rows"]),
        # a path with "+" ran heads shared and the other restrictions by the rule of "auto"
        "method": "auto" if "+" in attrs["method"] else attrs["method"],
        "compile": bool(attrs["compile"]),
        "restrictions": list(attrs["restrictions"]) if "restrictions" in attrs else None,
        "data": list(attrs["data"]) if "data" in attrs else None,
    }


def summary_table(path) -> str:
    """One line per done checkpoint (and restriction and dataset of refined LLCs): LLC, its spread
    over chains, ℓ_n(w*) and flagged chains."""
    ds = done(RunStore.open(path, mode="r").dataset(GROUP))
    refined = [d for d in ("restriction", "data") if d in ds.dims]
    width = {d: max([len(d), *(len(str(v)) for v in ds[d].values)]) for d in refined}
    head = "".join(f" {d:<{width[d]}}" for d in refined)
    lines = [f"{'step':>8}{head} {'llc':>9} {'± std':>8} {'init loss':>10}  flags"]
    for s in ds.step.values:
        at = ds.sel(step=s)
        cells = [{}]
        for d in refined:
            cells = [c | {d: v} for c in cells for v in ds[d].values]
        for c in cells:
            d = at.sel(c) if c else at
            flags = ", ".join(
                f"{f} {np.flatnonzero(d[f].values).tolist()}"
                for f in ("diverged", "not_converged", "escaped")
                if d[f].values.any()
            )
            label = "".join(f" {str(c[k]):<{width[k]}}" for k in refined)
            lines.append(
                f"{int(s):>8}{label} {float(d.llc_mean):>9.2f} {float(d.llc_std):>8.2f} "
                f"{float(d.init_loss):>10.4f}  {flags}"
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
