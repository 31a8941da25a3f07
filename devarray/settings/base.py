"""The setting protocol and its registry.

A setting is registered under a short name (``"lr"``, ``"lm"``), the value of ``"setting"`` in
every run config it writes; :func:`setting_for` maps a stored config back to it. Every method
takes the run config as stored (a JSON dict), the single source of truth, so a pipeline worker
rebuilds the same objects from the store alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import xarray as xr
from torch import nn

from devarray.errors import ConfigError
from devarray.seeding import derive_seed
from devarray.slt.restrictions import ALL, Restriction, everything


class RunConfig(Protocol):
    """What the trainer needs of a setting's run config (a dataclass of the setting)."""

    setting: str
    seed: int
    preset: str

    @property
    def num_steps(self) -> int: ...

    def checkpoints(self) -> np.ndarray: ...

    def to_dict(self) -> dict: ...


class Evaluator(Protocol):
    """Evaluation of a checkpoint on the setting's fixed test set: what the ``eval`` group holds."""

    coords: dict[str, np.ndarray]  # the eval group's dims besides ``step``
    attrs: dict[str, Any]  # reference levels written as group attrs (e.g. the zero predictor's loss)

    def __call__(self, model: nn.Module) -> dict[str, np.ndarray]: ...


class Setting:
    """Base class of the settings. Subclasses fill in every method that raises here."""

    name: ClassVar[str]
    title: ClassVar[str]
    eval_schema: ClassVar[str]  # schemas/<eval_schema>.yaml describes the eval group
    observables: ClassVar[str]  # the observable registry's task name for this setting
    training_presets: ClassVar[Sequence[str]]
    llc_presets: ClassVar[dict]  # name -> devarray.slt.LLCPreset
    hessian_presets: ClassVar[dict]  # name -> keywords of devarray.slt.hessian.hessian_stats (+ batch_size)
    loss_description: ClassVar[str]  # what ``loss`` computes, recorded with LLC and Hessian results
    # training options the command line offers: Python argument -> {"flag", "type", "help"}
    train_options: ClassVar[dict[str, dict]] = {}

    # ---------------------------------------------------------------- configuration
    def config(self, preset: str, seed: int = 0, **overrides) -> RunConfig:
        """The run config of ``preset`` with ``overrides`` (None values ignored), validated."""
        raise NotImplementedError

    def prepare(self, config: RunConfig, store_path, *, local: bool = True) -> RunConfig:
        """Make what the run's data need before training (e.g. tokenise a corpus beside the store)
        and return the final config; by default nothing to do. ``local``: whether ``store_path``
        is on this machine's file system (not a URL)."""
        return config

    def llc_presets_for(self, config: dict) -> dict:
        """The LLC presets for this run (they may depend on the model, e.g. its depth)."""
        return self.llc_presets

    def _overrides(
        self, presets, preset: str, seed: int, overrides: dict, schedule_fields, extra=()
    ) -> tuple[dict, dict]:
        """The checks every setting's :meth:`config` shares: a known preset, a non-negative seed,
        only the setting's own options, positive schedule numbers. Returns (schedule overrides,
        other overrides), None values dropped."""
        if preset not in presets:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(presets)}")
        if seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed}", argument="seed")
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - set(schedule_fields) - set(extra))
        if unknown:
            raise ConfigError(f"the {self.name} setting has no option {unknown[0]}", argument=unknown[0])
        sched = {k: v for k, v in given.items() if k in schedule_fields}
        for k, v in sched.items():
            if isinstance(v, int | float) and not v > 0 and k not in ("weight_decay",):
                raise ConfigError(f"{k} must be positive, got {v}", argument=k)
        return sched, {k: v for k, v in given.items() if k not in sched}

    # ---------------------------------------------------------------- model
    def build_model(self, config: dict) -> nn.Module:
        raise NotImplementedError

    def init_model(self, config: dict) -> nn.Module:
        """The model at step 0, initialised from the run's seed without touching the caller's
        global RNG state."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(config["seed"], "init"))
            return self.build_model(config)

    # ---------------------------------------------------------------- training
    def optimizer(self, model: nn.Module, config: dict) -> torch.optim.Optimizer:
        raise NotImplementedError

    def learning_rate(self, step: int, config: dict) -> float:
        """The learning rate of optimiser step ``step`` (0-based): a pure function of the step, so
        resuming needs no scheduler state."""
        raise NotImplementedError

    def train_batch(self, config: dict, step: int) -> tuple[torch.Tensor, ...]:
        """The training batch of one step, a pure function of (seed, step)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, *batch: torch.Tensor) -> torch.Tensor:
        """The mean loss over a batch: the training objective, SGLD's ℓ_m and the Hessian's loss."""
        raise NotImplementedError

    def evaluator(self, config: dict) -> Evaluator:
        raise NotImplementedError

    # ---------------------------------------------------------------- analysis data
    def sgld_dataset(self, config: dict, n: int, data: str = "train") -> tuple[torch.Tensor, ...]:
        """The fixed SGLD dataset of n rows (A.4.2: the same at every checkpoint); ``data`` names
        another distribution the setting can build (:meth:`sgld_data`), for data-refined LLCs."""
        raise NotImplementedError

    def sgld_data(self, config: dict) -> dict[str, str]:
        """The datasets :meth:`sgld_dataset` can build for this run: name -> description. "train"
        is the run's own distribution; names with a ``<G>`` take a number in its place."""
        return {"train": "the run's own distribution (the fixed SGLD stream)"}

    def check_data(self, config: dict, names: Sequence[str]) -> list[str]:
        """``names`` if the setting can build each of them (and they are distinct), else a
        one-line error listing the valid names."""
        names = list(names)
        if len(set(names)) != len(names) or not names:
            raise ConfigError(f"give each dataset once, got {names}", argument="data")
        for name in names:
            try:
                self.sgld_dataset(config, 1, name)
            except KeyError:
                raise ConfigError(
                    f"unknown SGLD dataset {name!r} for the {self.title} setting; choose from "
                    + ", ".join(self.sgld_data(config)),
                    argument="data",
                ) from None
        return names

    # ---------------------------------------------------------------- refined LLCs
    def restrictions(self, model: nn.Module) -> dict[str, Restriction]:
        """The setting's vocabulary of weight restrictions for ``model`` (name -> Restriction):
        "all" and whatever the model's parts are called ("embed", "head 0.3", ...)."""
        return {ALL: everything(model)}

    def restriction_stack(self, model: nn.Module, flat, restrictions):
        """The SGLD "shared" path for these restrictions of ``model`` (a
        :data:`devarray.slt.sgld.StackFn` over ``flat``: every restriction's row on one batch, the
        part no restriction moves computed once), or None to run each row alone; none by default."""
        return None

    def restriction_groups(self, model: nn.Module) -> dict[str, list[str]]:
        """Names that stand for several restrictions ("heads": every head); none by default."""
        return {}

    def check_restrictions(self, model: nn.Module, names: Sequence[str]) -> list[str]:
        """``names`` with groups expanded ("heads" -> "head 0.0", ...), in order and once each;
        a one-line error listing the vocabulary for a name it does not have."""
        vocabulary, groups = self.restrictions(model), self.restriction_groups(model)
        out = []
        for name in names:
            name = " ".join(str(name).split())  # "head  0.3 " is "head 0.3"
            if name in groups:
                out.extend(groups[name])
            elif name in vocabulary:
                out.append(name)
            else:
                raise ConfigError(
                    f"unknown restriction {name!r} for this {self.title} model; choose from "
                    + ", ".join([*groups, *vocabulary]),
                    argument="restrict",
                )
        if not out:
            raise ConfigError("give at least one restriction", argument="restrict")
        return list(dict.fromkeys(out))

    def hessian_batch(self, config: dict, m: int) -> tuple[torch.Tensor, ...]:
        """The fixed batch of m rows the Hessian statistics are computed on (B.5)."""
        raise NotImplementedError

    def probe(self, config: dict, seed: int = 0) -> Any:
        """The fixed probe data of the setting's observables (an object with ``attrs()``)."""
        raise NotImplementedError

    def probe_context(self, config: dict, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
        """One probe input (a batch of one) and a label per token position, for attention views."""
        raise NotImplementedError

    @torch.no_grad()
    def attention(self, model: nn.Module, config: dict, seed: int = 0) -> xr.DataArray:
        """The attention pattern of every head on the probe context, dims (layer, head, query_pos,
        key_pos) with the token labels as coordinates; the model must accept ``return_attention``."""
        tokens, labels = self.probe_context(config, seed)
        was_training = model.training
        model.eval()
        _, patterns = model(tokens, return_attention=True)
        model.train(was_training)
        a = torch.stack([p[0] for p in patterns]).double().numpy()  # (layer, head, query, key)
        return xr.DataArray(
            a,
            dims=("layer", "head", "query_pos", "key_pos"),
            coords={
                "layer": np.arange(a.shape[0]),
                "head": np.arange(a.shape[1]),
                "query_pos": labels,
                "key_pos": labels,
            },
            attrs={
                "long_name": "attention weight",
                "units": "1",
                "description": "Softmax attention of each query position on each key position.",
            },
        )

    # ---------------------------------------------------------------- setting-specific checks
    def stage_report(self, stages: xr.Dataset, evaluation: xr.Dataset) -> str | None:
        """One line relating the found stages to what the paper says of this setting, or None."""
        return None

    def describe(self) -> str:
        return f"{self.name} ({self.title})"


_SETTINGS: dict[str, Setting] = {}


def register(setting: Setting) -> Setting:
    """Register ``setting`` under ``setting.name`` (re-registering the same class is a no-op)."""
    old = _SETTINGS.get(setting.name)
    if old is not None and type(old) is not type(setting):
        raise ValueError(f"setting {setting.name!r} is already registered by {type(old).__name__}")
    _SETTINGS[setting.name] = setting
    return setting


def names() -> list[str]:
    return sorted(_SETTINGS)


def _known() -> str:
    return ", ".join(s.describe() for s in _SETTINGS.values())


def get(name: str) -> Setting:
    """The setting registered as ``name``; a one-line error naming the known ones otherwise."""
    if name not in _SETTINGS:
        raise ConfigError(f"unknown setting {name!r}; choose one of: {_known()}", argument="setting")
    return _SETTINGS[name]


def setting_for(config: dict) -> Setting:
    """The setting that wrote a run with this stored config."""
    name = config.get("setting")
    if name is None:
        raise ConfigError("the run config names no setting; was it written by devarray?")
    if name not in _SETTINGS:
        raise ConfigError(
            f"the run was written by setting {name!r}, which this devarray does not know "
            f"(known: {_known()}); upgrade devarray or install the package that registers it"
        )
    return _SETTINGS[name]
