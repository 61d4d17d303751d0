"""``fba caption``: foreground/background captions of every image of a data set, written as JSON Lines.

The paper captions each image once, offline, with LLaVA-1.5 and its two prompts (docs/design.md#inputs). Two
backends share one writer:

- ``llava`` loads a LLaVA-style model through ``transformers`` (``LlavaForConditionalGeneration`` +
  ``AutoProcessor``) from a local folder (``--allow-download`` lets a hub id be fetched where there is network)
  and asks both prompts of a batch of images in one greedy ``generate`` call of 2 x batch rows;
- ``template`` writes the synthetic generator's own descriptions (``fba.data.synthetic.captions.describe``
  over ``<root>/attributes.jsonl``), so every pipeline runs with nothing downloaded.

The output is one ``{"image": relpath, "fg": ..., "bg": ...}`` line per image, appended and flushed batch by
batch, so a killed run loses at most one batch: the next run keeps every complete line, drops a cut-off last
line, and captions only the images still missing.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from tqdm import tqdm

from fba.utils.atomic import DiskWriteError, disk_write_error
from fba.data.captions import (
    BG_PROMPT, FG_PROMPT, Caption, CaptionError, CaptionStore, caption_line, parse_caption_line,
)
from fba.data.datasets import SPLITS, ReIDDataset, build_dataset
from fba.errors import UsageError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "llava-hf/llava-1.5-7b-hf"
DEFAULT_MAX_NEW_TOKENS_FG = 96
DEFAULT_MAX_NEW_TOKENS_BG = 80
LLAVA15_PROMPT = "USER: <image>\n{prompt} ASSISTANT:"
RETRY_MIN_NEW_TOKENS = 8

ImageRef = tuple[str, str]  # (key relative to the data set root, absolute path)

_ROLE_ECHO = re.compile(r"^\s*ASSISTANT\s*:")
_NEXT_TURN = re.compile(r"\b(?:USER|ASSISTANT)\s*:")


class Captioner(Protocol):
    """A backend: the captions of a batch of images, in order."""

    def caption(self, images: Sequence[ImageRef]) -> list[Caption]: ...


# ---------------------------------------------------------------- what to caption, and resuming


def dataset_images(dataset: ReIDDataset) -> list[ImageRef]:
    """Every image of train, query and gallery, once (an image listed in two splits is captioned once)."""
    seen: dict[str, str] = {}
    for split in SPLITS:
        for path, _, _ in dataset.split(split):
            seen.setdefault(dataset.relpath(path), path)
    return list(seen.items())


def resume(out: Path) -> set[str]:
    """The images already captioned in ``out``, after mending a last line that has no newline.

    Every complete line is validated (``CaptionStore.load``): a malformed line in the middle of the file is an
    error naming the file and line, never silently skipped.
    """
    if not out.exists():
        return set()
    data = out.read_bytes()
    if data and not data.endswith(b"\n"):
        _mend_last_line(out, data)
    return set(CaptionStore.load(out))


def _mend_last_line(out: Path, data: bytes) -> None:
    """A last line without its newline is a cut-off write of a killed run, dropped, unless it is a valid record
    (a hand-edited file): that caption is kept and given its newline, so the next record starts a line of its own.
    """
    keep = data.rfind(b"\n") + 1
    try:
        parse_caption_line(data[keep:].decode("utf-8"), f"{out}, last line")
    except (CaptionError, UnicodeDecodeError):  # a cut may also split a multi-byte character
        logger.warning("%s: dropping a cut-off last line (%d bytes) left by an interrupted run", out, len(data) - keep)
        with out.open("r+b") as sink:
            sink.truncate(keep)
        return
    with out.open("ab") as sink:
        sink.write(b"\n")


def caption_images(
    images: Sequence[ImageRef], captioner: Captioner, out: Path, batch_size: int, progress: bool = True
) -> int:
    """Caption ``images`` batch by batch, appending one line per image to ``out``; returns the count written.

    The file is written unbuffered, so a failed write (a full disk) leaves nothing to flush on close: it is one
    :class:`~fba.utils.atomic.DiskWriteError`, and a cut-off last line is mended by the next run's :func:`resume`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("ab", buffering=0) as sink, tqdm(
        total=len(images), unit="img", desc=f"captions -> {out.name}", disable=not progress, smoothing=0.1
    ) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            captions = captioner.caption(batch)
            if len(captions) != len(batch):
                raise RuntimeError(f"the captioner returned {len(captions)} captions for {len(batch)} images")
            lines = "".join(caption_line(image, caption) for (image, _), caption in zip(batch, captions))
            _append(sink, lines.encode("utf-8"), out)
            written += len(batch)
            bar.update(len(batch))
    return written


def _append(sink: BinaryIO, data: bytes, out: Path) -> None:
    """Write all of ``data`` (a raw file may take part of it) and fsync; a disk failure says what is kept."""
    view = memoryview(data)
    try:
        while view:
            view = view[sink.write(view):]
        os.fsync(sink.fileno())
    except OSError as err:
        disk = disk_write_error(out, err)
        if disk is None:
            raise
        raise DiskWriteError(disk.errno, f"{disk}; the captions written before this batch are kept, and "
                             "a rerun continues after them") from None


# ---------------------------------------------------------------- LLaVA through transformers


def clean_caption(text: str) -> str:
    """The answer alone: no echoed ``ASSISTANT:``, nothing from a made-up next turn, whitespace collapsed."""
    while match := _ROLE_ECHO.match(text):
        text = text[match.end() :]
    if match := _NEXT_TURN.search(text):
        text = text[: match.start()]
    return " ".join(text.split())


def build_prompt(processor: Any, prompt: str) -> str:
    """The processor's chat template when it has one (llava-hf ships LLaVA-1.5's), else LLaVA-1.5's format."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    return LLAVA15_PROMPT.format(prompt=prompt)


def pad_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """LLaVA-1.5's ``image_aspect_ratio="pad"``: a person crop (about 1:2) padded to a square with the mean colour.

    The processor's resize-then-centre-crop would otherwise cut off the head and the feet of a tall crop.
    """
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def select_device_dtype(device: str, dtype: str) -> tuple[Any, Any]:
    """``auto``: CUDA in bf16 (fp16 where the GPU has no bf16) when there is a GPU, else the CPU in fp32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        if dev.type == "cuda":
            return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dev, torch.float32
    return dev, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]


class LlavaCaptioner:
    """LLaVA-style captioning: both prompts of a batch in one left-padded, greedy ``generate`` call."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        max_new_tokens: tuple[int, int] = (DEFAULT_MAX_NEW_TOKENS_FG, DEFAULT_MAX_NEW_TOKENS_BG),
        prompts: tuple[str, str] = (FG_PROMPT, BG_PROMPT),
        static_cache: bool = False,
    ):
        if min(max_new_tokens) < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model.eval()
        self.processor = processor
        tokenizer = processor.tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.max_new_tokens = max_new_tokens
        self.static_cache = static_cache
        self.texts = tuple(build_prompt(processor, prompt) for prompt in prompts)
        self.fill = tuple(round(255 * m) for m in processor.image_processor.image_mean)
        self.suppress = [processor.image_token_id] if getattr(processor, "image_token_id", None) is not None else None

    @classmethod
    def load(
        cls,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        allow_download: bool = False,
        max_new_tokens: tuple[int, int] = (DEFAULT_MAX_NEW_TOKENS_FG, DEFAULT_MAX_NEW_TOKENS_BG),
        static_cache: bool = False,
    ) -> LlavaCaptioner:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        dev, torch_dtype = select_device_dtype(device, dtype)
        if allow_download and not Path(model).is_dir():
            check_hub_reachable(model)
        try:
            processor = AutoProcessor.from_pretrained(model, local_files_only=not allow_download)
            network = LlavaForConditionalGeneration.from_pretrained(
                model, dtype=torch_dtype, local_files_only=not allow_download
            )
        except OSError as err:
            hint = "" if allow_download else (
                "; nothing is downloaded without --allow-download: fetch the model once where there is network "
                "and pass its local folder (docs/captioning.md)"
            )
            raise CaptionError(f"cannot load a LLaVA model from {model!r}: {err}{hint}") from err
        logger.info("loaded %s on %s in %s", model, dev, torch_dtype)
        return cls(network.to(dev), processor, max_new_tokens, static_cache=static_cache)

    def caption(self, images: Sequence[ImageRef]) -> list[Caption]:
        from fba.data.transforms import read_image

        pictures = [pad_to_square(read_image(path), self.fill) for _, path in images]
        n = len(pictures)
        texts = [self.texts[0]] * n + [self.texts[1]] * n
        limits = [self.max_new_tokens[0]] * n + [self.max_new_tokens[1]] * n
        answers = self._answers(pictures + pictures, texts, limits)
        empty = [row for row, answer in enumerate(answers) if not answer]
        if empty:
            retried = self._answers(
                [pictures[row % n] for row in empty], [texts[row] for row in empty], [limits[row] for row in empty],
                min_new_tokens=min(RETRY_MIN_NEW_TOKENS, *limits),
            )
            for row, answer in zip(empty, retried):
                if not answer:
                    which = "fg" if row < n else "bg"
                    raise CaptionError(f"{images[row % n][1]}: the model gave an empty {which} caption twice")
                answers[row] = answer
        return [Caption(answers[i], answers[n + i]) for i in range(n)]

    def _answers(
        self, pictures: list[Image.Image], texts: list[str], limits: list[int], min_new_tokens: int | None = None
    ) -> list[str]:
        tokens = self.generate(pictures, texts, max(limits), min_new_tokens)
        decoded = self.processor.tokenizer.batch_decode(
            [row[:limit] for row, limit in zip(tokens, limits)], skip_special_tokens=True
        )
        return [clean_caption(text) for text in decoded]

    def generate(
        self, pictures: list[Image.Image], texts: list[str], max_new_tokens: int, min_new_tokens: int | None = None
    ) -> list[list[int]]:
        """The new token ids of each row (the prompt cut off); greedy, so a shorter limit is a prefix."""
        import torch

        inputs = self.processor(images=pictures, text=texts, return_tensors="pt", padding=True)
        inputs = inputs.to(self.model.device, dtype=self.model.dtype)
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": 1}
        if min_new_tokens:
            options["min_new_tokens"] = min_new_tokens
        if self.suppress:
            options["suppress_tokens"] = self.suppress
        if self.static_cache:
            options["cache_implementation"] = "static"  # transformers then compiles the decode step on GPU
        with torch.inference_mode():
            out = self.model.generate(**inputs, pad_token_id=self.processor.tokenizer.pad_token_id, **options)
        return out[:, inputs["input_ids"].shape[1] :].tolist()


# ---------------------------------------------------------------- template backend (synthetic data)


class TemplateCaptioner:
    """The synthetic generator's descriptions of its own attributes: exact captions with ``noise=0``, or what a
    vision-language captioner plausibly reports at that level (``fba.data.synthetic.noise``), no model either way."""

    def __init__(self, attributes: Mapping[str, dict], source: Path, noise: float = 0.0, seed: int = 0):
        from fba.data.synthetic.noise import check_level

        self.attributes = attributes
        self.source = source
        self.noise = check_level(noise)
        self.seed = seed

    @classmethod
    def from_root(cls, root: str | Path, noise: float = 0.0, seed: int | None = None) -> TemplateCaptioner:
        """``seed`` None: the generator's seed from ``<root>/meta.json`` (0 without one), so that the captions
        match those ``fba synth --caption-noise`` wrote for the same level."""
        from fba.data.synthetic.attributes import read_attributes

        source = Path(root) / "attributes.jsonl"
        if seed is None:
            meta = Path(root) / "meta.json"
            seed = int(json.loads(meta.read_text()).get("seed", 0)) if meta.is_file() else 0
        return cls(read_attributes(source), source, noise, seed)

    def caption(self, images: Sequence[ImageRef]) -> list[Caption]:
        from fba.data.synthetic.captions import describe

        captions = []
        for image, _ in images:
            if image not in self.attributes:
                raise CaptionError(f"{self.source}: no attributes for image {image!r}")
            captions.append(Caption(*describe(self.attributes[image], self.noise, self.seed)))
        return captions


# ---------------------------------------------------------------- the command


def check_hub_reachable(model: str, timeout: float = 5.0) -> None:
    """Fail in seconds, not after minutes of retries, when --allow-download has no network to download over."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise CaptionError(f"--allow-download: HF_HUB_OFFLINE is set, so {model!r} cannot be downloaded")
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise CaptionError(
            f"--allow-download: cannot reach {host}:{port} to download {model!r} ({err}); fetch the model where "
            "there is network and pass its local folder (docs/captioning.md)"
        ) from None


def build_llava(args: argparse.Namespace) -> Captioner:
    return LlavaCaptioner.load(
        args.model, args.device, args.dtype, args.allow_download, (args.max_new_tokens, args.max_new_tokens_bg),
        static_cache=args.static_cache,
    )


def build_template(args: argparse.Namespace) -> Captioner:
    return TemplateCaptioner.from_root(args.root, args.caption_noise, args.caption_seed)


BACKENDS: dict[str, Callable[[argparse.Namespace], Captioner]] = {"llava": build_llava, "template": build_template}


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key] = value
    return options


def run(args: argparse.Namespace) -> int:
    if args.backend != "template" and (args.caption_noise or args.caption_seed is not None):
        raise CaptionError("--caption-noise and --caption-seed belong to the template backend (--backend template)")
    dataset = build_dataset(args.dataset, args.root, **parse_options(args.option))
    out = Path(args.out) if args.out else dataset.root / "captions.jsonl"
    images = dataset_images(dataset)
    done = resume(out)
    todo = [image for image in images if image[0] not in done]
    print(f"{dataset.name}: {len(images)} images, {len(images) - len(todo)} already captioned in {out}, "
          f"{len(todo)} to caption with the {args.backend} backend")
    if todo:
        caption_images(todo, BACKENDS[args.backend](args), out, args.batch_size, progress=not args.no_progress)
    return 0
