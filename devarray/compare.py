"""Largest changes of the true next token's logit between two checkpoints (C.1.4, figure C.1).

``compare(store, step_from, step_to)`` runs both checkpoints on fixed validation contexts (the run's
'test' stream), takes the change in the logit of the token that actually comes next at every position,
and returns the ``n`` contexts whose largest absolute change is biggest, decoded by the run's tokenizer.
:func:`format_comparison` prints them with the most-changed tokens marked: red where the logit rose
(better prediction), blue where it fell, as in figure C.1.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from devarray.checkpoints import load_model
from devarray.errors import StoreError
from devarray.settings.language import fixed, token_source
from devarray.store import RunStore

RED, BLUE, RESET = "\033[41m", "\033[44m", "\033[0m"


def true_logits(model, tokens: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Logit of token k at position k − 1, for k = 1..T−1: (n, T−1)."""
    out = []
    with torch.no_grad():
        for c in tokens.split(chunk):
            logits = model(c[:, :-1])
            out.append(logits.gather(-1, c[:, 1:, None])[..., 0].double())
    return torch.cat(out)


def compare(store, step_from: int, step_to: int, n: int = 5, *, n_samples: int = 64) -> xr.Dataset:
    """The ``n`` of ``n_samples`` validation contexts whose true-next-token logit changed most from
    checkpoint ``step_from`` to ``step_to`` (C.1.4), most changed first.

    Returns a Dataset over (sample, position): ``token`` (id), ``text`` (decoded token) and
    ``logit_change`` (logit at ``step_to`` minus at ``step_from`` of the token at ``position``, predicted
    from the tokens before it; NaN at position 0, the BOS); ``context`` is the validation context's index.
    """
    store = store if isinstance(store, RunStore) else RunStore.open(store, mode="r")
    config = store.config
    steps = store.done_steps("params")
    for s in (step_from, step_to):
        if s not in steps:
            raise StoreError(
                f"checkpoint {s} is not written in {store.path}; written: {steps.tolist()}", argument="steps"
            )
    tokens = fixed(config, n_samples, "test")
    before = true_logits(load_model(store, step_from), tokens)
    after = true_logits(load_model(store, step_to), tokens)
    change = torch.cat([torch.full((len(tokens), 1), torch.nan, dtype=torch.float64), after - before], 1).numpy()
    order = np.argsort(-np.nanmax(np.abs(change), axis=1), kind="stable")[:n]
    source = token_source(config)
    text = np.array([source.decode(tokens[i]) for i in order], dtype=object).astype(str)
    return xr.Dataset(
        {
            "token": (("sample", "position"), tokens[order].numpy()),
            "text": (("sample", "position"), text),
            "logit_change": (
                ("sample", "position"),
                change[order],
                {"units": "1", "long_name": "change of the true next token's logit"},
            ),
        },
        coords={"sample": np.arange(len(order)), "position": np.arange(tokens.shape[1]), "context": ("sample", order)},
        attrs={
            "step_from": int(step_from),
            "step_to": int(step_to),
            "joiner": "" if hasattr(source, "tokenizer") else " ",
        },  # corpus tokens carry their own spaces
    )


def format_comparison(result: xr.Dataset, *, top: int = 8, color: bool = True) -> str:
    """Each sample's text with its ``top`` most-changed tokens marked: coloured (red up, blue down) or,
    without colour, as ``[token +1.23]``."""
    joiner = result.attrs.get("joiner", " ")
    lines = [f"true-next-token logit change, step {result.attrs['step_from']} -> {result.attrs['step_to']}"]
    for i in range(result.sizes["sample"]):
        delta = result.logit_change.values[i]
        marked = set(np.argsort(-np.nan_to_num(np.abs(delta), nan=-1.0))[:top].tolist())
        parts = []
        for k, (tok, d) in enumerate(zip(result.text.values[i], delta)):
            if k in marked:
                parts.append(f"{RED if d > 0 else BLUE}{tok}{RESET}" if color else f"[{tok} {d:+.2f}]")
            else:
                parts.append(str(tok))
        lines.append(
            f"context {int(result.context[i])} (max |change| {np.nanmax(np.abs(delta)):.2f}): " + joiner.join(parts)
        )
    return "\n".join(lines)
