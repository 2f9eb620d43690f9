"""Is bfloat16 fast here? Autocast to bf16 on a CPU without native bf16 instructions is
emulated and runs tens of times *slower* than fp32 (measured 0.02x on an AVX2-only CPU), so a
bf16 request is checked first and falls back to fp32 with one line saying why.

Native bf16 on CPU: x86 ``avx512_bf16`` or ``amx_bf16``, Arm ``bf16`` (read from
``/proc/cpuinfo``); elsewhere one short matmul probe decides. ``LOCLOC_CPU_BF16=1`` (or ``0``)
overrides the detection.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import torch

_WARNED: set[str] = set()  # one line per process, however many calls
NATIVE_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16, Intel AMX, Arm BF16


def cpuinfo_flags(path: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The CPU feature flags listed in ``path`` (None where there is no such file)."""
    return _parse(Path(path))


def _parse(p: Path) -> set[str] | None:
    if not p.is_file():
        return None
    flags: set[str] = set()
    for line in p.read_text(errors="replace").splitlines():
        key, _, val = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(val.split())
    return flags or None


def _probe(n: int = 256, reps: int = 3) -> bool:
    """bf16 matmul at least as fast as fp32 (one ~10 ms probe)."""
    a = torch.randn(n, n)
    b = a.bfloat16()

    def best(x: torch.Tensor) -> float:
        t = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            x @ x
            t = min(t, time.perf_counter() - t0)
        return t

    best(a), best(b)  # warm up
    return best(b) <= best(a)


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU runs bfloat16 natively (see the module docstring)."""
    env = os.environ.get("LOCLOC_CPU_BF16")
    if env in ("0", "1"):
        return env == "1"
    flags = cpuinfo_flags()
    if flags is not None:
        return any(f in flags for f in NATIVE_FLAGS)
    return _probe()


def checked_amp(dtype: torch.dtype | None, device: torch.device | str, *, quiet: bool = False) -> torch.dtype | None:
    """``dtype`` if autocast to it is fast on ``device``, else None (fp32) with one line on stderr.

    Only bf16 on CPU is checked (CUDA: bf16 needs compute capability >= 8.0, else fp16 is
    the fast half type, which the caller chooses).
    """
    dev = torch.device(device)
    if dtype is None or dtype != torch.bfloat16:
        return dtype
    if dev.type == "cpu" and not cpu_bf16_native():
        if not quiet and "cpu" not in _WARNED:
            _WARNED.add("cpu")
            print("locloc: --bf16 / amp: bf16 ignored: this CPU has no native bfloat16 (no avx512_bf16/amx_bf16/bf16), "
                  "where bf16 runs many times slower than fp32; running fp32 "
                  "(LOCLOC_CPU_BF16=1 forces bf16)", file=sys.stderr)
        return None
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        if not quiet and "cuda" not in _WARNED:
            _WARNED.add("cuda")
            print("locloc: --bf16 / amp: bf16 ignored: this GPU has no bfloat16 support; running fp32", file=sys.stderr)
        return None
    return dtype
