"""SGLD sampling and local learning coefficient estimation: tensors in, xarray out (paper §4, appendix A).

    estimate_llc(model, loss_fn, (tokens, y), epsilon=..., localization=..., batch_size=...)
    calibrate(model, loss_fn, data, epsilon=[...], localization=[...], batch_size=...)
    estimate_llc(model, loss_fn, data, PRESETS["quick"].settings())   # loss_fn(model, *batch)
"""

from .calibration import calibrate
from .diagnostics import LLCDiagnosticWarning
from .llc import estimate_llc
from .presets import PRESETS, LLCPreset
from .sgld import SGLDSettings, default_nbeta, sgld_settings

__all__ = [
    "LLCDiagnosticWarning",
    "LLCPreset",
    "PRESETS",
    "SGLDSettings",
    "calibrate",
    "default_nbeta",
    "estimate_llc",
    "sgld_settings",
]
