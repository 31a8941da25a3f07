"""Observables in the run store: allocation from a computed example, region writes, done flags.

The observables package computes (model, probe) -> Dataset and knows no store; this module is
the store side, used by the training loop and by ``pipelines/observe.py``.

Each observable ``name`` owns its variables in the ``observables`` group plus a boolean
``done_<name>`` over ``step``; the probe's identity (seed, sizes) is stored in every variable's
attrs, so a value is always traceable to the inputs it was measured on."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .errors import StoreError
from .observables.registry import REGISTRY
from .store import RunStore, VarSpec

GROUP = "observables"


def done_flag(name: str) -> str:
    return f"done_{name}"


def allocated(store: RunStore, name: str) -> bool:
    return store.has_group(GROUP) and done_flag(name) in store.group(GROUP)


def allocated_names(store: RunStore) -> list[str]:
    """The observables the store has room for (each has its done flag)."""
    if not store.has_group(GROUP):
        return []
    return sorted(k.removeprefix("done_") for k in store.group(GROUP).array_keys() if k.startswith("done_"))


def stored_probe(store: RunStore, name: str) -> dict | None:
    """The probe attrs stored with observable ``name`` (None if it is not allocated)."""
    if not allocated(store, name):
        return None
    first = REGISTRY.get(name).variables[0].name
    attrs = store.group(GROUP)[first].attrs
    return {k: v for k, v in attrs.items() if k.startswith("probe_")}


def allocate(store: RunStore, names: list[str], example: xr.Dataset, *, overwrite: bool = False) -> None:
    """Add the variables of ``names`` shaped like ``example`` (one checkpoint, no ``step``)."""
    steps = store.steps("params")
    if not store.has_group(GROUP):
        store.create_group(GROUP, {"step": steps})
    probe = {k: v for k, v in example.attrs.items() if k.startswith("probe_")}
    specs, coords = {}, {}
    for name in names:
        for var in REGISTRY.get(name).variables:
            da = example[var.name]
            dtype = da.dtype
            specs[var.name] = VarSpec(("step", *da.dims), dtype.str, {**da.attrs, **probe, "observable": name})
            for d in da.dims:
                coords[d] = example[d].values if d in example.coords else np.arange(example.sizes[d])
        specs[done_flag(name)] = VarSpec(
            ("step",),
            "bool",
            {
                "long_name": f"{name} written",
                "units": "1",
                "description": f"True once every variable of observable {name!r} is written for this step.",
            },
        )
    store.add_variables(GROUP, specs, coords, overwrite=overwrite)


def values(ds: xr.Dataset, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """Plain arrays of a computed Dataset, per observable (what the writer needs)."""
    out = {}
    for name in names:
        out[name] = {}
        for var in REGISTRY.get(name).variables:
            v = ds[var.name].values
            out[name][var.name] = v
    return out


def regions(step: int, vals: dict[str, dict[str, np.ndarray]]) -> tuple[list, list]:
    """One checkpoint's observables as ``RunStore.write_regions`` regions: (data, done flags)."""
    data = [(GROUP, step, arrays) for arrays in vals.values()]
    flags = [(GROUP, step, {done_flag(name): True for name in vals})] if vals else []
    return data, flags


def write(store: RunStore, step: int, vals: dict[str, dict[str, np.ndarray]]) -> None:
    """Write each observable's variables for one checkpoint, then their done flags."""
    data, flags = regions(step, vals)
    store.write_regions(data)
    store.write_regions(flags)


def check_probe(store: RunStore, name: str, probe_attrs: dict) -> None:
    stored = stored_probe(store, name)
    if stored is not None and stored != probe_attrs:
        raise StoreError(
            f"observable {name!r} in {store.path} was measured on another probe ({stored}); "
            "pass --overwrite to recompute it"
        )
