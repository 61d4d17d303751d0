"""The CUDA C++ forward of the cross-attention with stats (``csrc/cuda``): the prebuilt ``fba._C_cuda`` when
``FBA_BUILD_CUDA=1`` built it, else compiled on first use with ``torch.utils.cpp_extension.load`` (a GPU machine
with nvcc). Same outputs and saved log-sum-exp as ``cross_attention_triton.forward``, so the Triton backward
serves both.

The sources ship inside the package as ``fba/kernels/cuda_sources/`` (package data; in a checkout that folder is a
link to ``csrc/cuda``), found with ``importlib.resources`` wherever the package is installed.
"""
from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import torch


def sources() -> list[Path]:
    """The .cpp and .cu files of the CUDA extension, from the installed package's data."""
    folder = importlib.resources.files("fba.kernels") / "cuda_sources"
    if not folder.is_dir():
        return []
    return sorted(Path(str(f)) for f in folder.iterdir() if f.name.endswith((".cpp", ".cu")))


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled module (built once per process, cached by torch on disk between processes)."""
    try:
        from fba import _C_cuda

        return _C_cuda
    except ImportError:
        pass
    files = [str(p) for p in sources()]
    if not files:
        raise RuntimeError("fba.kernels: no CUDA sources in the package (fba/kernels/cuda_sources) and no prebuilt "
                           "fba._C_cuda; reinstall the package, or build it with FBA_BUILD_CUDA=1")
    from torch.utils.cpp_extension import load

    return load(name="fba_C_cuda", sources=files, extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "--use_fast_math", "-lineinfo"])


def forward(
    q: torch.Tensor, k_f: torch.Tensor, v_f: torch.Tensor, k_b: torch.Tensor, v_b: torch.Tensor,
    valid_f: torch.Tensor, valid_b: torch.Tensor, row_start: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns o_f, o_b [B,H,Nq,d], stats [B,3,M] fp32 and lse [2,B,H,Nq] fp32; CUDA tensors only."""
    if not q.is_cuda:
        raise ValueError(f"fba.kernels cuda backend: CPU tensors are refused (q is on {q.device}); "
                         "use backend 'auto' or 'reference'")
    o_f, o_b, stats, lse = extension().cross_attention_forward(q, k_f, v_f, k_b, v_b, valid_f, valid_b, row_start)
    return o_f, o_b, stats, lse
