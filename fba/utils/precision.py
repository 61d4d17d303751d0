"""Whether this CPU computes bf16 natively, which decides what ``train.precision=auto`` means on a CPU.

A CPU without bf16 instructions emulates every bf16 matmul: on an AVX2-only machine we measured 1.0 GFLOP/s in bf16
against 65 GFLOP/s in fp32, so a bf16 demo took over an hour instead of minutes. ``auto`` therefore picks bf16 on a
CPU only when it has native bf16 (x86 ``avx512_bf16`` or ``amx_bf16``, Arm ``bf16``), read from /proc/cpuinfo; where
the flags cannot be read it times one small matmul of each dtype, once per process (docs/reliability.md).
``FBA_CPU_BF16=0`` (or ``1``) overrides the detection, so any machine can run as the AVX2 kind (``make test-avx2``).
"""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512 BF16 / AMX, Arm's FEAT_BF16
# The flags that change CPU numbers (vector width, bf16, int8 dot products, AMX), which results and docs name
PERFORMANCE_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8",
                     "asimd", "sve", "bf16", "i8mm")
MIN_BF16_SPEED = 0.5  # bf16 at half the fp32 rate or better counts as native (emulation is ~60x slower)
OVERRIDE_ENV = "FBA_CPU_BF16"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The feature flags of the first CPU in /proc/cpuinfo (None where there is no such file)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def performance_flags() -> list[str]:
    """Which of :data:`PERFORMANCE_FLAGS` this CPU has (empty where /proc/cpuinfo cannot be read)."""
    flags = cpu_flags() or set()
    return [flag for flag in PERFORMANCE_FLAGS if flag in flags]


def matmul_rate(dtype: torch.dtype, size: int = 256, seconds: float = 0.05) -> float:
    """GFLOP/s of a ``size`` x ``size`` matmul in ``dtype`` on the CPU, timed for about ``seconds``."""
    import torch

    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up
    runs, start = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return 2 * size**3 * runs / elapsed / 1e9


@functools.cache
def cpu_native_bf16() -> tuple[bool, str]:
    """(native bf16?, why), decided once per process."""
    override = os.environ.get(OVERRIDE_ENV, "").strip()
    if override in ("0", "1"):
        return override == "1", f"{OVERRIDE_ENV}={override} says so"
    if override:
        raise ValueError(f"{OVERRIDE_ENV} must be 0 or 1, got {override!r}")
    flags = cpu_flags()
    if flags is not None:
        native = sorted(flags & set(NATIVE_BF16_FLAGS))
        if native:
            return True, f"the CPU has {', '.join(native)}"
        return False, f"the CPU has none of {', '.join(NATIVE_BF16_FLAGS)}, so bf16 would be emulated"
    import torch

    fp32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    native = bf16 >= MIN_BF16_SPEED * fp32
    return native, f"a 256x256 matmul runs at {bf16:.1f} GFLOP/s in bf16 against {fp32:.1f} in fp32"


def auto_cpu_precision() -> tuple[str, str]:
    """What ``train.precision=auto`` trains in on this CPU, and a sentence saying why."""
    native, why = cpu_native_bf16()
    return ("bf16", why) if native else ("fp32", why)
