"""The model ``fba serve`` keeps warm: uint8 images and token ids in, ``fba embed``'s feature rows out.

One object per backend choice: ``pytorch`` runs ``model.pt`` through the embedder ``fba embed`` uses (on CUDA
:class:`~fba.embed.fast.FastEmbedder`: one CUDA graph per batch bucket, captured by :meth:`ServedModel.warm`
before the server reports ready; on the CPU the plain :class:`~fba.embed.embedder.Embedder`, which pads nothing),
the others run an ``fba export`` through :mod:`fba.embed.backends`. :func:`describe` gives the contract (feature,
size, image size, normalisation, checkpoint sha256) without loading a runtime, so the server's configuration can
say it before the model loads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import fba
from fba.data.transforms import CLIP_MEAN, CLIP_STD, ClipNormalise
from fba.deploy.export import file_sha256, read_metadata, resolve_model_file
from fba.embed.embedder import Embedder, default_dtype
from fba.embed.fast import FastEmbedder
from fba.errors import UsageError
from fba.model.model_file import load_model
from fba.model.text import tokenize

SERVE_BACKENDS = ("pytorch", "onnxruntime", "aoti", "openvino")
FEATURES = ("image", "full")
EXPORT_FORMAT = {"onnxruntime": "onnx", "openvino": "onnx", "aoti": "aoti"}


@dataclass(frozen=True)
class ServeSpec:
    """Everything the server process needs to rebuild the model (JSON-able: it travels in Triton's config)."""

    model: str
    backend: str = "pytorch"
    feature: str = "image"
    device: str = "cpu"
    batches: tuple[int, ...] = (1, 8, 32)
    trust_native_code: bool = False
    performance_hint: str = "latency"


def describe(spec: ServeSpec) -> dict:
    """The served model's contract, from its files alone."""
    if spec.backend not in SERVE_BACKENDS:
        raise UsageError(f"--backend {spec.backend}: choose from {', '.join(SERVE_BACKENDS)}")
    if spec.backend == "pytorch":
        path = Path(spec.model)
        model, cfg = load_model(path, "cpu")
        if spec.feature == "full" and getattr(model, "cross_modal", None) is None:
            raise UsageError(f"{path} is an image-only model (no cross-modal module): serve --feature image")
        height, width = model.backbone.image_size
        dim, sha256 = model.feature_dim(spec.feature == "full"), file_sha256(path)
        arch = cfg.model.arch
    else:
        path = resolve_model_file(Path(spec.model), EXPORT_FORMAT[spec.backend])
        meta = read_metadata(path)
        if meta["feature"] != spec.feature:
            raise UsageError(f"{path} was exported with --feature {meta['feature']}; serve it with --feature "
                             f"{meta['feature']}, or export --feature {spec.feature}")
        (height, width), dim = meta["image_size"], meta["feature_dim"]
        sha256, arch = meta.get("checkpoint_sha256"), meta.get("arch")
    return {
        "feature": spec.feature,
        "feature_dim": int(dim),
        "image_size": [int(height), int(width)],
        "image_input": "uint8 RGB [N, 3, H, W] resized to image_size (bicubic), or encoded image files",
        "normalisation": "(x / 255 - mean) / std in the server",
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "features": "float32 [N, feature_dim], L2-normalised rows, as fba embed writes them",
        "backend": spec.backend,
        "model_file": path.name,
        "checkpoint_sha256": sha256,
        "arch": arch,
        "fba_version": fba.__version__,
    }


class ServedModel:
    """``model(images uint8 [N,3,H,W], fg_tokens, bg_tokens) -> float32 [N, D]`` for one :class:`ServeSpec`."""

    def __init__(self, spec: ServeSpec, contract: dict | None = None):
        """``contract``: :func:`describe`'s, when the caller has it already (the server's configuration carries
        it), so the model file is read and hashed once."""
        self.spec = spec
        self.contract = contract or describe(spec)
        self.image_size = tuple(self.contract["image_size"])
        self.device = torch.device(spec.device)
        self.exported = None
        if spec.backend == "pytorch":
            model, _ = load_model(spec.model, self.device, default_dtype(self.device))
            if self.device.type == "cuda":
                self.embedder: Embedder = FastEmbedder(model, self.device, batches=spec.batches)
            else:
                self.embedder = Embedder(model, self.device)
                self.normalise = ClipNormalise().to(self.device)
        else:
            from fba.embed.backends import load_exported

            self.exported = load_exported(Path(spec.model), spec.backend, self.device, spec.trust_native_code,
                                          spec.performance_hint)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, fg_tokens: torch.Tensor | None = None,
                 bg_tokens: torch.Tensor | None = None) -> np.ndarray:
        if self.exported is not None:
            return np.asarray(self.exported(images, fg_tokens, bg_tokens), dtype=np.float32)
        captions = None if fg_tokens is None else (fg_tokens, bg_tokens)
        if isinstance(self.embedder, FastEmbedder):  # uint8 in: normalised on the device, inside the graph
            return self.embedder.embed(images, captions).numpy()
        return self.embedder.embed(self.normalise(images.to(self.device)), captions).numpy()

    def warm(self) -> list[int]:
        """Run every batch bucket once (CUDA: captures its graph), so the first request pays for nothing."""
        height, width = self.image_size
        for rows in self.spec.batches:
            images = torch.zeros((rows, 3, height, width), dtype=torch.uint8)
            tokens = None
            if self.spec.feature == "full":
                tokens = tokenize([""] * rows)  # empty captions: SOS, EOT
            self(images, tokens, tokens)
        return list(self.spec.batches)

    def close(self) -> None:
        if self.exported is not None:
            self.exported.close()
