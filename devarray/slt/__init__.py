"""SGLD sampling and local learning coefficient estimation: tensors in, xarray out (paper §4, appendix A)."""

from .diagnostics import LLCDiagnosticWarning
from .llc import estimate_llc, regression_loss
from .sgld import SGLDSettings, default_nbeta, sgld_settings

__all__ = [
    "LLCDiagnosticWarning",
    "SGLDSettings",
    "default_nbeta",
    "estimate_llc",
    "regression_loss",
    "sgld_settings",
]
