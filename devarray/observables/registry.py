"""The registry of per-checkpoint observables.

An observable is a function ``f(model, probe)`` of a model with one checkpoint's weights
loaded and the fixed probe data of a run, returning an ``xarray.DataArray`` or ``Dataset``
without a ``step`` dimension. Registering it with :func:`observable` declares its dimensions,
units and meaning; that spec is its documentation (the docstring is the default description),
and :func:`compute` checks every result against it and labels the variables (CF ``long_name``,
``units``, ``description``), so a pipeline can store any observable over all checkpoints.

Within one :func:`compute` call, :func:`cached` memoises shared intermediate results (the
forward pass with attention patterns over a probe batch), so several attention metrics cost one
forward pass.
"""

from __future__ import annotations

import contextvars
import inspect
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import xarray as xr

_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("observables_cache", default=None)


@dataclass(frozen=True)
class VariableSpec:
    """One output variable: its name, dimensions (in storage order) and CF attributes."""

    name: str
    dims: tuple[str, ...]
    units: str
    long_name: str
    description: str

    def attrs(self) -> dict[str, str]:
        return {"long_name": self.long_name, "units": self.units, "description": self.description}


@dataclass(frozen=True)
class ObservableSpec:
    """A registered observable: the function and the variables it returns."""

    name: str
    func: Callable
    variables: tuple[VariableSpec, ...]
    train_time: bool = False
    task: str | None = None


def cached(key: Hashable, fn: Callable[[], Any]) -> Any:
    """``fn()``, memoised under ``key`` for the rest of the current :func:`compute` call.

    Outside ``compute`` nothing is cached, so a stale result can never outlive the weights it
    was computed from.
    """
    cache = _CACHE.get()
    if cache is None:
        return fn()
    if key not in cache:
        cache[key] = fn()
    return cache[key]


def _docstring_description(func: Callable) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


class Registry:
    """Observable names -> specs. The package keeps one default instance (:data:`REGISTRY`)."""

    def __init__(self):
        self._specs: dict[str, ObservableSpec] = {}

    def observable(
        self,
        name: str | None = None,
        *,
        dims: Iterable[str] = (),
        units: str = "1",
        long_name: str | None = None,
        description: str | None = None,
        variables: Mapping[str, Mapping[str, Any]] | None = None,
        train_time: bool = False,
        task: str | None = None,
        replace: bool = False,
    ) -> Callable[[Callable], Callable]:
        """Decorator registering ``f(model, probe) -> DataArray | Dataset`` under ``name``.

        A function returning one DataArray gives ``dims``, ``units``, ``long_name`` and
        ``description`` (default: the first paragraph of its docstring); the stored variable is
        called ``name``. A function returning a Dataset gives ``variables``: variable name ->
        dict with the same keys, where ``units`` defaults to "1" and ``description`` to the
        function's. ``train_time=True`` marks cheap observables that the training loop also
        computes at every checkpoint, through this same function. ``task`` groups observables
        (``"regression"``, ``"language"``) for :meth:`names`.
        """

        def register(func: Callable) -> Callable:
            obs_name = name or func.__name__
            default_description = description or _docstring_description(func)
            if variables is None:
                raw = {obs_name: dict(dims=dims, units=units, long_name=long_name, description=default_description)}
            else:
                if tuple(dims) or long_name is not None:
                    raise ValueError(
                        f"observable {obs_name!r}: give dims/long_name per variable in `variables`, not both"
                    )
                raw = variables
            specs = tuple(
                VariableSpec(
                    name=var,
                    dims=_as_names(v.get("dims", ())),
                    units=v.get("units") or units,
                    long_name=v.get("long_name") or var.replace("_", " "),
                    description=v.get("description") or default_description,
                )
                for var, v in raw.items()
            )
            for spec in specs:
                if not spec.description:
                    raise ValueError(f"observable {obs_name!r}: variable {spec.name!r} has no description or docstring")
                if "step" in spec.dims:
                    raise ValueError(f"observable {obs_name!r}: dims must not contain 'step' (the pipeline adds it)")
            self._add(ObservableSpec(obs_name, func, specs, train_time, task), replace)
            return func

        return register

    def timed(
        self, names: Iterable[str], times: dict[str, list[float]], first: Mapping[str, Callable] | None = None
    ) -> tuple[Registry, list[str]]:
        """A registry of ``names`` whose observables append their seconds to ``times[name]`` as
        they run inside one ``compute`` call, and the names to compute, in order (for benchmarks).
        ``first`` (label -> ``f(model, probe)``) are the shared computations observables cache
        (forward passes, attention summaries): run and timed before the rest, so that each
        observable's time is its own work."""
        reg = Registry()

        def timer(label, func):
            def run(model, probe):
                t0 = time.perf_counter()
                out = func(model, probe)
                times[label].append(time.perf_counter() - t0)
                return out if isinstance(out, (xr.DataArray, xr.Dataset)) else xr.DataArray(0.0)

            return run

        order = []
        for i, (label, func) in enumerate((first or {}).items()):
            reg.observable(name=f"_shared{i}", description=label)(timer(label, func))
            order.append(f"_shared{i}")
        for name in names:
            spec = self.get(name)
            variables = {v.name: {"dims": v.dims, **v.attrs()} for v in spec.variables}
            reg.observable(name=name, train_time=spec.train_time, variables=variables)(timer(name, spec.func))
            order.append(name)
        return reg, order

    def _add(self, spec: ObservableSpec, replace: bool) -> None:
        old = self._specs.get(spec.name)
        if old is not None and not _same_function(old.func, spec.func) and not replace:
            raise ValueError(
                f"observable {spec.name!r} is already registered by {_qualname(old.func)}; "
                f"pass replace=True to register {_qualname(spec.func)} instead"
            )
        owners = {v.name: o.name for o in self._specs.values() if o.name != spec.name for v in o.variables}
        for var in spec.variables:
            if var.name in owners:
                raise ValueError(
                    f"observable {spec.name!r}: variable {var.name!r} is already produced by observable "
                    f"{owners[var.name]!r}; choose another variable name"
                )
        self._specs[spec.name] = spec

    def unregister(self, name: str) -> None:
        """Remove the observable ``name`` (values already stored are untouched)."""
        if name not in self._specs:
            raise KeyError(f"no observable {name!r} is registered; known: {', '.join(sorted(self._specs))}")
        del self._specs[name]

    def get(self, name: str) -> ObservableSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise KeyError(f"unknown observable {name!r}; registered: {', '.join(sorted(self._specs))}") from None

    def names(self, *, task: str | None = None, train_time: bool | None = None) -> list[str]:
        """Registered names, sorted; optionally only those of one ``task`` or ``train_time`` flag."""
        return sorted(
            n
            for n, s in self._specs.items()
            if (task is None or s.task == task) and (train_time is None or s.train_time == train_time)
        )

    def variables(self, names: Iterable[str] | None = None) -> dict[str, VariableSpec]:
        """Variable name -> spec for the given observables (default: all), e.g. to build a schema."""
        names = self.names() if names is None else _as_names(names)
        return {v.name: v for n in names for v in self.get(n).variables}

    def compute(self, model: torch.nn.Module, names: Iterable[str] | str | None, probe: Any) -> xr.Dataset:
        """The observables ``names`` (None: all registered) of one checkpoint, as one Dataset.

        Runs under ``torch.no_grad()`` with the model in eval mode, sharing cached intermediate
        results (:func:`cached`) between observables. Each result is checked against its spec;
        the probe's ``attrs()`` (seed, sizes) become the Dataset's attrs.
        """
        specs = [self.get(n) for n in dict.fromkeys(self.names() if names is None else _as_names(names))]
        was_training = model.training
        model.eval()
        token = _CACHE.set({})
        try:
            with torch.no_grad():
                parts = [_labelled(spec, _call(spec, model, probe)) for spec in specs]
        finally:
            _CACHE.reset(token)
            model.train(was_training)
        try:
            ds = xr.merge(parts, join="exact", compat="identical", combine_attrs="drop_conflicts")
        except (ValueError, xr.MergeError) as err:
            raise ValueError(f"observables {[s.name for s in specs]} disagree on shared coordinates: {err}") from err
        if hasattr(probe, "attrs"):
            ds.attrs.update(probe.attrs())
        return ds


def _call(spec: ObservableSpec, model: torch.nn.Module, probe: Any) -> Any:
    try:
        return spec.func(model, probe)
    except Exception as err:
        err.add_note(f"while computing observable {spec.name!r} ({_qualname(spec.func)})")
        raise


def _labelled(spec: ObservableSpec, result: xr.DataArray | xr.Dataset) -> xr.Dataset:
    """``result`` checked against ``spec``, as a Dataset whose variables carry the spec's attrs."""
    if isinstance(result, xr.DataArray):
        if len(spec.variables) != 1:
            raise TypeError(
                f"observable {spec.name!r} returned a DataArray but declares variables "
                f"{[v.name for v in spec.variables]}; return an xarray.Dataset"
            )
        result = result.to_dataset(name=spec.variables[0].name)
    elif not isinstance(result, xr.Dataset):
        raise TypeError(
            f"observable {spec.name!r} returned {type(result).__name__}, not an xarray DataArray or Dataset"
        )
    declared = [v.name for v in spec.variables]
    if set(result.data_vars) != set(declared):
        raise ValueError(
            f"observable {spec.name!r} returned variables {sorted(result.data_vars)}, declared {sorted(declared)}"
        )
    out = {}
    for var in spec.variables:
        da = result[var.name]
        if set(da.dims) != set(var.dims) or len(da.dims) != len(var.dims):
            raise ValueError(f"observable {spec.name!r}: variable {var.name!r} has dims {da.dims}, declared {var.dims}")
        out[var.name] = da.transpose(*var.dims).assign_attrs(var.attrs())
    return xr.Dataset(out)


def _as_names(names: Iterable[str] | str) -> tuple[str, ...]:
    """A bare string is one name (``dims="layer"`` is one dim, not five)."""
    return (names,) if isinstance(names, str) else tuple(names)


def _qualname(func: Callable) -> str:
    return f"{func.__module__}.{func.__qualname__}"


def _same_function(a: Callable, b: Callable) -> bool:
    """The same object, or the same module-level function defined again (a module reloaded, a
    notebook cell re-run); lambdas and closures are only ever the same as themselves."""
    return a is b or (_qualname(a) == _qualname(b) and "<" not in _qualname(a))


REGISTRY = Registry()
observable = REGISTRY.observable
get = REGISTRY.get
names = REGISTRY.names
variables = REGISTRY.variables
compute = REGISTRY.compute
unregister = REGISTRY.unregister
