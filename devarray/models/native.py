"""Build and load the models' C kernels (``*_kernel.c`` beside this file) at first use.

A kernel is plain C with no PyTorch headers, so building takes about a second. It is compiled
with the system C compiler (``cc``, or ``$CC``) at ``-O3 -march=native`` with its sizes as
macros, into a per-user cache (``$DEVARRAY_CACHE``, else ``$XDG_CACHE_HOME/devarray``, else
``~/.cache/devarray``) keyed by source, sizes and CPU, and loaded with ctypes. Its OpenMP loops
run on the thread pool PyTorch already loaded (the shared object resolves libgomp to PyTorch's
copy). Where it cannot be built, :func:`load` warns once and returns None, and the caller runs
its PyTorch form (same numbers up to float rounding).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from functools import cache
from pathlib import Path

import torch

HERE = Path(__file__).parent
_LOCK = threading.Lock()


def cache_dir() -> Path:
    if os.environ.get("DEVARRAY_CACHE"):
        return Path(os.environ["DEVARRAY_CACHE"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "devarray" / "kernels"


def power_of_two(n: int, most: int = 64) -> bool:
    """Sizes a kernel's vector types can take (GCC vector sizes are powers of two)."""
    return 0 < n <= most and n & (n - 1) == 0


@cache
def _cpu_id() -> str:
    """The CPU model and flags: a kernel built with -march=native must not run on another CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return "\n".join(sorted({ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))}))


def _compile(source: Path, out: Path, macros: dict[str, int]) -> None:
    cc = os.environ.get("CC", "cc")
    gomp = Path(torch.__file__).parent / "lib"
    gomp = [f"-L{gomp}", f"-Wl,-rpath,{gomp}"] if any(gomp.glob("libgomp*.so*")) else []
    base = [cc, "-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-std=gnu11", "-fopenmp", *gomp,
            *(f"-D{k}={v}" for k, v in macros.items()), str(source)]
    fd, name = tempfile.mkstemp(dir=out.parent, suffix=".so")
    os.close(fd)
    tmp, error = Path(name), ""
    try:
        # Prefer glibc's vectorised expf (libmvec); fall back to scalar expf where it is missing.
        for extra in (["-DUSE_LIBMVEC", "-lmvec", "-lm"], ["-lm"]):
            r = subprocess.run(base + ["-o", str(tmp), *extra], capture_output=True, text=True)
            if r.returncode == 0:
                os.replace(tmp, out)  # atomic: concurrent builders (dask workers) never see half a file
                return
            error = (r.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"could not compile {source.name} with {cc!r}: {error}")
    finally:
        tmp.unlink(missing_ok=True)


@cache
def _load(name: str, macros: tuple[tuple[str, int], ...]) -> ctypes.CDLL | None:
    source = HERE / f"{name}.c"
    tag = "_".join(f"{k}{v}" for k, v in macros)
    key = hashlib.sha256(source.read_bytes() + f"{macros}{platform.machine()}{_cpu_id()}".encode()).hexdigest()[:16]
    path = cache_dir() / f"{name}_{tag}_{key}.so"
    with _LOCK:
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                _compile(source, path, dict(macros))
            return ctypes.CDLL(str(path))
        except (OSError, RuntimeError) as e:
            warnings.warn(f"fused {name.removesuffix('_kernel').replace('_', ' ')} unavailable, "
                          f"using PyTorch's ({e})", RuntimeWarning, stacklevel=4)
            return None


def load(name: str, signatures: dict[str, list], **macros: int) -> ctypes.CDLL | None:
    """The kernel ``<name>.c`` built for ``macros``, with the ctypes argument types of its
    functions set (all return void); None where it cannot be built."""
    lib = _load(name, tuple(sorted(macros.items())))
    if lib is not None:
        for fn, argtypes in signatures.items():
            getattr(lib, fn).restype = None
            getattr(lib, fn).argtypes = argtypes
    return lib
