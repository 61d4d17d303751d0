"""``fba export``: a trained ``model.pt`` as a self-describing ONNX model or AOTInductor package.

    fba export --checkpoint model.pt --format onnx --out DIR --feature image   # DIR/model.onnx
    fba export --checkpoint model.pt --format aoti --out DIR --feature full    # DIR/model.pt2
    fba export --inspect DIR/model.onnx                                        # the metadata, one key a line

Both formats hold the same graph (:class:`fba.deploy.graph.ExportedEmbedder`), traced by ``torch.export`` with a
dynamic batch axis through the plain PyTorch attention, and the same metadata (:func:`export_metadata`): what
the inputs are, the image size, the feature, the normalisation constants, the package version and the sha256
of the checkpoint. docs/deployment.md says how to check and serve them.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import fba
from fba import kernels
from fba.utils.atomic import atomic_path, check_output_path
from fba.data.transforms import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from fba.deploy.graph import INPUT_DTYPES, INPUT_NORMS, ExportedEmbedder, ExportedStatesEmbedder, ExportedTextTower
from fba.deploy.targets import export_options, target_file_name, write_consumer_files
from fba.distributed import usable_device
from fba.errors import InputError, UsageError

EXPORT_FORMAT = "fba-export/1"
FORMATS = {"onnx": "model.onnx", "aoti": "model.pt2"}
SUFFIXES = {"onnx": ".onnx", "aoti": ".pt2"}
NORMALISATION = {
    "none": "(x / 255 - mean) / std inside the graph, x the 0..255 pixels",
    "imagenet": "the input is (x / 255 - imagenet_mean) / imagenet_std; the graph maps it to (x / 255 - mean) / std "
                "(folded into the patch embedding)",
    "clip": "the input is (x / 255 - mean) / std already",
}
MAX_BATCH = 4096
TEXT_TOWER_FILE = "model-text.onnx"  # beside a states export (--caption-input states)
OPSET = 18


class ExportFileError(InputError):
    """A file given as an exported model that is not one (corrupt, foreign, or from another export format)."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_names(feature: str, caption_input: str = "tokens") -> list[str]:
    if feature == "image":
        return ["images"]
    if caption_input == "states":
        return ["images", "fg_states", "fg_eot", "bg_states", "bg_eot"]
    return ["images", "fg_tokens", "bg_tokens"]


def check_input(input_dtype: str, input_norm: str) -> None:
    """uint8 holds pixels; a normalised input is float32."""
    if input_dtype not in INPUT_DTYPES:
        raise UsageError(f"--input-dtype {input_dtype}: choose from {', '.join(INPUT_DTYPES)}")
    if input_norm not in INPUT_NORMS:
        raise UsageError(f"--input-norm {input_norm}: choose from {', '.join(INPUT_NORMS)}")
    if input_dtype == "uint8" and input_norm != "none":
        raise UsageError(f"--input-norm {input_norm} takes float32 images (--input-dtype float32); uint8 holds "
                         "0..255 pixels (--input-norm none)")


def export_file_name(fmt: str, feature: str, input_dtype: str, input_norm: str, quantized: bool = False,
                     caption_input: str = "tokens") -> str:
    """``model.onnx`` / ``model.pt2`` for the default export (uint8 pixels, image feature); another variant is
    named by what differs (``model-full.onnx``, ``model-imagenet.onnx``, ``model-int8.onnx``), so exports into one
    folder never overwrite each other."""
    tags = [feature] if feature != "image" else []
    tags += ["states"] if feature == "full" and caption_input == "states" else []
    tags += [input_norm] if input_norm != "none" else ([input_dtype] if input_dtype != "uint8" else [])
    tags += ["int8"] if quantized else []
    return "model" + "".join(f"-{tag}" for tag in tags) + SUFFIXES[fmt]


def export_metadata(
    model: nn.Module, feature: str, input_dtype: str, checkpoint: Path | None = None, model_cfg=None,
    input_norm: str = "none", caption_input: str = "tokens",
) -> dict[str, str]:
    """The contract of an exported model, as string -> string (what ONNX ``metadata_props`` and AOTInductor's
    package metadata hold); values are JSON."""
    height, width = model.backbone.image_size
    text = model.text_encoder.context_length if feature == "full" else None
    fields = {
        "format": EXPORT_FORMAT,
        "feature": feature,
        "feature_dim": model.feature_dim(feature == "full"),
        "feature_parts": ["cls"] if feature == "image" else ["cls", "fg_img", "fg_txt"],
        "inputs": input_names(feature, caption_input),
        "caption_input": caption_input if feature == "full" else None,
        "outputs": ["features"],
        "image_size": [int(height), int(width)],
        "image_layout": "NCHW",
        "image_dtype": input_dtype,
        "input_norm": input_norm,
        "color": "RGB",
        "pixel_range": [0, 255],
        "resize": "bicubic to image_size by the caller (PIL's Image.resize(BICUBIC), as fba embed)",
        "normalisation": NORMALISATION[input_norm],
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "input_mean": list(IMAGENET_MEAN) if input_norm == "imagenet" else None,
        "input_std": list(IMAGENET_STD) if input_norm == "imagenet" else None,
        "text_tokens": None if text is None else f"CLIP BPE ids, int64 [N, {text}], open_clip's tokenizer",
        "text_length": text,
        "text_width": model.text_encoder.embed_dim if feature == "full" and caption_input == "states" else None,
        "text_tower": TEXT_TOWER_FILE if feature == "full" and caption_input == "states" else None,
        "arch": None if model_cfg is None else model_cfg.arch,
        "stride": None if model_cfg is None else model_cfg.stride,
        "fba_version": fba.__version__,
        "torch_version": torch.__version__,
        "checkpoint": None if checkpoint is None else checkpoint.name,
        "checkpoint_sha256": None if checkpoint is None else file_sha256(checkpoint),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return {f"fba.{key}": json.dumps(value) for key, value in fields.items() if value is not None}


def example_inputs(model: nn.Module, feature: str, input_dtype: str, batch: int = 2,
                   input_norm: str = "none", caption_input: str = "tokens") -> tuple[torch.Tensor, ...]:
    height, width = model.backbone.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, height, width), generator=generator).to(INPUT_DTYPES[input_dtype])
    if input_norm != "none":
        images = (images / 255 - 0.45) / 0.27  # values of a normalised image; the trace needs only their type
    if feature == "image":
        return (images,)
    # Distinct fg and bg captions: identical ones make the pooling mask 0/0 (docs/deployment.md, "Exactness").
    tokens = model.text_encoder.tokenize([f"a person in a red shirt, number {i}" for i in range(batch)])
    background = model.text_encoder.tokenize([f"a street with a parked car and a tree {i}" for i in range(batch)])
    if caption_input == "states":
        with torch.no_grad():
            fg, bg = model.text_encoder(tokens), model.text_encoder(background)
        return images, fg.states, fg.eot, bg.states, bg.eot
    return images, tokens, background


def export_program(model: nn.Module, feature: str, input_dtype: str = "uint8", input_norm: str = "none",
                   caption_input: str = "tokens") -> torch.export.ExportedProgram:
    """``torch.export`` of the wrapped model, batch axis dynamic (1..4096), the reference attention traced."""
    if feature == "full" and caption_input == "states":
        wrapper = ExportedStatesEmbedder(model, input_norm).eval()
    else:
        wrapper = ExportedEmbedder(model, feature, input_norm).eval()
    args = example_inputs(model, feature, input_dtype, input_norm=input_norm, caption_input=caption_input)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = tuple({0: batch} for _ in args)
    device = next(model.parameters()).device
    args = tuple(a.to(device) for a in args)
    with torch.no_grad(), kernels.decomposed():  # standard ops only: no runtime has fba's custom op
        return torch.export.export(wrapper.to(device), args, dynamic_shapes=dynamic, strict=False)


def export_onnx(program: torch.export.ExportedProgram, path: Path, metadata: dict[str, str]) -> Path:
    """Write the ONNX model (opset 18, weights inline) with ``metadata`` in its ``metadata_props``; the graph's
    inputs and outputs are named as the metadata says."""
    import onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(
            program, input_names=json.loads(metadata["fba.inputs"]), output_names=json.loads(metadata["fba.outputs"]),
            opset_version=OPSET, dynamo=True, optimize=True, verbose=False,
        )
    proto = onnx_program.model_proto
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "fba-reid"
    proto.producer_version = fba.__version__
    onnx.checker.check_model(proto)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def export_text_tower(model: nn.Module, path: Path, checkpoint: Path | None = None) -> Path:
    """``model-text.onnx`` beside a states export: tokens [N, 77] int64 in, the frozen tower's ``states``
    [N, 77, E] float32 and ``eot`` [N] int64 out, run once per caption by the backends."""
    tokens = model.text_encoder.tokenize(["a person in a red shirt", "a street with a parked car and a tree"])
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(ExportedTextTower(model).eval(), (tokens,), dynamic_shapes=({0: batch},),
                                      strict=False)
    fields = {"format": EXPORT_FORMAT, "role": "text_tower", "inputs": ["tokens"], "outputs": ["states", "eot"],
              "text_length": model.text_encoder.context_length, "text_width": model.text_encoder.embed_dim,
              "checkpoint_sha256": None if checkpoint is None else file_sha256(checkpoint)}
    return export_onnx(program, path, {f"fba.{k}": json.dumps(v) for k, v in fields.items() if v is not None})


def export_aoti(program: torch.export.ExportedProgram, path: Path, metadata: dict[str, str]) -> Path:
    """Compile ``program`` with AOTInductor into a ``.pt2`` package (weights inside) carrying ``metadata``."""
    with atomic_path(path) as tmp:
        with tempfile.TemporaryDirectory() as work:
            built = Path(work) / "model.pt2"
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(built), inductor_configs={"aot_inductor.metadata": metadata}
            )
            shutil.move(str(built), tmp)
    return path


def export_model_file(
    checkpoint: Path, out_dir: Path, fmt: str, feature: str, input_dtype: str = "uint8", device: str = "cpu",
    input_norm: str = "none", name: str | None = None, caption_input: str = "tokens",
) -> Path:
    """Load ``checkpoint`` (a ``model.pt``) in fp32 and write ``out_dir/<name>`` (default
    :func:`export_file_name`; ``{height}`` and ``{width}`` in ``name`` are the model's image size); an AOTInductor package runs on the device it was compiled on (``device``), an ONNX
    model anywhere."""
    from fba.model.model_file import load_model

    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    check_input(input_dtype, input_norm)
    model, cfg = load_model(checkpoint, device if fmt == "aoti" else "cpu", torch.float32)
    if feature == "full" and model.cross_modal is None:
        raise InputError(f"{checkpoint}: the baseline model (model.cross_modal=false) has no full feature; "
                         "export --feature image")
    states = feature == "full" and caption_input == "states"
    if states and fmt != "onnx":
        raise UsageError("--caption-input states writes an ONNX model (--format onnx)")
    metadata = export_metadata(model, feature, input_dtype, checkpoint, cfg.model, input_norm, caption_input)
    program = export_program(model, feature, input_dtype, input_norm, caption_input)
    height, width = model.backbone.image_size
    name = name or export_file_name(fmt, feature, input_dtype, input_norm, caption_input=caption_input)
    path = Path(out_dir) / name.format(height=height, width=width)
    if fmt == "aoti":
        return export_aoti(program, path, metadata)
    if states:
        export_text_tower(model, path.with_name(TEXT_TOWER_FILE), checkpoint)
    return export_onnx(program, path, metadata)


def resolve_model_file(path: Path, fmt: str | None = None) -> Path:
    """``path`` itself, or the export inside the folder ``path``: ``model.onnx`` / ``model.pt2`` if there, else
    the one ``.onnx`` / ``.pt2`` file it holds (several: the caller names one; a states export's text tower
    beside it does not count)."""
    path = Path(path)
    if path.is_dir():
        suffixes = [SUFFIXES[fmt]] if fmt else list(SUFFIXES.values())
        default = [path / FORMATS[f] for f in ([fmt] if fmt else FORMATS) if (path / FORMATS[f]).is_file()]
        if default:
            return default[0]
        found = sorted(p for p in path.iterdir()
                       if p.suffix in suffixes and p.is_file() and p.name != TEXT_TOWER_FILE)
        if len(found) > 1:
            raise ExportFileError(f"{path}: {len(found)} exported models in this folder "
                                  f"({', '.join(p.name for p in found)}); give the file")
        if not found:
            raise ExportFileError(f"{path}: no exported model in this folder (no {' or '.join(suffixes)} file)")
        return found[0]
    if not path.is_file():
        raise ExportFileError(f"{path}: exported model not found")
    return path


def _check_metadata(path: Path, metadata: dict[str, str]) -> dict:
    if metadata.get("fba.format") != json.dumps(EXPORT_FORMAT):
        found = metadata.get("fba.format", "no fba.format entry")
        raise ExportFileError(f"{path}: not an fba export ({found}; this fba reads {EXPORT_FORMAT})")
    try:
        return {key.removeprefix("fba."): json.loads(value) for key, value in metadata.items() if key.startswith("fba.")}
    except json.JSONDecodeError as err:
        raise ExportFileError(f"{path}: malformed fba metadata ({err})") from err


def read_metadata(path: Path) -> dict:
    """The fba metadata of an exported model (``model.onnx``, ``model.pt2`` or their folder), without running it."""
    path = resolve_model_file(path)
    if path.suffix == ".onnx":
        return _check_metadata(path, _onnx_metadata(path))
    if path.suffix == ".pt2":
        return _check_metadata(path, _aoti_metadata(path))
    raise ExportFileError(f"{path}: an exported model ends in .onnx or .pt2")


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and onnx's own: any of them means "not an ONNX model"
        raise ExportFileError(f"{path}: not a readable ONNX model ({type(err).__name__})") from err
    if not proto.graph.node:
        raise ExportFileError(f"{path}: not a readable ONNX model (no graph)")
    return {prop.key: prop.value for prop in proto.metadata_props}


def _aoti_metadata(path: Path) -> dict[str, str]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("_metadata.json") and "/aotinductor/" in n]
            if not names:
                raise ExportFileError(f"{path}: a zip archive but not an AOTInductor package (no model metadata)")
            return json.loads(archive.read(names[0]))
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as err:
        raise ExportFileError(f"{path}: not a readable AOTInductor package ({type(err).__name__}: {err})") from err


def _check_quantize(args: argparse.Namespace, options: dict[str, str]) -> list[Path]:
    """int8 is an ONNX export of the image feature, calibrated on ``--calibration``'s images."""
    if options["format"] != "onnx":
        raise UsageError("--quantize int8 writes an ONNX model (--format onnx); onnxruntime and OpenVINO run it")
    if options["feature"] != "image":
        raise UsageError("--quantize int8 quantizes the image feature (--feature image); the full feature's text "
                         "tower stays fp32")
    if args.calibration is None:
        raise UsageError("--quantize int8 needs --calibration DIR: a few hundred crops of a training split")
    if args.quantizer == "nncf" and importlib.util.find_spec("nncf") is None:
        raise UsageError("--quantizer nncf needs NNCF: pip install -e '.[nncf]' (or --quantizer onnxruntime)")
    from fba.deploy.quantize import pick_calibration_images

    return pick_calibration_images(args.calibration, args.calibration_images)


def run(args: argparse.Namespace) -> int:
    if args.inspect is not None:
        for key, value in read_metadata(args.inspect).items():
            print(f"{key:18} {json.dumps(value)}")
        return 0
    if args.checkpoint is None or args.out is None:
        raise UsageError("give --checkpoint model.pt and --out DIR (or --inspect FILE)")
    options = export_options(args)
    check_input(options["input_dtype"], options["input_norm"])
    check_output_path(args.out, "--out", folder=True)
    if options["format"] == "aoti":
        usable_device(args.device)
    start = time.perf_counter()
    quantized = args.quantize == "int8"
    if quantized:
        calibration = _check_quantize(args, options)
    caption_input = getattr(args, "caption_input", "tokens")
    if caption_input == "states" and (options["feature"] != "full" or args.target or quantized):
        raise UsageError("--caption-input states is an input of the full feature's graph (--feature full), with no "
                         "--target or --quantize")
    name = export_file_name(options["format"], options["feature"], options["input_dtype"], options["input_norm"],
                            quantized, caption_input)
    if quantized and args.quantizer != "onnxruntime":  # the two quantizers' files side by side
        name = name.replace("-int8.onnx", f"-int8-{args.quantizer}.onnx")
    name = target_file_name(args.target, options["feature"], name, quantized, args.quantizer)
    if quantized:
        from fba.deploy.quantize import calibration_batches, quantize_int8

        with tempfile.TemporaryDirectory() as work:
            fp32 = export_model_file(args.checkpoint, Path(work), "onnx", "image", options["input_dtype"],
                                     input_norm=options["input_norm"], name=name)
            meta = read_metadata(fp32)
            batches = calibration_batches(calibration, meta["image_size"], options["input_dtype"], options["input_norm"])
            path = quantize_int8(fp32, Path(args.out) / fp32.relative_to(work), batches, quantizer=args.quantizer)
    else:
        path = export_model_file(args.checkpoint, args.out, options["format"], options["feature"],
                                 options["input_dtype"], args.device, options["input_norm"], name, caption_input)
    meta = read_metadata(path)
    extra = write_consumer_files(args.target, path, meta)
    if caption_input == "states":
        extra += f"; the text tower {meta['text_tower']} beside it"
    print(f"wrote {path} ({options['format']}, {meta['feature']} feature, {meta['feature_dim']} dims, inputs "
          f"{', '.join(meta['inputs'])}, {meta['image_dtype']} {meta['input_norm']}"
          f"{', int8 from ' + str(len(calibration)) + ' calibration images' if quantized else ''}) in "
          f"{time.perf_counter() - start:.0f} s{extra}")
    return 0
