"""Bytes per checkpoint and write/read time of the ``params`` group under candidate compressors.

    python benchmarks/params_compression.py [--store RUN.zarr] [--steps 5]

Writes the paper's 2-layer language model (3,355,016 float32 parameters, Table 3 sizes, at
initialisation) as ``--steps`` checkpoints into a fresh zarr store per compressor, one chunk per
tensor per checkpoint as a run store lays them out (array by array: the codec's cost, without the
store's concurrent batch), and reads them back; with ``--store`` also
the trained checkpoints of an existing run (every done step of its ``params`` group). Each
compressor is a schema ``compressor`` entry (``schemas/params.yaml``), built by the same function
the store uses. Printed: bytes per checkpoint, write and read time per checkpoint, and each as a
ratio against zarr's default (Zstd level 0) measured in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from devarray import schemas
from devarray.store import compressor_codecs

CANDIDATES = {
    "none": None,
    "zstd (zarr default)": {"codec": "zstd", "level": 0},
    "blosc zstd 3 shuffle": {"codec": "blosc", "cname": "zstd", "clevel": 3, "shuffle": "shuffle"},
    "blosc zstd 3 bitshuffle": {"codec": "blosc", "cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"},
    "blosc zstd 6 bitshuffle": {"codec": "blosc", "cname": "zstd", "clevel": 6, "shuffle": "bitshuffle"},
    "blosc zstd 1 shuffle": {"codec": "blosc", "cname": "zstd", "clevel": 1, "shuffle": "shuffle"},
    "blosc lz4 5 shuffle": {"codec": "blosc", "cname": "lz4", "clevel": 5, "shuffle": "shuffle"},
}
BASELINE = "zstd (zarr default)"


def paper_checkpoints(steps: int) -> list[dict[str, np.ndarray]]:
    """The paper-size model at initialisation, nudged per step so no two checkpoints are equal."""
    from devarray.models import AttentionOnlyConfig, AttentionOnlyTransformer

    torch.manual_seed(0)
    model = AttentionOnlyTransformer(AttentionOnlyConfig())
    base = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    return [
        {k: (v + 1e-3 * rng.standard_normal(v.shape, dtype=np.float32) * v.std()) for k, v in base.items()}
        for _ in range(steps)
    ]


def store_checkpoints(path: str) -> list[dict[str, np.ndarray]]:
    import xarray as xr

    ds = xr.open_zarr(path, group="params")
    ds = ds.drop_vars("done").isel(step=ds["done"].values).load()  # one read of every done checkpoint
    return [{k: ds[k].values[i] for k in ds.data_vars} for i in range(ds.sizes["step"])]


def measure(checkpoints: list[dict[str, np.ndarray]], spec: dict | None, root: Path) -> tuple[float, float, float]:
    """(bytes, write seconds, read seconds) per checkpoint."""
    g = zarr.open_group(root, mode="w")
    n = len(checkpoints)
    arrays = {}
    for k, v in checkpoints[0].items():
        arrays[k] = g.create_array(
            k,
            shape=(n, *v.shape),
            chunks=(1, *v.shape),
            dtype=v.dtype,
            compressors=compressor_codecs(spec, v.dtype.itemsize),
        )
    t = time.perf_counter()
    for i, ckpt in enumerate(checkpoints):
        for k, v in ckpt.items():
            arrays[k][i] = v
    write = (time.perf_counter() - t) / n
    t = time.perf_counter()
    back = [{k: a[i] for k, a in arrays.items()} for i in range(n)]
    read = (time.perf_counter() - t) / n
    if not all(np.array_equal(b[k], c[k]) for b, c in zip(back, checkpoints) for k in c):
        raise AssertionError(f"{spec} did not give the checkpoints back bit for bit")
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.name != "zarr.json")
    return size / n, write, read


def report(label: str, checkpoints: list[dict[str, np.ndarray]], tmp: Path) -> None:
    n_params = sum(v.size for v in checkpoints[0].values())
    print(f"\n{label}: {n_params:,} parameters ({4 * n_params / 2**20:.1f} MiB raw), {len(checkpoints)} checkpoints")
    rows = {name: measure(checkpoints, spec, tmp / name.replace(" ", "_")) for name, spec in CANDIDATES.items()}
    b0, w0, r0 = rows[BASELINE]
    print(f"{'compressor':<26}{'MiB/ckpt':>10}{'× default':>10}{'write s':>10}{'×':>7}{'read s':>9}{'×':>7}")
    for name, (b, w, r) in rows.items():
        print(f"{name:<26}{b / 2**20:>10.2f}{b / b0:>10.3f}{w:>10.3f}{w / w0:>7.2f}{r:>9.3f}{r / r0:>7.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="also measure this run's trained checkpoints")
    p.add_argument("--steps", type=int, default=5, help="checkpoints of the paper-size model")
    args = p.parse_args()
    print(f"schemas/params.yaml compressor: {schemas.load('params').get('compressor')}")
    with tempfile.TemporaryDirectory() as tmp:
        report("paper 2-layer model at initialisation", paper_checkpoints(args.steps), Path(tmp) / "paper")
        if args.store:
            report(f"trained checkpoints of {args.store}", store_checkpoints(args.store), Path(tmp) / "store")


if __name__ == "__main__":
    main()
