"""Retrieval features of images (SPEC §6): the reusable :class:`Embedder` and the ``fba embed`` command.

``Embedder(model, device, dtype)`` runs ``FBA.extract`` in eval mode on batches: with captions the full
feature (post-BN CLS, F_f^V, F_f^T), without them the image-only one (post-BN CLS). The trainer's periodic
evaluation and ``fba eval --checkpoint`` use the same object, so a model is always measured the same way.

``fba embed`` reads a folder (recursively, sorted) or a list file of images, and writes a features file
(``fba.engine.features_io``) with the rows in that order and the paths relative to the images root; the
captions file is keyed by those relative paths, as the data sets' ``captions.jsonl`` are.
"""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fba.engine.text_bank import TextBank
from fba.errors import InputError, UsageError
from fba.model.text import Text, TextFeatures

EMBED_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that have it (the features are L2-normalised, bf16 moves them by ~1e-2), fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


class Embedder:
    """Batched ``FBA.extract``; returns float32 features on the CPU."""

    def __init__(self, model: nn.Module, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
        self.model = model
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype = dtype or default_dtype(self.device)
        self.param_dtype = next(model.parameters()).dtype
        # Weights kept in fp32 compute in a lower dtype through autocast; weights already in that dtype
        # (a bf16 DeepSpeed module) take inputs of their own dtype.
        self.autocast = self.dtype != self.param_dtype and self.dtype != torch.float32

    @property
    def uses_captions(self) -> bool:
        return getattr(self.model, "cross_modal", None) is not None

    def _context(self):
        if self.autocast:
            return torch.autocast(device_type=self.device.type, dtype=self.dtype)
        return contextlib.nullcontext()

    def text_inputs(self, captions: Sequence[str]) -> Text:
        """Token ids, or the cached tower features when the model has a text cache."""
        if self.model.text_cache is not None:
            return self.model.encode_captions(list(captions))
        return self.model.text_encoder.tokenize(list(captions))

    def _prepare_text(self, text: Text | Sequence[str]) -> Text:
        if isinstance(text, TextFeatures):
            return TextFeatures(text.states.to(self.device, self.param_dtype), text.valid.to(self.device), text.eot.to(self.device))
        if isinstance(text, torch.Tensor):
            return text.to(self.device)
        return self._prepare_text(self.text_inputs(text))

    @torch.no_grad()
    def embed(self, images: torch.Tensor, captions: tuple | None = None) -> torch.Tensor:
        """Features [B, D] of normalised ``images`` [B, 3, H, W]; ``captions`` = (fg, bg) as strings, token ids
        or TextFeatures, or None for the image-only feature."""
        was_training = self.model.training
        self.model.eval()
        try:
            images = images.to(self.device, self.param_dtype, non_blocking=True)
            text = None
            if captions is not None and self.uses_captions:
                text = tuple(self._prepare_text(t) for t in captions)
            with self._context():
                features = self.model.extract(images, text)
        finally:
            self.model.train(was_training)
        return features.float().cpu()

    def embed_loader(
        self, loader: Iterable[dict], bank: TextBank | None = None, total: int | None = None, desc: str = "embed",
        progress: bool = True,
    ) -> torch.Tensor:
        """Features of every item of an evaluation loader, row ``i`` = item ``i`` (placed by the batch's ``index``)."""
        rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, dynamic_ncols=True, leave=False)
        for batch in loader:
            index = batch["index"]
            captions = bank.select(index, self.param_dtype) if bank is not None else None
            rows.append((index.cpu(), self.embed(batch["images"], captions)))
            bar.update(len(index))
        bar.close()
        if not rows:
            raise ValueError("the loader gave no images to embed")
        index = torch.cat([i for i, _ in rows])
        features = torch.cat([f for _, f in rows])
        if not torch.equal(torch.sort(index).values, torch.arange(len(index))):
            raise ValueError("the loader's batch indices do not cover the items exactly once")
        out = torch.empty_like(features)
        out[index] = features
        return out


class RetrievalEval:
    """Query and gallery of a data set with their text inputs: ``run(embedder)`` gives the retrieval metrics.

    The feature follows ``cfg.eval.feature`` ("full" with captions, "image" without); the metrics dict is that of
    :func:`fba.engine.evaluator.evaluate_features` plus ``feature``.
    """

    def __init__(self, cfg, dataset, query_bank: TextBank | None = None, gallery_bank: TextBank | None = None):
        if cfg.eval.feature not in ("full", "image"):
            raise ValueError(f"eval.feature must be 'full' or 'image', got {cfg.eval.feature!r}")
        self.cfg = cfg
        self.dataset = dataset
        self.banks = {"query": query_bank, "gallery": gallery_bank}

    @classmethod
    def for_model(cls, cfg, model: nn.Module, dataset, store, device: torch.device) -> RetrievalEval:
        """With the query and gallery captions of ``store`` encoded by ``model``'s text tower when the full
        feature is asked for and the model has a cross-modal module (else image-only, no text work)."""
        banks = {"query": None, "gallery": None}
        if cfg.eval.feature == "full" and store is not None and model.cross_modal is not None:
            banks = {split: TextBank.for_split(model, dataset, split, store, device) for split in banks}
        return cls(cfg, dataset, banks["query"], banks["gallery"])

    def _loader(self, items, device: torch.device):
        from fba.engine.trainer import use_dali

        if use_dali(self.cfg, device):
            from fba.data.dali import build_dali_eval_loader

            return build_dali_eval_loader(self.cfg, items)
        from fba.data import build_eval_loader

        return build_eval_loader(self.cfg, items)

    def embed(self, embedder: Embedder, progress: bool = True) -> dict:
        """``{"query": (features, pids, camids), "gallery": (...), "feature": "full" | "image"}``."""
        full = self.cfg.eval.feature == "full" and embedder.uses_captions
        result: dict = {"feature": "full" if full else "image"}
        for split in ("query", "gallery"):
            items = self.dataset.split(split)
            bank = self.banks[split] if full else None
            if full and bank is None:
                raise ValueError(f"eval.feature=full needs the {split} captions")
            features = embedder.embed_loader(
                self._loader(items, embedder.device), bank, total=len(items), desc=f"embed {split}", progress=progress
            )
            result[split] = (features, np.array([pid for _, pid, _ in items]), np.array([cam for _, _, cam in items]))
        return result

    def score(self, embedded: dict, metric: str = "cosine", rerank: bool | None = None) -> dict:
        """The metrics of features from :meth:`embed` (``rerank`` None: the config's ``eval.rerank``)."""
        from fba.engine.evaluator import evaluate_features

        (qf, q_pids, q_cams), (gf, g_pids, g_cams) = embedded["query"], embedded["gallery"]
        metrics = evaluate_features(
            qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric,
            rerank=self.cfg.eval.rerank if rerank is None else rerank, max_rank=self.cfg.eval.max_rank,
        )
        metrics["feature"] = embedded["feature"]
        return metrics

    def save(self, embedded: dict, path: Path, meta: dict | None = None) -> Path:
        """Write features from :meth:`embed` with their split, pids, camids and paths, so that
        ``fba eval --features`` can score them again (other distance, re-ranking) without the model."""
        from fba.engine.features_io import save_features

        splits = ("query", "gallery")
        return save_features(
            path,
            torch.cat([torch.as_tensor(embedded[split][0]) for split in splits]),
            [str(item[0]) for split in splits for item in self.dataset.split(split)],
            pids=np.concatenate([embedded[split][1] for split in splits]),
            camids=np.concatenate([embedded[split][2] for split in splits]),
            split=[split for split in splits for _ in range(len(embedded[split][1]))],
            meta={"feature": embedded["feature"], **(meta or {})},
        )

    def run(self, embedder: Embedder, progress: bool = True, metric: str = "cosine", rerank: bool | None = None) -> dict:
        return self.score(self.embed(embedder, progress), metric, rerank)


class ImageListError(InputError):
    """An --images folder or --list file that names no readable image."""


def list_image_folder(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ImageListError(f"--images {folder} is not a directory")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EMBED_EXTENSIONS)
    if not paths:
        raise ImageListError(f"--images {folder}: no image files ({', '.join(EMBED_EXTENSIONS)}) found")
    return paths


def read_image_list(list_file: Path, root: Path) -> list[Path]:
    """One image path per line (blank lines and ``#`` comments skipped); relative paths are under ``root``."""
    if not list_file.is_file():
        raise ImageListError(f"--list {list_file} does not exist")
    paths = []
    for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        path = Path(entry) if Path(entry).is_absolute() else root / entry
        if not path.is_file():
            raise ImageListError(f"{list_file}, line {line_no}: image {path} does not exist")
        paths.append(path)
    if not paths:
        raise ImageListError(f"--list {list_file} names no image")
    return paths


def relative_keys(paths: Sequence[Path], root: Path) -> list[str]:
    keys = []
    for path in paths:
        try:
            keys.append(path.resolve().relative_to(root.resolve()).as_posix())
        except ValueError:
            keys.append(path.resolve().as_posix())
    return keys


def embed_images(
    embedder: Embedder,
    paths: Sequence[Path],
    image_size: tuple[int, int],
    captions: tuple[list[str], list[str]] | None = None,
    batch_size: int = 256,
    num_workers: int = 2,
    progress: bool = True,
) -> torch.Tensor:
    """Features of image files in the given order (no augmentation; CLIP normalisation at ``image_size``)."""
    from torch.utils.data import DataLoader

    from fba.data.transforms import ImageDataset, build_eval_transform, collate_batch

    items = [(str(p), 0, 0) for p in paths]
    loader = DataLoader(
        ImageDataset(items, build_eval_transform(*image_size)), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=collate_batch, pin_memory=embedder.device.type == "cuda",
    )
    bank = None
    if captions is not None and embedder.uses_captions:
        bank = TextBank(*(embedder._prepare_text(c) for c in captions))
    return embedder.embed_loader(loader, bank, total=len(items), progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path,
                        help="model.pt written by `fba train` (pytorch backend), or the folder (or file) written by "
                        "`fba export` (onnxruntime: model.onnx, aoti: model.pt2)")
    parser.add_argument("--backend", choices=("pytorch", "onnxruntime", "aoti"), default="pytorch",
                        help="what runs the model (docs/deployment.md); the features file is the same")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, metavar="DIR", help="embed every image under DIR (recursive, sorted)")
    source.add_argument("--list", type=Path, metavar="FILE", help="embed the images listed in FILE, one per line")
    parser.add_argument("--root", type=Path, help="root of relative paths in --list and of the caption keys "
                        "(default: the --images folder, or the list file's folder)")
    parser.add_argument("--captions", type=Path, help="captions.jsonl keyed by path relative to the images root")
    parser.add_argument("--image-only", action="store_true", help="image-only feature (post-BN CLS), no captions")
    parser.add_argument("--out", required=True, type=Path, help="features file to write: .safetensors or .npz")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available; under "
                        "torchrun each rank takes cuda:LOCAL_RANK)")


def _captions(args: argparse.Namespace, keys: list[str], root: Path) -> tuple[list[str], list[str]]:
    from fba.data.captions import CaptionError, CaptionStore

    if args.captions is None:
        raise UsageError("this model uses captions; give --captions captions.jsonl, or --image-only")
    store = CaptionStore.load(args.captions)
    missing = [key for key in keys if key not in store]
    if missing:
        listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise CaptionError(f"{len(missing)} images have no captions in {args.captions} (keys relative to "
                           f"{root}): {listed}; give their captions, or use --image-only")
    return [store[k].fg for k in keys], [store[k].bg for k in keys]


def run(args: argparse.Namespace) -> int:
    from fba.deploy import shards
    from fba.engine.features_io import SUFFIXES, save_features

    if args.out.suffix.lower() not in SUFFIXES:
        raise UsageError(f"--out {args.out} must end in {' or '.join(SUFFIXES)}")
    if args.images is not None:
        root = args.root or args.images
        paths = list_image_folder(args.images)
    else:
        root = args.root or args.list.parent
        paths = read_image_list(args.list, root)
    keys = relative_keys(paths, root)
    device = shards.rank_device(args.device)
    progress = shards.is_main_rank()
    if args.backend == "pytorch":
        from fba.engine.checkpoint import load_model
        from fba.engine.fast_embed import build_embedder

        model, cfg = load_model(args.model, device, default_dtype(device))
        embedder = build_embedder(model, device, cfg.embed)  # CUDA: bucketed CUDA graphs (docs/performance.md)
        image_only = args.image_only or not embedder.uses_captions
        captions = None if image_only else _captions(args, keys, root)

        def compute(rows: range) -> torch.Tensor:
            texts = None if captions is None else tuple([c[i] for i in rows] for c in captions)
            return embed_images(embedder, [paths[i] for i in rows], (cfg.data.height, cfg.data.width), texts,
                                args.batch_size, args.num_workers, progress)
    else:
        from fba.deploy.runtime import embed_exported, load_exported

        exported = load_exported(args.model, args.backend, device)
        image_only = exported.feature == "image"
        if args.image_only and not image_only:
            raise UsageError(f"{exported.path} was exported with --feature full; export --feature image "
                             "for the image-only feature")
        captions = None if image_only else _captions(args, keys, root)

        def compute(rows: range) -> torch.Tensor:
            texts = None if captions is None else tuple([c[i] for i in rows] for c in captions)
            return embed_exported(exported, [paths[i] for i in rows], texts, args.batch_size, args.num_workers, progress)
    feature = "image" if image_only else "full"
    meta = {"feature": feature, "model": str(args.model), "root": str(root), "backend": args.backend}

    def write(features: torch.Tensor) -> None:
        save_features(args.out, features, keys, meta=meta)
        print(f"wrote {len(keys)} x {features.shape[1]} features ({feature}) to {args.out}")

    if shards.world_size() > 1:
        shards.embed_sharded(args.out, keys, shards.shard_job(meta, args.model), compute, write)
    else:
        write(compute(range(len(keys))))
    return 0
