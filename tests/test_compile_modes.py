"""train.compile / embed.compile: the mode per device, the old boolean values, a clear error for a typo."""
from __future__ import annotations

import pytest
import torch

from fba.model.compile_modes import CompileModeError, compile_kwargs, maybe_compile, resolve_compile_mode
from fba.config import load_config
from fba.errors import InputError


def test_auto_is_eager_on_cpu_and_default_on_gpu():
    assert resolve_compile_mode("auto", "cpu") is None
    assert resolve_compile_mode("auto", torch.device("cuda")) == "default"
    assert resolve_compile_mode("max-autotune-no-cudagraphs", "cpu") == "max-autotune-no-cudagraphs"
    assert resolve_compile_mode("off", "cuda") is None


def test_old_boolean_values_still_mean_default_and_off():
    assert resolve_compile_mode(True, "cpu") == "default" and resolve_compile_mode("False", "cuda") is None
    cfg = load_config(overrides=["train.compile=true", "embed.compile=max-autotune"])
    assert resolve_compile_mode(cfg.train.compile, "cpu") == "default"
    assert resolve_compile_mode(cfg.embed.compile, "cuda", "embed.compile") == "max-autotune"


def test_unknown_mode_is_an_input_error_naming_the_field():
    with pytest.raises(CompileModeError, match="embed.compile: unknown mode 'fast'") as info:
        resolve_compile_mode("fast", "cpu", "embed.compile")
    assert isinstance(info.value, InputError)


def test_kwargs_and_eager_passthrough():
    assert compile_kwargs("default") == {} and compile_kwargs("max-autotune") == {"mode": "max-autotune"}
    fn = lambda x: x + 1  # noqa: E731
    assert maybe_compile(fn, None) is fn
