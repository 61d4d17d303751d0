"""train.precision=auto on a CPU: bf16 only where the CPU computes it natively, decided from the CPU's flags (or,
without them, from a timed matmul of each dtype), and the log says which and why."""
from __future__ import annotations

import pytest
import torch

from fba.utils import precision
from fba.train.trainer import resolve_precision

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch):
    monkeypatch.delenv(precision.OVERRIDE_ENV, raising=False)  # `make test-avx2` sets it for the rest of the suite
    precision.cpu_native_bf16.cache_clear()
    yield
    precision.cpu_native_bf16.cache_clear()


def _cpuinfo(monkeypatch, tmp_path, text: str | None) -> None:
    path = tmp_path / "cpuinfo"
    if text is not None:
        path.write_text(text)
    original = precision.cpu_flags
    monkeypatch.setattr(precision, "cpu_flags", lambda: original(path))


@pytest.mark.parametrize("text, expected, why", [
    (AVX2_ONLY, "fp32", "has none of avx512_bf16, amx_bf16, bf16"),
    (SAPPHIRE_RAPIDS, "bf16", "has amx_bf16, avx512_bf16"),
    (GRAVITON3, "bf16", "has bf16"),
])
def test_auto_follows_the_cpu_flags(monkeypatch, tmp_path, capsys, text, expected, why):
    _cpuinfo(monkeypatch, tmp_path, text)
    monkeypatch.setattr(precision, "matmul_rate", lambda *a, **k: pytest.fail("flags were readable: no timing"))
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert f"train.precision=auto: {expected} on this CPU (the CPU {why}" in capsys.readouterr().out


@pytest.mark.parametrize("bf16_rate, expected", [(1.0, "fp32"), (80.0, "bf16")])
def test_without_flags_a_timed_matmul_decides_once(monkeypatch, tmp_path, bf16_rate, expected):
    _cpuinfo(monkeypatch, tmp_path, None)
    calls = []

    def rate(dtype, **kwargs):
        calls.append(dtype)
        return bf16_rate if dtype == torch.bfloat16 else 65.0

    monkeypatch.setattr(precision, "matmul_rate", rate)
    assert precision.auto_cpu_precision()[0] == expected
    assert precision.auto_cpu_precision()[0] == expected
    assert sorted(map(str, calls)) == ["torch.bfloat16", "torch.float32"]  # measured once, cached
    assert f"{bf16_rate:.1f} GFLOP/s in bf16 against 65.0 in fp32" in precision.cpu_native_bf16()[1]


@pytest.mark.parametrize("value, expected", [("0", "fp32"), ("1", "bf16")])
def test_the_environment_overrides_the_flags(monkeypatch, tmp_path, value, expected):
    _cpuinfo(monkeypatch, tmp_path, SAPPHIRE_RAPIDS if value == "0" else AVX2_ONLY)
    monkeypatch.setenv(precision.OVERRIDE_ENV, value)
    assert precision.auto_cpu_precision() == (expected, f"FBA_CPU_BF16={value} says so")


def test_a_bad_override_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(precision.OVERRIDE_ENV, "yes")
    with pytest.raises(ValueError, match="FBA_CPU_BF16 must be 0 or 1"):
        precision.cpu_native_bf16()


def test_explicit_precisions_are_kept():
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_matmul_rate_measures_something():
    assert precision.matmul_rate(torch.float32, size=32, seconds=0.01) > 0
