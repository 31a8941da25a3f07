"""SGLD sampling and local learning coefficient estimation: tensors in, xarray out (paper §4, appendix A).

estimate_llc(model, loss_fn, (tokens, y), epsilon=..., localization=..., batch_size=...)
calibrate(model, loss_fn, data, epsilon=[...], localization=[...], batch_size=...)
estimate_llc(model, loss_fn, data, preset.settings())   # loss_fn(model, *batch); presets in devarray.settings
"""

from .calibration import calibrate
from .diagnostics import LLCDiagnosticWarning
from .llc import estimate_llc
from .presets import LLCPreset
from .sgld import SGLDSettings, default_nbeta, sgld_settings

__all__ = [
    "LLCDiagnosticWarning",
    "LLCPreset",
    "SGLDSettings",
    "calibrate",
    "default_nbeta",
    "estimate_llc",
    "sgld_settings",
]
