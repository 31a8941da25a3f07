"""Per-checkpoint observables: a registry of labelled measurements of a model on fixed probe data.

>>> from devarray import observables as obs
>>> probe = obs.make_probe(task, seed=0)
>>> ds = obs.compute(model, obs.names(task="regression"), probe)   # one checkpoint -> xr.Dataset

Register your own with :func:`observable`; see :mod:`devarray.observables.registry`.
"""

from devarray.observables.probes import Probe, make_probe
from devarray.observables.registry import (
    REGISTRY,
    ObservableSpec,
    Registry,
    VariableSpec,
    cached,
    compute,
    get,
    names,
    observable,
    unregister,
    variables,
)
from devarray.observables import regression  # importing registers the regression observables

__all__ = [
    "REGISTRY",
    "ObservableSpec",
    "Probe",
    "Registry",
    "VariableSpec",
    "cached",
    "compute",
    "get",
    "make_probe",
    "names",
    "observable",
    "regression",
    "unregister",
    "variables",
]
