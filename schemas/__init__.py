"""One YAML file per run-store group: dims, coords, variables, dtype, units, chunks.

`devarray.store` creates groups from these specs and validates stores against them.
"""

from functools import cache
from importlib import resources

import yaml

GROUPS = ("train", "params", "optimizer", "eval", "observables", "llc", "hessian", "stages")


@cache
def load(group: str) -> dict:
    """The schema of one group, as a dict (see any YAML file here for the layout)."""
    if group not in GROUPS:
        raise KeyError(f"no schema for group {group!r}; known groups: {', '.join(GROUPS)}")
    return yaml.safe_load(resources.files(__name__).joinpath(f"{group}.yaml").read_text())
