"""Observables of the in-context linear regression transformer (paper §7, appendix D).

Importing this package registers them: behavioural ones (D.1) in :mod:`.behaviour`,
structural ones (D.2) in :mod:`.structure`.
"""

from devarray.observables.regression import behaviour, structure
from devarray.observables.regression.probes import Probe, make_probe

__all__ = ["Probe", "behaviour", "make_probe", "structure"]
