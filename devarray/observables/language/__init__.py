"""Observables of the attention-only language model (paper §6, appendices C and E).

Importing this package registers them for the ``lm`` setting (``task="language"``): behavioural ones
(C.1, C.2.1's positional ablation) in :mod:`.behaviour`, structural ones (C.2) in :mod:`.structure`;
their fixed inputs are built in :mod:`.probes`. :mod:`.compare` (C.1.4, the largest logit changes
between two checkpoints) reads stores and is imported on demand.
"""

from devarray.observables.language import behaviour, structure
from devarray.observables.language.probes import LanguageProbeData, probe_data

__all__ = ["LanguageProbeData", "behaviour", "probe_data", "structure"]
