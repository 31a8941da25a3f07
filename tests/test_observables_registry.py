"""The observable registry: registration rules, validation, labelling, caching, no_grad."""

import numpy as np
import pytest
import torch
import xarray as xr

from devarray import observables as obs
from devarray.models.regression import RegressionConfig, RegressionTransformer
from devarray.observables.registry import Registry, cached
from devarray.observables.regression import make_probe
from devarray.tasks.regression import RegressionTask

TINY = RegressionConfig(D=2, K=3, L=1, H=2, d_embed=8, d_mlp=8)


@pytest.fixture
def reg():
    return Registry()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return RegressionTransformer(TINY)


def weight_norm(model, probe):
    """Norm of every parameter tensor.

    More text that is not part of the description."""
    return xr.DataArray(float(sum(p.square().sum() for p in model.parameters()) ** 0.5))


def test_register_get_names_and_attrs(reg, model):
    reg.observable(name="wn", units="1", long_name="weight norm")(weight_norm)

    @reg.observable(
        name="pair",
        task="demo",
        train_time=True,
        variables={"a": dict(dims=("i",), units="m", description="first"), "b": dict(dims=())},
    )
    def pair(model, probe):
        """Two variables."""
        return xr.Dataset({"a": ("i", np.arange(3.0)), "b": 1.0})

    assert reg.names() == ["pair", "wn"]
    assert reg.names(task="demo") == ["pair"] and reg.names(train_time=True) == ["pair"]
    assert reg.get("wn").variables[0].description == "Norm of every parameter tensor."
    assert set(reg.variables()) == {"a", "b", "wn"}

    ds = reg.compute(model, ["wn", "pair"], probe=None)
    assert ds["wn"].attrs == {
        "long_name": "weight norm",
        "units": "1",
        "description": "Norm of every parameter tensor.",
    }
    assert ds["a"].attrs == {"long_name": "a", "units": "m", "description": "first"}
    assert ds["b"].attrs["description"] == "Two variables."
    expected = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    assert ds["wn"].item() == pytest.approx(expected, rel=1e-6)


def test_unknown_name_lists_registered(reg):
    reg.observable(name="wn")(weight_norm)
    with pytest.raises(KeyError, match=r"unknown observable 'x'; registered: wn"):
        reg.get("x")


def test_duplicate_registration_rules(reg):
    reg.observable(name="wn")(weight_norm)
    reg.observable(name="wn")(weight_norm)  # the same function again is fine
    other = lambda model, probe: xr.DataArray(0.0)  # noqa: E731
    with pytest.raises(ValueError, match="already registered"):
        reg.observable(name="wn", description="zero")(other)
    reg.observable(name="wn", description="zero", replace=True)(other)
    assert reg.get("wn").func is other
    with pytest.raises(ValueError, match="variable 'wn' is already produced by observable 'wn'"):
        reg.observable(name="other", variables={"wn": dict(dims=(), description="x")})(weight_norm)


def test_unregister_removes_only_that_observable(reg):
    reg.observable(name="wn")(weight_norm)
    reg.observable(name="wn2")(weight_norm)
    reg.unregister("wn")
    assert reg.names() == ["wn2"]
    with pytest.raises(KeyError, match="no observable 'wn' is registered; known: wn2"):
        reg.unregister("wn")
    reg.observable(name="wn")(weight_norm)  # the name is free again
    assert reg.names() == ["wn", "wn2"]


def test_spec_errors(reg):
    with pytest.raises(ValueError, match="must not contain 'step'"):
        reg.observable(name="s", dims=("step",), description="x")(weight_norm)
    with pytest.raises(ValueError, match="no description"):
        reg.observable(name="s")(lambda model, probe: None)


def test_results_are_validated_against_spec(reg, model):
    reg.observable(name="bad_dims", dims=("layer",), description="x")(lambda m, p: xr.DataArray([1.0], dims="head"))
    reg.observable(name="not_xarray", description="x")(lambda m, p: 1.0)
    reg.observable(
        name="missing", variables={"u": dict(dims=(), description="x"), "v": dict(dims=(), description="x")}
    )(lambda m, p: xr.Dataset({"u": 1.0}))
    reg.observable(name="array_for_dataset", variables={"w": dict(dims=()), "z": dict(dims=())}, description="x")(
        lambda m, p: xr.DataArray(1.0)
    )
    with pytest.raises(
        ValueError, match=r"observable 'bad_dims': variable 'bad_dims' has dims \('head',\), declared \('layer',\)"
    ):
        reg.compute(model, "bad_dims", None)
    with pytest.raises(TypeError, match="observable 'not_xarray' returned float"):
        reg.compute(model, "not_xarray", None)
    with pytest.raises(ValueError, match=r"observable 'missing' returned variables \['u'\], declared \['u', 'v'\]"):
        reg.compute(model, "missing", None)
    with pytest.raises(TypeError, match="observable 'array_for_dataset' returned a DataArray"):
        reg.compute(model, "array_for_dataset", None)


def test_single_variable_may_be_returned_as_dataarray(reg, model):
    reg.observable(name="one", variables={"w": dict(dims=())}, description="x")(lambda m, p: xr.DataArray(1.0))
    assert reg.compute(model, "one", None)["w"].item() == 1.0


def test_redefined_module_function_replaces_silently(reg):
    reg.observable(name="wn")(weight_norm)

    def weight_norm_again(model, probe):
        """Redefined."""

    weight_norm_again.__qualname__, weight_norm_again.__module__ = weight_norm.__qualname__, weight_norm.__module__
    reg.observable(name="wn")(weight_norm_again)  # as after a module reload or a notebook cell re-run
    assert reg.get("wn").func is weight_norm_again


def test_a_string_is_one_dim_and_errors_name_the_observable(reg, model):
    reg.observable(name="s", dims="layer", description="x")(lambda m, p: 1 / 0)
    assert reg.get("s").variables[0].dims == ("layer",)
    with pytest.raises(ZeroDivisionError) as info:
        reg.compute(model, "s", None)
    assert "while computing observable 's'" in str(info.value.__notes__)


def test_dims_are_put_in_declared_order(reg, model):
    reg.observable(name="m", dims=("a", "b"), description="x")(
        lambda m, p: xr.DataArray(np.zeros((3, 2)), dims=("b", "a"))
    )
    assert reg.compute(model, "m", None)["m"].dims == ("a", "b")


def test_conflicting_coordinates_are_reported(reg, model):
    reg.observable(name="p", dims=("k",), description="x")(
        lambda m, p: xr.DataArray([0.0, 1.0], dims="k", coords={"k": [1, 2]})
    )
    reg.observable(name="q", dims=("k",), description="x")(
        lambda m, p: xr.DataArray([0.0, 1.0], dims="k", coords={"k": [0, 1]})
    )
    with pytest.raises(ValueError, match="disagree on shared coordinates"):
        reg.compute(model, ["p", "q"], None)


def test_compute_runs_without_grad_in_eval_mode_and_shares_cache(reg, model):
    calls, seen = [], {}

    def expensive():
        calls.append(1)
        return 2.0

    @reg.observable(name="first", description="x")
    def first(model, probe):
        seen["grad"], seen["training"] = torch.is_grad_enabled(), model.training
        return xr.DataArray(cached("key", expensive))

    reg.observable(name="second", description="x")(lambda m, p: xr.DataArray(cached("key", expensive) + 1))

    model.train()
    ds = reg.compute(model, ["first", "second"], None)
    assert (ds["first"].item(), ds["second"].item()) == (2.0, 3.0)
    assert len(calls) == 1 and seen == {"grad": False, "training": False}
    assert model.training and torch.is_grad_enabled()
    reg.compute(model, ["first"], None)
    assert len(calls) == 2  # the cache lives for one compute call only
    cached("key", expensive)
    assert len(calls) == 3  # and outside compute nothing is cached


def test_probe_attrs_are_attached(model):
    probe = make_probe(RegressionTask(D=2, K=3), seed=3, n=16, n_ood=4)
    ds = obs.compute(model, "layernorm_collapse", probe)
    assert ds.attrs == {"probe_seed": 3, "probe_n": 16, "probe_n_ood": 4}


def test_regression_observables_are_registered_with_declared_dims():
    assert obs.names(train_time=True) == ["attn_entropy", "attn_variability", "layernorm_collapse"]
    assert set(obs.names(task="regression")) | set(obs.names(task="language")) == set(obs.names())
    for name in obs.names():
        for var in obs.get(name).variables:
            assert var.description and var.long_name and var.units


def test_compute_all_is_deterministic_and_train_time_path_identical(model):
    probe = make_probe(RegressionTask(D=2, K=3), seed=0, n=64, n_ood=8)
    names = obs.names(task="regression")  # the language observables need a language probe
    full = obs.compute(model, names, probe)
    again = obs.compute(model, names, probe)
    xr.testing.assert_identical(full, again)
    assert set(full.data_vars) == set(obs.variables(names))
    train_time = obs.compute(model, obs.names(train_time=True), probe)
    xr.testing.assert_identical(train_time, full[list(train_time.data_vars)])


def test_a_timed_registry_gives_the_same_values_and_one_time_per_part(model):
    from collections import defaultdict

    probe = make_probe(RegressionTask(D=2, K=3), seed=0, n=64, n_ood=8)
    names = obs.names(task="regression")
    times = defaultdict(list)
    shared = {"[shared] a forward pass": lambda m, p: m(p.tokens)}
    timed, order = obs.REGISTRY.timed(names, times, first=shared)
    assert order[0] == "_shared0" and order[1:] == names
    got = timed.compute(model, order, probe).drop_vars("_shared0")
    xr.testing.assert_identical(got, obs.compute(model, names, probe))
    assert set(times) == {*names, "[shared] a forward pass"} and all(len(v) == 1 for v in times.values())
    assert all(v[0] >= 0 for v in times.values())
