"""What machine a figure came from: float32 rounding (and speed) depend on the CPU's kernels, so every parity or
speed figure is printed with the CPU model and the vector extensions that decide which kernels XLA and oneDNN pick."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The extensions that change kernel choice for float32 / bfloat16 convolutions and matmuls on x86-64.
VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


def _cpuinfo(field: str) -> str | None:
    """The first /proc/cpuinfo line's value for `field` (Linux), else None."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith(field))
    except (OSError, StopIteration):
        return None


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what the platform module reports."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def vector_extensions() -> list[str]:
    """Which of VECTOR_EXTENSIONS the CPU has (empty where /proc/cpuinfo cannot be read)."""
    flags = (_cpuinfo("flags") or "").split()
    return [ext for ext in VECTOR_EXTENSIONS if ext in flags]


def cpu_description() -> str:
    """e.g. 'AMD EPYC, 2 cores, avx2 fma avx512f avx512_bf16'."""
    extensions = " ".join(vector_extensions()) or "vector extensions unknown"
    return f"{cpu_model()}, {os.cpu_count()} cores, {extensions}"
