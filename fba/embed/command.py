"""``fba embed``: image files to a features file, through the evaluation loader of :mod:`fba.data.loaders`.

It reads a folder (recursively, sorted) or a list file of images (DALI on a GPU when ``data.loader`` says so,
``--loader`` to choose) and writes a features file (:mod:`fba.retrieval.features_file`) with the rows in that order and
the paths relative to the images root; the captions file is keyed by those relative paths, as the data sets'
``captions.jsonl`` are. With ``--backend pytorch`` the embedder is :func:`fba.embed.fast.build_embedder`'s
(CUDA graphs per batch bucket on a GPU, the plain :class:`~fba.embed.embedder.Embedder` on the CPU); the other
backends run an exported model (:mod:`fba.deploy`). Under torchrun the rows are sharded across the ranks.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from fba.config import Config
from fba.data.captions import CaptionError, CaptionStore
from fba.data.datasets import EMBED_EXTENSIONS
from fba.utils.atomic import check_output_path
from fba.distributed import is_main_rank, launch_world_size, rank_device
from fba.data.loaders import Loaders
from fba.embed import shards
from fba.model.model_file import load_model
from fba.embed.embedder import Embedder, default_dtype
from fba.embed.fast import build_embedder
from fba.retrieval.features_file import SUFFIXES, save_features
from fba.embed.text_bank import TextBank
from fba.errors import InputError, UsageError



class ImageListError(InputError):
    """An --images folder or --list file that names no readable image."""


def list_image_folder(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ImageListError(f"--images {folder} is not a directory")
    named = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EMBED_EXTENSIONS and not p.is_dir())
    paths = [p for p in named if p.is_file()]
    unreadable = [f"{p.relative_to(folder)} ({_not_a_file(p)})" for p in named if not p.is_file()]
    if unreadable:  # nothing is dropped silently: a features file must hold every image the folder shows
        listed = ", ".join(unreadable[:3]) + (f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else "")
        raise ImageListError(f"--images {folder}: {len(unreadable)} entries named like images are not image files: "
                             f"{listed}; remove them or embed a --list")
    if not paths:
        raise ImageListError(f"--images {folder}: no image files ({', '.join(EMBED_EXTENSIONS)}) found")
    return paths


def _not_a_file(path: Path) -> str:
    if path.is_symlink():
        return "a symlink to nothing: dangling or a loop"
    return "not a regular file"


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
    cfg: Config,
    captions: tuple[list[str], list[str]] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Features of image files in the given order: the evaluation loader of ``cfg`` (no augmentation, CLIP
    normalisation at ``cfg.data``'s size, ``data.eval_batch_size`` at a time, DALI or torch as
    :class:`~fba.data.loaders.Loaders` decides for the embedder's device)."""
    items = [(str(p), 0, 0) for p in paths]
    loader = Loaders.for_device(cfg, embedder.device).eval(items)
    bank = None
    if captions is not None and embedder.uses_captions:
        bank = TextBank(*(embedder._prepare_text(c) for c in captions))
    return embedder.embed_loader(loader, bank, total=len(items), progress=progress)


def _captions(args: argparse.Namespace, keys: list[str], root: Path) -> tuple[list[str], list[str]]:
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
    with contextlib.ExitStack() as resources:  # an exported model's runtime is released however this ends
        return _embed(args, resources)


def _embed(args: argparse.Namespace, resources: contextlib.ExitStack) -> int:
    if args.out.suffix.lower() not in SUFFIXES:
        raise UsageError(f"--out {args.out} must end in {' or '.join(SUFFIXES)}")
    check_output_path(args.out, "--out")
    if args.images is not None:
        root = args.root or args.images
        paths = list_image_folder(args.images)
    else:
        root = args.root or args.list.parent
        paths = read_image_list(args.list, root)
    keys = relative_keys(paths, root)
    device = rank_device("cpu" if args.backend == "openvino" and args.device is None else args.device)
    progress = is_main_rank()
    if args.backend == "pytorch":
        model, cfg = load_model(args.model, device, default_dtype(device))
        embedder = build_embedder(model, device, cfg.embed)  # CUDA: bucketed CUDA graphs (docs/performance.md)
        data = dataclasses.replace(cfg.data, eval_batch_size=args.batch_size, num_workers=args.num_workers,
                                   loader=args.loader or cfg.data.loader)
        embed_cfg = dataclasses.replace(cfg, data=data)
        image_only = args.image_only or not embedder.uses_captions
        captions = None if image_only else _captions(args, keys, root)

        def compute(rows: range) -> torch.Tensor:
            texts = None if captions is None else tuple([c[i] for i in rows] for c in captions)
            return embed_images(embedder, [paths[i] for i in rows], embed_cfg, texts, progress)
    else:
        from fba.embed.backends import embed_exported, load_exported

        exported = resources.enter_context(load_exported(args.model, args.backend, device, args.trust_native_code,
                                                         args.performance_hint))
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

    if launch_world_size() > 1:
        shards.embed_sharded(args.out, keys, shards.shard_job(meta, args.model), compute, write)
    else:
        write(compute(range(len(keys))))
    return 0
