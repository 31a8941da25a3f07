"""The paper's settings, one object each: everything that differs between them lives here.

A :class:`Setting` composes a model (``devarray.models``), its data (``devarray.tasks``), its
loss, evaluator, probe data, training, LLC and Hessian presets and its own checks. The trainer,
the pipelines, the CLI and the app ask :func:`setting_for` a store's config for all of it, so a
new setting touches none of them.

>>> from devarray.settings import get, names, setting_for
>>> names()                                   # ['lr', ...]
>>> s = setting_for(store.config)             # the setting that wrote a store
>>> model = s.build_model(store.config)
"""

from devarray.settings import language, regression  # noqa: E402,F401  (importing registers "lm" and "lr")
from devarray.settings.base import Evaluator, RunConfig, Setting, get, names, register, setting_for

__all__ = ["Evaluator", "RunConfig", "Setting", "get", "names", "register", "setting_for"]
