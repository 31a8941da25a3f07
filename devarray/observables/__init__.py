"""Per-checkpoint observables: a registry of labelled measurements of a model on fixed probe data.

>>> from devarray import observables as obs
>>> probe = setting.probe(config, seed=0)          # a setting's fixed probe data (devarray.settings)
>>> ds = obs.compute(model, obs.names(task=setting.observables), probe)   # one checkpoint -> xr.Dataset

Register your own with :func:`observable`; see :mod:`devarray.observables.registry`.
"""

from devarray.observables import (
    language,  # and the language-model ones
    regression,  # importing registers the regression observables
)
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

__all__ = [
    "REGISTRY",
    "ObservableSpec",
    "Registry",
    "VariableSpec",
    "cached",
    "compute",
    "get",
    "names",
    "observable",
    "language",
    "regression",
    "unregister",
    "variables",
]
