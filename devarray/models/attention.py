"""Which attention implementation a model runs, shared by the models of every setting.

Two forms with the same numbers up to float rounding: PyTorch's fused
``scaled_dot_product_attention`` for first-derivative work, and the explicit softmax, which
returns the pattern and runs under ``torch.func`` transforms (``vmap`` of the batched SGLD path,
the double backward of Hessians), where SDPA's CPU kernels have no batching rule or second
derivative, and under ``torch.compile``, which fuses the explicit form itself.
"""

from __future__ import annotations

import torch
from torch import nn
from torch._C._functorch import is_functorch_wrapped_tensor


def sdpa_applies(x: torch.Tensor) -> bool:
    """Whether a model with fused attention on may call SDPA on activations ``x`` here."""
    return not torch.compiler.is_compiling() and not is_functorch_wrapped_tensor(x)


def attention_implementation(model: nn.Module, method: str, compile: bool = False) -> str:
    """Which attention a first-derivative pass of ``model`` runs on SGLD path ``method``:
    "sdpa" or "explicit" (recorded with every LLC estimate)."""
    fused = bool(getattr(model, "fused_attention", False))
    # "shared+batched": heads on the shared path, the other restrictions alone on the batched one
    ran = ["sdpa" if fused and path in ("loop", "shared") and not compile else "explicit" for path in method.split("+")]
    return "+".join(dict.fromkeys(ran))
