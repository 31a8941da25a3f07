"""One YAML file per run-store group: dims, coords, variables, dtype, units, description.

The one source of every stored variable's metadata: :mod:`devarray.store` creates groups from
these specs and validates stores against them, and the code that computes a group's variables
takes their attrs from here (:func:`attrs`) and checks its in-memory results with
:func:`validate`. A setting's ``eval`` group follows its own schema (``eval_lr``, ...).
``finite: true`` (or ``finite_unless: FLAG``, ``dynamic_finite`` for a dynamic group's
variables) says a variable must be finite at every done step; ``devarray verify`` checks it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import numpy as np
import yaml

SCHEMAS = ("train", "params", "optimizer", "eval_lr", "eval_lm", "observables", "llc", "hessian", "stages")
CF = ("long_name", "units", "description")


class SchemaError(ValueError):
    """A dataset does not follow its schema."""


@cache
def load(name: str) -> dict:
    """The schema ``name`` (see any YAML file here for the layout)."""
    if name not in SCHEMAS:
        raise KeyError(f"no schema {name!r}; known: {', '.join(SCHEMAS)}")
    return yaml.safe_load(resources.files(__name__).joinpath(f"{name}.yaml").read_text())


def attrs(schema: str, variable: str) -> dict[str, str]:
    """The CF attributes (long_name, units, description) of a variable or coordinate of ``schema``."""
    s = load(schema)
    spec = s["variables"].get(variable) or s["coords"].get(variable)
    if spec is None:
        raise KeyError(f"schema {schema!r} has no variable {variable!r}")
    return {k: spec[k] for k in CF if k in spec}


BOOKKEEPING = ("done", "settings_id")


def variable_dims(schema: str, variable: str, refinements=()) -> tuple[str, ...]:
    """The dims of ``variable`` in a group that has the optional dims ``refinements``.

    A schema may list ``refinements``: optional dims (the llc group's ``restriction`` and ``data``)
    that, when a group has them, every variable but the bookkeeping ``done``/``settings_id`` takes
    right after the index dim, in the schema's order. Without them a variable has its listed dims."""
    s = load(schema)
    dims = tuple(s["variables"][variable]["dims"])
    extra = tuple(d for d in s.get("refinements", ()) if d in set(refinements))
    if not extra or variable in BOOKKEEPING or variable.startswith("done_"):
        return dims
    at = 1 if dims[:1] == (s.get("index"),) else 0
    return dims[:at] + extra + dims[at:]


def validate(ds, schema: str, *, per_checkpoint: bool = True) -> None:
    """Check an in-memory xarray Dataset against ``schema``: every schema variable (but ``done``)
    is present with the schema's dims — without the index dim when ``per_checkpoint`` (one
    checkpoint's results), with the schema's ``refinements`` the dataset has (:func:`variable_dims`)
    — a dtype of the same kind and the schema's CF attributes."""
    s = load(schema)
    index = s.get("index")
    present = [d for d in s.get("refinements", ()) if d in ds.dims]
    problems = []
    for name, spec in s["variables"].items():
        if name in ("done", "settings_id") or name.startswith("done_"):
            continue  # written by the store side with every checkpoint, not by the computation
        if name not in ds.variables:
            problems.append(f"{name} is missing")
            continue
        dims = variable_dims(schema, name, present)
        if per_checkpoint and index and dims[:1] == (index,):
            dims = dims[1:]
        var = ds[name]
        if tuple(var.dims) != dims:
            problems.append(f"{name} has dims {var.dims}, schema says {dims}")
        if np.dtype(var.dtype).kind != np.dtype(spec["dtype"]).kind:
            problems.append(f"{name} has dtype {var.dtype}, schema says {spec['dtype']}")
        for k in CF:
            if k in spec and var.attrs.get(k) != spec[k]:
                problems.append(f"{name}.{k} is {var.attrs.get(k)!r}, schema says {spec[k]!r}")
    if problems:
        raise SchemaError(f"dataset does not follow schema {schema!r}: " + "; ".join(problems))
