"""devarray: developmental interpretability on xarray/zarr run stores."""

__version__ = "0.1.0"
