"""devarray: developmental interpretability on xarray/zarr run stores.

>>> import devarray
>>> tree = devarray.open_run("stores/lr-quick-s0.zarr")          # an xarray.DataTree
>>> llc = devarray.open_runs("stores/lr-*.zarr", group="llc")      # runs along `run`
"""

__version__ = "0.1.0"

from .store import RunStore, StoreError, open_run, open_runs  # noqa: E402

__all__ = ["RunStore", "StoreError", "open_run", "open_runs", "__version__"]
