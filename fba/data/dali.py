"""The NVIDIA DALI input pipeline: the GPU twin of the torchvision loaders in ``fba.data.transforms``.

Why DALI: at 384x128 a ViT-B/16 step on one GPU eats several thousand images per second, more than a few CPU
cores can decode, resize and augment with PIL. DALI decodes on the GPU (``device='mixed'``: nvJPEG) and runs the
augmentation there; without a GPU (``device_id=None``) the same graph runs on the CPU, which is how it is tested.

What is the same as the torch loader (``docs/input_pipeline.md`` has the measured bounds):
- the batches: the Python side feeds DALI through ``external_source`` from the same :class:`PKSampler`, so a batch
  holds the same P x K identities, split the same way across ranks, as ``build_train_loader`` gives;
- the batch dict: ``images`` float [B,3,H,W] normalised with CLIP mean/std, ``pids``, ``camids``, ``index`` int64;
- the augmentation, with the constants of ``fba.data.transforms``: bicubic resize, flip, zero pad + random crop,
  random erasing that fills the box with per-pixel N(0, 1) noise. The random *parameters* (flip, crop offset,
  erasing box) are drawn in Python with torchvision's own sampling rules, including RandomErasing's ten tries,
  and fed to DALI next to the encoded files; only the erasing noise is drawn inside DALI.

Determinism: the parameters of epoch ``e`` on rank ``r`` come from ``numpy.random.default_rng((seed, r, e))``,
so they are the same on every run and after a resume. The erasing noise comes from DALI's generator, seeded
with ``seed * 1000 + r`` when the pipeline is built: it repeats for a run replayed from its start, not after a
resume in the middle (the noise values are not worth a checkpoint).

A file DALI cannot decode stops the pipeline with a generic error; the loader then re-reads the files of the
batches in flight with PIL and raises :class:`ImageReadError` naming the bad one.
"""
from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.transforms import InterpolationMode

from fba.data.datasets import Item
from fba.data.sampler import PKSampler, SamplerEpochs
from fba.data.transforms import (
    CLIP_MEAN, CLIP_STD, ERASING_RATIO, ERASING_SCALE, INTERPOLATION, ImageReadError, read_image,
)

try:
    from nvidia.dali import fn, pipeline_def, types
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError as err:  # pragma: no cover - depends on the installation
    raise ImportError(
        "fba.data.dali needs NVIDIA DALI (pip install nvidia-dali-cuda130); use data.loader=torch without it"
    ) from err

if TYPE_CHECKING:
    from fba.config import Config


def _leave_inherited_pipelines_alone() -> None:
    """In a forked child (a DataLoader worker of a later torch loader) the parent's pipelines are copies without
    their threads: freeing one there (its last reference dropped, or the garbage collector) shuts its executor down
    and waits on those threads forever (a worker hung in its first seconds). The child never runs a pipeline, so
    it keeps every inherited one alive until it exits."""
    import gc

    from nvidia.dali.pipeline import Pipeline

    _INHERITED.extend(o for o in gc.get_objects() if issubclass(type(o), Pipeline))


_INHERITED: list = []
os.register_at_fork(after_in_child=_leave_inherited_pipelines_alone)

PIXEL_MEAN = [255.0 * m for m in CLIP_MEAN]
PIXEL_STD = [255.0 * s for s in CLIP_STD]
ERASING_TRIES = 10
# The torch loaders' resize interpolation in DALI's terms; a KeyError here: a new mode needs its DALI twin.
DALI_INTERPOLATION = {InterpolationMode.BICUBIC: types.INTERP_CUBIC}[INTERPOLATION]


def default_device_id() -> int | None:
    """The current CUDA device (the trainer sets it per rank), or None: DALI then runs on the CPU."""
    return torch.cuda.current_device() if torch.cuda.is_available() else None


def read_encoded(path: str) -> np.ndarray:
    """The bytes of ``path`` for the decoder; a missing or unreadable file names itself here."""
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


# ---------------------------------------------------------------------------------------------------------------
# Augmentation parameters, drawn in Python with torchvision's rules


def sample_erasing_box(
    rng: np.random.Generator, height: int, width: int,
    scale: tuple[float, float] = ERASING_SCALE, ratio: tuple[float, float] = ERASING_RATIO,
) -> tuple[int, int, int, int] | None:
    """``(top, left, h, w)`` as ``torchvision.transforms.RandomErasing.get_params`` draws it, or None when all
    ten tries give a box that does not fit (torchvision then leaves the image as it is)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(ERASING_TRIES):
        erase_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        h = int(round(math.sqrt(erase_area * aspect)))
        w = int(round(math.sqrt(erase_area / aspect)))
        if h < height and w < width:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


def sample_train_params(
    rng: np.random.Generator, count: int, height: int, width: int,
    flip_prob: float, padding: int, erasing_prob: float,
) -> dict[str, np.ndarray]:
    """Per-sample parameters of flip -> pad + random crop -> random erasing, as DALI argument inputs.

    ``crop_start`` is the (row, col) of the crop window in the *unflipped* resized image (negative or past the
    edge reads the zero padding), so that DALI can crop first and mirror after, which gives the same pixels
    as torchvision's flip, then pad, then crop at ``(i, j)`` of the padded image.
    """
    flip = rng.random(count) < flip_prob
    i = rng.integers(0, 2 * padding + 1, count)
    j = rng.integers(0, 2 * padding + 1, count)
    col = np.where(flip, padding - j, j - padding)
    erase_anchor = np.zeros((count, 2), np.float32)
    erase_shape = np.zeros((count, 2), np.float32)
    for n in range(count):
        if rng.random() < erasing_prob:
            box = sample_erasing_box(rng, height, width)
            if box is not None:
                erase_anchor[n], erase_shape[n] = box[:2], box[2:]
    return {
        "mirror": flip.astype(np.int32),
        "crop_start": np.stack([i - padding, col], axis=1).astype(np.int32),
        "erase_anchor": erase_anchor,
        "erase_shape": erase_shape,
    }


def dali_train_inputs(params: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The parameters as the train graph takes them (``TRAIN_INPUTS``): the erasing noise is drawn only for the
    box, ``[3, h, w]``, and shifted into place by a slice that starts at ``-anchor`` (a full-size noise image per
    sample made the CPU pipeline four times slower)."""
    box = params["erase_shape"].astype(np.int32)
    noise_shape = np.concatenate([np.full((len(box), 1), 3, np.int32), box], axis=1)
    noise_start = -params["erase_anchor"].astype(np.int32)
    return (params["mirror"], params["crop_start"], params["erase_anchor"], params["erase_shape"], noise_shape,
            noise_start)


TRAIN_INPUTS = ("mirror", "crop_start", "erase_anchor", "erase_shape", "noise_shape", "noise_start")


# ---------------------------------------------------------------------------------------------------------------
# The DALI graphs


def _decode_resize(encoded, height: int, width: int, on_gpu: bool):
    images = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
    return fn.resize(images, size=[height, width], interp_type=DALI_INTERPOLATION, antialias=True)


def _normalise(images, mirror=0):
    return fn.crop_mirror_normalize(
        images, dtype=types.FLOAT, output_layout="CHW", mean=PIXEL_MEAN, std=PIXEL_STD, mirror=mirror
    )


def _train_graph(source: Callable, height: int, width: int, on_gpu: bool):
    encoded, index, mirror, crop_start, erase_anchor, erase_shape, noise_shape, noise_start = fn.external_source(
        source=source, num_outputs=2 + len(TRAIN_INPUTS), batch=True, cycle="raise", no_copy=False
    )
    images = _decode_resize(encoded, height, width, on_gpu)
    images = fn.slice(
        images, start=crop_start, shape=[height, width], axis_names="HW", out_of_bounds_policy="pad", fill_values=0
    )
    images = _normalise(images, mirror=mirror)
    images = fn.erase(images, anchor=erase_anchor, shape=erase_shape, axis_names="HW", fill_value=0.0)
    noise = fn.random.normal(device="gpu" if on_gpu else "cpu", shape=noise_shape, dtype=types.FLOAT)
    noise = fn.slice(noise, start=noise_start, shape=[height, width], axes=[1, 2], out_of_bounds_policy="pad",
                     fill_values=0.0)
    return images + noise, index


def _eval_graph(source: Callable, height: int, width: int, on_gpu: bool):
    encoded, index = fn.external_source(source=source, num_outputs=2, batch=True, cycle="raise", no_copy=False)
    return _normalise(_decode_resize(encoded, height, width, on_gpu)), index


def _build_pipeline(graph: Callable, source, batch_size: int, height: int, width: int, num_threads: int,
                    device_id: int | None, seed: int):
    @pipeline_def(batch_size=batch_size, num_threads=max(1, num_threads), device_id=device_id, seed=seed,
                  prefetch_queue_depth=2, exec_dynamic=True)
    def pipeline():
        return graph(source, height, width, device_id is not None)

    pipe = pipeline()
    pipe.build()
    return pipe


# ---------------------------------------------------------------------------------------------------------------
# The Python side: external sources and the loaders


class _BatchSource:
    """Feeds DALI one batch of encoded files (plus indices and parameters) per call; remembers what is in
    flight so that a decoding error can be traced to its file."""

    def __init__(self, items: Sequence[Item], batches: Callable[[], Iterator[list[int]]],
                 params: Callable[[int], dict[str, np.ndarray]] | None = None):
        self.items = items
        self.batches = batches
        self.params = params
        self.in_flight: deque[list[int]] = deque()

    def __iter__(self) -> Iterator[tuple]:
        return self._generate()

    def _generate(self) -> Iterator[tuple]:
        for batch in self.batches():
            encoded = [read_encoded(self.items[i][0]) for i in batch]
            index = np.asarray(batch, dtype=np.int64)
            self.in_flight.append(batch)
            if self.params is None:
                yield encoded, index
            else:
                yield (encoded, index, *dali_train_inputs(self.params(len(batch))))


class _DALILoader:
    """Runs a pipeline through ``DALIGenericIterator`` and turns its outputs into the loaders' batch dict."""

    def __init__(self, items: Sequence[Item], source: _BatchSource, build: Callable[[_BatchSource], object]):
        self.items = list(items)
        self.pids = torch.tensor([pid for _, pid, _ in self.items], dtype=torch.int64)
        self.camids = torch.tensor([camid for _, _, camid in self.items], dtype=torch.int64)
        self.source = source
        self._build = build
        self._iterator: DALIGenericIterator | None = None
        self._finished = True

    def _start_epoch(self) -> DALIGenericIterator:
        """A fresh iterator for the first epoch or after one left half way (its prefetched batches belong to
        the old epoch), ``reset()`` after an epoch that ran to its end.

        An epoch ran to its end once all ``len(self)`` batches were served, with or without the StopIteration
        after them: the trainer takes exactly that many and never asks again, and by then DALI has already
        found the source exhausted (its prefetch asked for the batch after the last), so ``reset()`` is valid.
        """
        if self._iterator is not None and self._finished:
            self._iterator.reset()
        else:
            self.source.in_flight.clear()
            self._iterator = DALIGenericIterator(
                [self._build(self.source)], ["images", "index"], last_batch_policy=LastBatchPolicy.PARTIAL,
                auto_reset=False, prepare_first_batch=False,
            )
        self._finished = False
        return self._iterator

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        iterator = self._start_epoch()
        planned, served = len(self), 0
        while True:
            try:
                outputs = next(iterator)[0]
            except StopIteration:
                self._finished = True
                return
            except RuntimeError as err:
                self._iterator = None
                raise self._explain(err) from err
            batch = self.source.in_flight.popleft()
            index = outputs["index"].reshape(-1).to(torch.int64)
            if index.tolist() != batch:
                raise RuntimeError(f"DALI returned indices {index.tolist()} for the batch fed as {batch}")
            served += 1
            self._finished = served >= planned
            yield {"images": outputs["images"], "pids": self.pids[index], "camids": self.camids[index],
                   "index": index}

    def _explain(self, err: RuntimeError) -> Exception:
        """Find the file behind a pipeline error among the batches in flight by reading each with PIL."""
        paths = [self.items[i][0] for batch in self.source.in_flight for i in batch]
        self.source.in_flight.clear()
        for path in dict.fromkeys(paths):
            try:
                read_image(path)
            except ImageReadError as bad:
                return ImageReadError(f"DALI could not decode a batch: {bad}")
        return RuntimeError(f"DALI pipeline failed on a batch of {len(paths)} files ({', '.join(paths[:4])}, ...) "
                            f"that PIL reads fine: {err}")


class DALITrainLoader(SamplerEpochs, _DALILoader):
    """The ``TrainLoader`` protocol of ``fba.data.transforms`` on DALI: ``set_epoch``, ``__iter__``, ``__len__``,
    ``state_dict`` / ``load_state_dict`` (the sampler's)."""

    _rng: np.random.Generator  # the epoch's parameter generator, made where the source starts the epoch

    def __init__(self, items: Sequence[Item], sampler: PKSampler, seed: int, params: Callable[..., dict],
                 build: Callable[[_BatchSource], object]):
        self.sampler = sampler
        self.seed = seed
        super().__init__(items, _BatchSource(items, self._epoch_batches, lambda n: params(self._rng, n)), build)

    def _epoch_batches(self) -> Iterator[list[int]]:
        self._rng = np.random.default_rng((self.seed, self.sampler.rank, self.sampler.epoch))
        return iter(self.sampler.batches())


class DALIEvalLoader(_DALILoader):
    """All items in order, ``eval_batch_size`` at a time, the last batch partial: row i of the features is
    item i."""

    def __init__(self, items: Sequence[Item], batch_size: int, build: Callable[[_BatchSource], object]):
        self.batch_size = batch_size
        super().__init__(items, _BatchSource(items, self._batches), build)

    def _batches(self) -> Iterator[list[int]]:
        n = len(self.items)
        return (list(range(start, min(start + self.batch_size, n))) for start in range(0, n, self.batch_size))

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.batch_size)


def build_dali_train_loader(
    cfg: Config, items: Sequence[Item], rank: int | None = None, world_size: int | None = None,
    device_id: int | None | str = "auto",
) -> DALITrainLoader:
    """The DALI twin of ``fba.data.transforms.build_train_loader`` (same sampler, same batch dict).

    ``device_id``: ``"auto"`` is the current CUDA device, or the CPU when there is none; None forces the CPU.
    """
    data = cfg.data
    if not items:
        raise ValueError("build_dali_train_loader: no training items")
    device_id = default_device_id() if device_id == "auto" else device_id
    sampler = PKSampler([pid for _, pid, _ in items], data.batch_size, data.num_instances, seed=cfg.train.seed,
                        rank=rank, world_size=world_size, accum_steps=cfg.solver.grad_accum_steps)

    def params(rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
        return sample_train_params(rng, count, data.height, data.width, data.flip_prob, data.padding,
                                   data.erasing_prob)

    def build(source: _BatchSource):
        return _build_pipeline(_train_graph, source, sampler.micro_batch_size, data.height, data.width, data.num_workers,
                               device_id, seed=cfg.train.seed * 1000 + sampler.rank)

    return DALITrainLoader(items, sampler, cfg.train.seed, params, build)


def build_dali_eval_loader(cfg: Config, items: Sequence[Item], device_id: int | None | str = "auto") -> DALIEvalLoader:
    """The DALI twin of ``fba.data.transforms.build_eval_loader``: every item once, in order, no augmentation."""
    data = cfg.data
    if not items:
        raise ValueError("build_dali_eval_loader: no items")
    device_id = default_device_id() if device_id == "auto" else device_id

    def build(source: _BatchSource):
        return _build_pipeline(_eval_graph, source, data.eval_batch_size, data.height, data.width,
                               data.num_workers, device_id, seed=cfg.train.seed)

    return DALIEvalLoader(items, data.eval_batch_size, build)
