"""Named, seeded random streams: a (seed, stream, ...) tuple always gives the same numbers.

Every random draw of the platform (training batches, test sets, SGLD minibatches and noise,
probes) comes from a ``torch.Generator`` seeded here, so resuming needs no RNG state and a rerun
writes the same bytes. Python's ``hash`` is salted per process, so the seed is a digest.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A stable 63-bit seed from any sequence of parts."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
