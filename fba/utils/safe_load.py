"""Reading ``torch.save`` files without running the code a pickle can carry.

A full unpickling ``torch.load`` imports and calls whatever a file names, so a crafted ``model.pt`` runs code on the
machine that loads it. Every file ``fba`` reads (``model.pt``, training checkpoints, the per-rank RNG files,
DeepSpeed's own checkpoint files, CLIP weights) goes through :func:`safe_torch_load`: ``weights_only=True``, which
builds tensors and plain data (dict, list, tuple, str, numbers) only, plus an explicit allow-list of the few
harmless classes DeepSpeed writes into its ZeRO optimiser files. Anything else is refused with an
:class:`UnsafeFileError` naming the file (docs/reliability.md, "Loading").
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from fba.errors import InputError


class UnsafeFileError(InputError):
    """A file that holds more than tensors and plain data (or is not a torch file at all): it is not loaded."""


def _deepspeed_globals() -> list:
    """Classes DeepSpeed pickles into its checkpoints; each is data (an enum, a dataclass, a loss-scale record)
    whose unpickling sets attributes only."""
    try:
        from deepspeed.runtime.fp16.loss_scaler import (
            DynamicLossScaler, LossScaleConfig, LossScaleProfile, LossScaler,
        )
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:  # pragma: no cover - DeepSpeed is a dependency, but loading a model.pt must not need it
        return []
    return [ZeroStageEnum, LossScaler, DynamicLossScaler, LossScaleConfig, LossScaleProfile, fragment_address]


@contextmanager
def _allowed(extra: list) -> Iterator[None]:
    if not extra:
        yield
        return
    with torch.serialization.safe_globals(extra):
        yield


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (``torch.jit.save``): a zip holding code and a ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _numpy_array_globals() -> list:
    """What a pickled NumPy array names (the RNG files of earlier versions held ``np.random.get_state()``). NumPy 2
    pickles ``numpy._core.multiarray._reconstruct`` and NumPy 1 ``numpy.core.multiarray._reconstruct``; a file
    written under either loads under either."""
    import numpy as np

    core = np._core if int(np.__version__.split(".")[0]) >= 2 else np.core
    reconstruct = core.multiarray._reconstruct
    names = [(reconstruct, f"{package}.multiarray._reconstruct") for package in ("numpy._core", "numpy.core")]
    return [*names, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_torch_load(
    path: str | os.PathLike, what: str = "file", map_location: Any = "cpu", deepspeed: bool = False,
    numpy_arrays: bool = False,
) -> Any:
    """``torch.load(path, weights_only=True)``; ``deepspeed`` adds DeepSpeed's data classes to the allow-list,
    ``numpy_arrays`` NumPy's array reconstruction (data only, as torch's documentation allows).

    Raises :class:`UnsafeFileError` (one line, naming ``path`` and the offending global) for a file whose
    pickle names any other class or function, for a TorchScript archive (with the command that converts it), and
    for a file torch cannot read.
    """
    path = Path(path)
    if is_torchscript(path):
        raise UnsafeFileError(
            f"{what} {path} is a TorchScript archive, not a torch.save file; only CLIP weights (model.pretrained) "
            "are read from one"
        )
    try:
        extra = (_deepspeed_globals() if deepspeed else []) + (_numpy_array_globals() if numpy_arrays else [])
        with _allowed(extra):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        offending = _unsafe_globals(path)
        named = f" ({', '.join(offending)})" if offending else ""
        raise UnsafeFileError(
            f"{what} {path} holds Python objects beyond tensors and plain data{named}; it is refused because "
            "unpickling it could run code"
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeFileError(f"{what} {path} cannot be read as a torch file ({first_line})") from None


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a legacy (non-zip) or broken file: the refusal itself is what matters
        return []


class _ScriptObject:
    """Stands in for a TorchScript class while its pickle is read: keeps the attributes, runs nothing."""

    qualified_name = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _script_class(qualified_name: str) -> type:
    return type("ScriptObject", (_ScriptObject,), {"qualified_name": qualified_name})


_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
                   ("torch._utils", "_rebuild_parameter"), ("collections", "OrderedDict")}


class _ScriptArchiveUnpickler(pickle.Unpickler):
    """Builds tensors, plain containers and :class:`_ScriptObject` records; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_class(f"{module}.{name}")
        if (module, name) in _TENSOR_GLOBALS or (module == "torch" and name.endswith("Storage")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a TorchScript weights archive")


class _ScriptArchivePickle:
    """The ``pickle_module`` torch's zip reader takes: it only ever builds an ``Unpickler``."""

    Unpickler = _ScriptArchiveUnpickler


_MEMBER_LIST = re.compile(r"^class (\w+)\(Module\):\n  __parameters__ = \[([^\]]*)\]\n  __buffers__ = \[([^\]]*)\]", re.M)


def _state_members(archive: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """Parameter and buffer names of every class in the archive's code (read as text; never executed)."""
    members: dict[str, set[str]] = {}
    for name in archive.namelist():
        if name.startswith(f"{prefix}code/") and name.endswith(".py"):
            module = name[len(f"{prefix}code/"):-3].replace("/", ".")
            for cls, params, buffers in _MEMBER_LIST.findall(archive.read(name).decode("utf-8", "replace")):
                members[f"{module}.{cls}"] = set(re.findall(r'"(\w+)"', params + buffers))
    return members


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive (what ``torch.jit.load(path).state_dict()`` gives),
    read from its pickle and its code's member lists without loading or running the code."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        data_pickle = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
        members = _state_members(archive, data_pickle[: -len("data.pkl")])
    reader = torch._C.PyTorchFileReader(str(path))
    try:
        root = torch.serialization._load(reader, "cpu", _ScriptArchivePickle, pickle_file="data.pkl")
    except pickle.UnpicklingError as err:
        raise UnsafeFileError(f"{path}: {err}; it is refused because unpickling it could run code") from None
    state: dict[str, torch.Tensor] = {}

    def walk(obj: Any, prefix: str) -> None:
        attributes = obj.state if isinstance(obj.state, dict) else {}
        names = members.get(obj.qualified_name, set())
        for key, value in attributes.items():
            if isinstance(value, torch.Tensor) and key in names:
                state[prefix + key] = value
            elif isinstance(value, _ScriptObject):
                walk(value, f"{prefix}{key}.")

    if not isinstance(root, _ScriptObject):
        raise UnsafeFileError(f"{path}: not a TorchScript module archive")
    walk(root, "")
    return state
