"""The frozen CLIP text tower (all 77 token states), CLIP's tokenizer, and an on-disk cache of the tower's outputs.

The tower is never trained: its parameters never require grad, it stays in eval mode whatever the parent
module does, and it runs under ``no_grad``. Its outputs depend only on the caption, so they may be cached once
per caption (``TextFeatureCache``); the trainable ``Linear(embed_dim -> width)`` lives in the cross-modal module.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import TextTransformer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from fba.utils.atomic import atomic_path

from .backbone import ClipArch, ClipCheckpoint, load_tower

__all__ = ["Text", "TextEncoder", "TextFeatureCache", "TextFeatures", "tokenize"]


class TextFeatures(NamedTuple):
    """The frozen tower's output for n captions: ``valid`` marks positions <= EOT (SOS, words, EOT)."""

    states: torch.Tensor  # [n, M, E] float
    valid: torch.Tensor  # [n, M] bool
    eot: torch.Tensor  # [n] int64

    def to(self, device: torch.device | str) -> "TextFeatures":
        return TextFeatures(*(t.to(device, non_blocking=True) for t in self))

    def select(self, index: torch.Tensor | slice) -> "TextFeatures":
        return TextFeatures(*(t[index] for t in self))

    @staticmethod
    def from_eot(states: torch.Tensor, eot: torch.Tensor) -> "TextFeatures":
        positions = torch.arange(states.shape[1], device=eot.device)
        return TextFeatures(states, positions[None, :] <= eot[:, None], eot)


Text = TextFeatures | torch.Tensor  # the tower's outputs, or token ids for the model to encode


@lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()  # the BPE vocabulary ships with open_clip: works offline


def tokenize(captions: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE token ids [n, context_length] int64; long captions are truncated with EOT kept last."""
    if isinstance(captions, str):
        raise TypeError("tokenize expects a sequence of captions, not one string")
    return _tokenizer()(list(captions), context_length=context_length)


class TextEncoder(nn.Module):
    """CLIP's text tower, frozen: token ids [n, 77] -> ``TextFeatures`` with states after ln_final @ text_projection."""

    def __init__(self, arch: ClipArch, checkpoint: ClipCheckpoint | None = None):
        super().__init__()
        spec = arch.text
        self.arch = arch
        self.tower = TextTransformer(
            context_length=spec.context_length,
            vocab_size=spec.vocab_size,
            width=spec.width,
            heads=spec.heads,
            layers=spec.layers,
            output_dim=arch.embed_dim,
            act_layer=arch.act_layer,
        )
        if checkpoint is not None:
            load_tower(self.tower, checkpoint.text, "text", checkpoint.path)
        self.requires_grad_(False)
        super().train(False)
        self._fingerprint: tuple[tuple[int, ...], str] | None = None

    @property
    def context_length(self) -> int:
        return self.arch.text.context_length

    @property
    def embed_dim(self) -> int:
        return self.arch.embed_dim

    def train(self, mode: bool = True) -> "TextEncoder":
        """Always eval: the tower is frozen, whatever mode the parent model is put in."""
        return super().train(False)

    @property
    def identity(self) -> str:
        """Arch name + a hash of the current weights, recomputed when a weight tensor was modified in place or
        replaced (``.to(dtype)`` makes new tensors without bumping any version), so cache keys never go stale."""
        params = list(self.tower.state_dict().values())
        versions = tuple((p._version, p.data_ptr(), p.dtype) for p in params)
        if self._fingerprint is None or self._fingerprint[0] != versions:
            digest = hashlib.sha256()
            for name, tensor in self.tower.state_dict().items():
                digest.update(name.encode())
                digest.update(str(tensor.dtype).encode())
                digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._fingerprint = (versions, digest.hexdigest()[:16])
        return f"{self.arch.name}-{self._fingerprint[1]}"

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        return tokenize(captions, self.context_length)

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> TextFeatures:
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(f"text token ids must be [n, {self.context_length}], got {list(tokens.shape)}")
        tower = self.tower
        tokens = tokens.to(tower.token_embedding.weight.device)
        x = tower.token_embedding(tokens) + tower.positional_embedding
        x = tower.transformer(x, attn_mask=tower.attn_mask.to(x.dtype))
        states = tower.ln_final(x) @ tower.text_projection
        return TextFeatures.from_eot(states, tokens.argmax(dim=-1))

    def encode(self, captions: Sequence[str]) -> TextFeatures:
        return self(self.tokenize(captions))


def caption_key(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()[:32]


class TextFeatureCache:
    """The frozen tower's outputs per caption on disk, fp16, so a training run encodes each caption once.

    Layout: ``<dir>/<tower identity>/<shard>.safetensors``, one shard per encoded batch holding the valid rows
    (SOS..EOT) of its captions back to back (``states`` [T, E], ``offsets`` [n+1]) and the caption keys in its
    metadata. Shards are written to a temporary name and renamed, so readers (and other ranks writing the same
    captions) never see a partial file; the index is rebuilt from the shards' headers when the cache opens.
    Rows after EOT are not stored: they are masked everywhere downstream, and read back as zeros.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._index: dict[str, dict[str, tuple[Path, int]]] = {}
        self._shards: dict[Path, tuple[torch.Tensor, torch.Tensor]] = {}

    def _tower_dir(self, identity: str) -> Path:
        return self.directory / identity

    def _load_index(self, identity: str) -> dict[str, tuple[Path, int]]:
        if identity in self._index:
            return self._index[identity]
        index: dict[str, tuple[Path, int]] = {}
        folder = self._tower_dir(identity)
        for shard in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
            try:
                with safe_open(str(shard), framework="pt") as handle:
                    keys = json.loads(handle.metadata()["keys"])
            except Exception as err:  # a shard we cannot read is an error, not a silent re-encode
                raise ValueError(f"{shard}: unreadable text-feature cache shard ({err}); delete it to re-encode") from err
            for position, key in enumerate(keys):
                index[key] = (shard, position)
        self._index[identity] = index
        return index

    def _shard(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        if path not in self._shards:
            tensors = load_file(str(path))
            self._shards[path] = (tensors["states"], tensors["offsets"])
        return self._shards[path]

    def _write_shard(self, identity: str, keys: list[str], features: TextFeatures) -> Path:
        lengths = (features.eot + 1).cpu()
        states = features.states.to(torch.float16).cpu()
        rows = torch.cat([states[i, : int(n)] for i, n in enumerate(lengths)])
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        folder = self._tower_dir(identity)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{hashlib.sha256(''.join(keys).encode()).hexdigest()[:24]}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"states": rows.contiguous(), "offsets": offsets}, str(tmp), metadata={"keys": json.dumps(keys)})
        self._shards[path] = (rows, offsets)
        return path

    def get_or_compute(
        self,
        captions: Sequence[str],
        encoder: TextEncoder,
        batch_size: int = 256,
        progress: bool = True,
    ) -> TextFeatures:
        """Features of ``captions`` (fp16 states, on the encoder's device); encodes and stores the missing ones."""
        identity = encoder.identity
        index = self._load_index(identity)
        keys = [caption_key(c) for c in captions]
        missing: dict[str, str] = {}
        for key, caption in zip(keys, captions):
            if key not in index:
                missing.setdefault(key, caption)
        if missing:
            todo = list(missing.items())
            starts = range(0, len(todo), batch_size)
            bar = tqdm(total=len(todo), desc="text features", unit="caption", disable=not progress or len(starts) < 2)
            for start in starts:
                chunk = todo[start : start + batch_size]
                chunk_keys = [k for k, _ in chunk]
                shard = self._write_shard(identity, chunk_keys, encoder.encode([c for _, c in chunk]))
                for position, key in enumerate(chunk_keys):
                    index[key] = (shard, position)
                bar.update(len(chunk))
            bar.close()
        length, dim = encoder.context_length, encoder.embed_dim
        states = torch.zeros(len(keys), length, dim, dtype=torch.float16)
        eot = torch.empty(len(keys), dtype=torch.int64)
        for row, key in enumerate(keys):
            shard, position = index[key]
            rows, offsets = self._shard(shard)
            start, end = int(offsets[position]), int(offsets[position + 1])
            states[row, : end - start] = rows[start:end]
            eot[row] = end - start - 1
        device = encoder.tower.token_embedding.weight.device
        return TextFeatures.from_eot(states, eot).to(device)
