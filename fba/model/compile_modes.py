"""``train.compile`` and ``embed.compile``: which ``torch.compile`` mode runs, per device (docs/performance.md,
"Compiled training and embedding").

``auto`` is eager on the CPU (Inductor's C++ build costs more than it saves on a tiny model) and ``default`` on a
GPU: Inductor fuses the eager elementwise work between the matmuls (LayerNorm, QuickGELU, casts, residuals), which
is what held the backbone at a quarter of the matmul peak. That GPU choice is **unmeasured**: ``benchmarks/gpu_suite``
times off / default / max-autotune-no-cudagraphs side by side, and the default follows its numbers.
``reduce-overhead`` (CUDA graphs inside ``torch.compile``) is not offered for embedding: the fast embedder captures
its own graphs per batch bucket (:mod:`fba.embed.fast`).
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

from fba.config import COMPILE_MODES
from fba.errors import InputError

GPU_DEFAULT = "default"  # unmeasured; see the module docstring

T = TypeVar("T")


class CompileModeError(InputError):
    """A ``*.compile`` config value that is not one of :data:`COMPILE_MODES`."""


def resolve_compile_mode(mode: str | bool, device: torch.device | str, field: str = "train.compile") -> str | None:
    """The ``torch.compile`` mode to use, or None for eager. ``true``/``false`` (the old boolean field) mean
    ``default``/``off``."""
    if isinstance(mode, bool) or str(mode).lower() in ("true", "false"):
        mode = "default" if str(mode).lower() == "true" else "off"
    if mode not in COMPILE_MODES:
        raise CompileModeError(f"{field}: unknown mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "auto":
        mode = GPU_DEFAULT if torch.device(device).type == "cuda" else "off"
    return None if mode == "off" else mode


def compile_kwargs(mode: str) -> dict:
    """Keyword arguments of ``torch.compile`` for a resolved mode (``default`` passes no mode)."""
    return {} if mode == "default" else {"mode": mode}


def maybe_compile(fn: T, mode: str | None, **kwargs) -> T:
    """``fn`` through ``torch.compile`` in ``mode``, or ``fn`` itself when ``mode`` is None."""
    if mode is None:
        return fn
    compiled: Callable = torch.compile(fn, **compile_kwargs(mode), **kwargs)
    return compiled  # type: ignore[return-value]
