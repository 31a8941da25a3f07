"""A fused causal-attention kernel for short sequences (attention_kernel.c), compiled at first use.

At the regression transformer's sizes (16 tokens, 4 heads of 16) PyTorch's CPU attention is
mostly overhead: 16×16 batched matmuls, a softmax over 16 entries, head transposes and the
split's concatenation in backward; its flash kernel is slower still. The C kernel does one
(context, head) pair at a time in registers and L1: forward and backward of a layer at batch
1,024 take about 6 ms against 11 ms (explicit) and 13 ms (flash) on 2 cores, and the attention
tensors are never split, transposed or concatenated (benchmarks/llc_throughput.py measures what
it does for a whole SGLD step: its loop/explicit column).

The kernel is built with the system C compiler (``cc``, or ``$CC``) into a per-user cache
(``$DEVARRAY_CACHE``, else ``$XDG_CACHE_HOME/devarray``, else ``~/.cache/devarray``), once per
(T, H, head size), source and machine, and loaded with ctypes. It links no PyTorch headers, so
building takes about a second; its OpenMP loop runs on the thread pool PyTorch already loaded.
Where no compiler or OpenMP is found, :func:`available` is False and callers use the explicit
PyTorch attention (same numbers up to float rounding).

First derivatives only (no double backward: Hessians use the explicit form), float32 CPU
tensors only, and not under ``torch.func`` transforms or ``torch.compile`` (the model checks).
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
from functools import lru_cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("attention_kernel.c")
_LOCK = threading.Lock()


def cache_dir() -> Path:
    if os.environ.get("DEVARRAY_CACHE"):
        return Path(os.environ["DEVARRAY_CACHE"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "devarray" / "kernels"


def _torch_gomp() -> str | None:
    """Directory of the libgomp PyTorch ships, so the kernel resolves to the same OpenMP runtime."""
    lib = Path(torch.__file__).parent / "lib"
    return str(lib) if any(lib.glob("libgomp*.so*")) else None


def _compile(out: Path, T: int, H: int, DH: int) -> None:
    cc = os.environ.get("CC", "cc")
    base = [cc, "-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared", "-std=gnu11", f"-DT={T}", f"-DH={H}", f"-DDH={DH}"]
    gomp = _torch_gomp()
    openmp = ["-fopenmp"] + ([f"-L{gomp}", f"-Wl,-rpath,{gomp}"] if gomp else [])
    fd, name = tempfile.mkstemp(dir=out.parent, suffix=".so")
    os.close(fd)
    tmp, error = Path(name), ""
    try:
        # Prefer glibc's vectorised expf (libmvec); fall back to scalar expf where it is missing.
        for extra in (["-DUSE_LIBMVEC", "-lmvec", "-lm"], ["-lm"]):
            r = subprocess.run(base + openmp + [str(SOURCE), "-o", str(tmp)] + extra, capture_output=True, text=True)
            if r.returncode == 0:
                os.replace(tmp, out)  # atomic: concurrent builders (dask workers) never see half a file
                return
            error = (r.stderr.strip().splitlines() or [""])[-1]
        raise RuntimeError(f"could not compile the attention kernel with {cc!r}: {error}")
    finally:
        tmp.unlink(missing_ok=True)


@lru_cache(maxsize=None)
def _library(T: int, H: int, DH: int) -> ctypes.CDLL | None:
    key = hashlib.sha256(SOURCE.read_bytes() + f"{T},{H},{DH},{platform.machine()},{_cpu_id()}".encode()).hexdigest()[:16]
    path = cache_dir() / f"attention_T{T}_H{H}_D{DH}_{key}.so"
    with _LOCK:
        try:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                _compile(path, T, H, DH)
            lib = ctypes.CDLL(str(path))
        except (OSError, RuntimeError) as e:
            warnings.warn(f"fused attention unavailable, using PyTorch attention ({e})", RuntimeWarning, stacklevel=3)
            return None
    for name in ("attention_forward", "attention_backward"):
        getattr(lib, name).restype = None
    lib.attention_forward.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_float]
    lib.attention_backward.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_float]
    return lib


def _cpu_id() -> str:
    """The CPU model and flags: a kernel built with -march=native must not run on another CPU."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def available(T: int, H: int, DH: int) -> bool:
    """Whether the kernel serves these sizes (sequence length and head size powers of two) and
    is built, building it now if needed."""
    pow2 = lambda n: n > 0 and n & (n - 1) == 0
    return pow2(T) and pow2(DH) and T <= 64 and DH <= 64 and _library(T, H, DH) is not None


class CausalAttention(torch.autograd.Function):
    """softmax(scale·QKᵀ + causal mask) V per head, from the (B, T, 3·H·DH) projection output."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, heads: int) -> torch.Tensor:
        B, T, C3 = qkv.shape
        C = C3 // 3
        lib = _library(T, heads, C // heads)
        qkv = qkv.contiguous()
        out = qkv.new_empty(B, T, C)
        prob = qkv.new_empty(B, heads, T, T)
        scale = (C // heads) ** -0.5
        lib.attention_forward(qkv.data_ptr(), out.data_ptr(), prob.data_ptr(), B, scale)
        ctx.save_for_backward(qkv, prob)
        ctx.lib, ctx.scale = lib, scale
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative would silently miss this node
            raise RuntimeError("the fused attention kernel has no second derivative; "
                               "set model.fused_attention = False for Hessians and other higher derivatives")
        qkv, prob = ctx.saved_tensors
        dout = dout.contiguous()
        dqkv = torch.empty_like(qkv)
        ctx.lib.attention_backward(qkv.data_ptr(), prob.data_ptr(), dout.data_ptr(), dqkv.data_ptr(), qkv.shape[0], ctx.scale)
        return dqkv, None


def causal_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Fused causal attention; ``qkv`` is float32 on the CPU with q | k | v along the last dim."""
    if qkv.dtype != torch.float32 or qkv.device.type != "cpu":
        raise ValueError(f"the fused attention kernel takes float32 CPU tensors, got {qkv.dtype} on {qkv.device}")
    T, C3 = qkv.shape[-2:]
    if qkv.ndim != 3 or C3 % (3 * heads) or not available(T, heads, C3 // (3 * heads)):
        raise ValueError(f"the fused attention kernel does not serve qkv of shape {tuple(qkv.shape)} with {heads} heads "
                         "(it needs (batch, T, 3·heads·head_size) with T and head_size powers of two up to 64, "
                         "and a C compiler); use the model's explicit attention")
    return CausalAttention.apply(qkv, heads)
