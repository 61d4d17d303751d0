"""What each consumer of an export loads as it is (``fba export --target``): the export options it needs, where
the model file goes, and the files beside it that the consumer reads.

- **boxmot** crops with OpenCV, converts to RGB, scales to 0..1 and normalises with ImageNet's mean and std,
  hard-coded; it takes the crop size from a sidecar ``<file>.onnx.metadata.json``, else from a backbone name found
  in the file name, so the file is named after none.
- **DeepStream**'s nvtracker scales with one factor and subtracts per-channel offsets, which cannot express CLIP's
  per-channel std, so its input is the 0..255 float pixels and the graph normalises; the ReID section of the
  tracker config is written beside the model.
- **Triton Inference Server** serves the default export (uint8 pixels, normalised in the graph) on its
  onnxruntime backend (or TensorRT, which builds from the same file) from a model repository:
  ``<out>/<model>/config.pbtxt`` and ``<out>/<model>/1/model.onnx``, with the names, types and dims of ``fba
  serve``'s model, so one client talks to either.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fba.errors import UsageError
from fba.utils.atomic import atomic_write_bytes

TARGETS = {
    "boxmot": {"format": "onnx", "feature": "image", "input_dtype": "float32", "input_norm": "imagenet"},
    "deepstream": {"format": "onnx", "feature": "image", "input_dtype": "float32", "input_norm": "none"},
    "triton": {"format": "onnx", "input_dtype": "uint8", "input_norm": "none"},
}
DEFAULTS = {"format": "onnx", "feature": "image", "input_dtype": "uint8", "input_norm": "none"}
BOXMOT_MODEL_NAME = "fba_reid"  # not a boxmot backbone: boxmot takes the architecture from this sidecar
BOXMOT_FILE = "fba-reid-{height}x{width}.onnx"  # a name holding none of boxmot's backbone names
TRITON_MODEL_NAME = "fba_reid"  # also fba serve's model name
TRITON_MAX_BATCH = 32
TRITON_QUEUE_DELAY_US = 500


def export_options(args: argparse.Namespace) -> dict[str, str]:
    """The format, feature and input of this export: a ``--target`` preset, options given beside it checked
    against it, the rest the defaults (a uint8 input unless the norm needs float32)."""
    given = {key: getattr(args, key) for key in DEFAULTS if getattr(args, key, None) is not None}
    if args.target is None:
        if given.get("input_norm", "none") != "none" and "input_dtype" not in given:
            given["input_dtype"] = "float32"
        return {**DEFAULTS, **given}
    preset = TARGETS[args.target]
    for key, value in given.items():
        if key in preset and value != preset[key]:
            option = "--" + key.replace("_", "-")
            raise UsageError(f"--target {args.target} exports {option} {preset[key]}, not {value}")
    return {**DEFAULTS, **given, **preset}


def target_file_name(target: str, feature: str, default: str, quantized: bool, quantizer: str) -> str:
    """The model file's path under ``--out`` for ``target`` (``default``: the name without a target), so that
    exports of different variants into one folder never overwrite each other."""
    if target == "boxmot":
        return BOXMOT_FILE.replace(".onnx", "-int8.onnx" if quantized else ".onnx")
    if target == "triton":
        return f"{triton_model_name(feature, quantized, quantizer)}/1/model.onnx"
    return default


def triton_model_name(feature: str, quantized: bool, quantizer: str) -> str:
    tags = (["full"] if feature == "full" else []) + (["int8"] if quantized else [])
    tags += [quantizer] if quantized and quantizer != "onnxruntime" else []
    return "_".join([TRITON_MODEL_NAME, *tags])


def write_boxmot_sidecar(path: Path, image_size: list[int]) -> Path:
    """``<file>.onnx.metadata.json``, the sidecar boxmot reads before the file name: the image size of the crops
    it makes, and a model name that is none of its backbones."""
    sidecar = path.with_name(path.name + ".metadata.json")
    atomic_write_bytes(sidecar, (json.dumps({
        "schema_version": 1, "model_name": BOXMOT_MODEL_NAME, "model_kwargs_schema_version": 1,
        "model_kwargs": {"img_size": [int(image_size[0]), int(image_size[1])]},
    }, indent=2) + "\n").encode())
    return sidecar


def write_deepstream_config(path: Path, meta: dict) -> Path:
    """The ReID section of a DeepStream nvtracker config for this export: 0..255 RGB float input, unscaled (the
    graph normalises), features already L2-normalised."""
    height, width = meta["image_size"]
    config = path.with_name(path.stem + ".nvtracker-reid.yml")
    atomic_write_bytes(config, "\n".join([
        "# ReID section of an nvtracker (NvDCF / NvDeepSORT) config, written by fba export --target deepstream",
        "ReID:",
        "  reidType: 2",
        f"  reidFeatureSize: {meta['feature_dim']}",
        "  batchSize: 32",
        f"  inferDims: [3, {height}, {width}]",
        "  colorFormat: 0  # RGB",
        "  inputOrder: 0  # NCHW",
        "  networkMode: 0  # fp32; 2 (fp16) builds a faster TensorRT engine, check its features first",
        "  netScaleFactor: 1.0  # the graph scales and normalises the 0..255 pixels itself",
        "  offsets: [0.0, 0.0, 0.0]",
        "  addFeatureNormalization: 0  # the features are L2-normalised in the graph",
        "  keepAspc: 0",
        f"  onnxFile: {path.name}",
        f"  modelEngineFile: {path.name}_b32_gpu0_fp32.engine",
        "",
    ]).encode())
    return config


def triton_onnx_config(name: str, meta: dict, max_batch: int = TRITON_MAX_BATCH,
                       queue_delay_us: int = TRITON_QUEUE_DELAY_US) -> str:
    """config.pbtxt of the export on Triton's onnxruntime backend: the graph's inputs and output without the
    batch axis (Triton owns it: ``max_batch_size > 0``), the dynamic batcher, and the export's contract in
    ``parameters.fba_contract`` (what ``GET /v2/models/<name>/config`` shows; where ``fba serve`` puts its own).
    No ``instance_group``: Triton puts one instance on each GPU, or on the CPU where there is none."""
    height, width = meta["image_size"]
    inputs = [f'{{ name: "images" data_type: TYPE_UINT8 dims: [ 3, {height}, {width} ] }}']
    if meta["feature"] == "full":
        inputs += [f'{{ name: "{caption}" data_type: TYPE_INT64 dims: [ {meta["text_length"]} ] }}'
                   for caption in ("fg_tokens", "bg_tokens")]
    contract = {key: meta[key] for key in ("feature", "feature_dim", "feature_parts", "image_size", "image_dtype",
                                           "input_norm", "color", "resize", "normalisation", "checkpoint_sha256")
                if key in meta}
    return "\n".join([
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch}",
        "input [\n  " + ",\n  ".join(inputs) + "\n]",
        f'output [\n  {{ name: "features" data_type: TYPE_FP32 dims: [ {meta["feature_dim"]} ] }}\n]',
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
        f'parameters [ {{ key: "fba_contract" value: {{ string_value: {json.dumps(json.dumps(contract))} }} }} ]',
        "",
    ])


def write_consumer_files(target: str | None, path: Path, meta: dict) -> str:
    """The files ``target`` reads beside the model at ``path``; what was written, for the command's line."""
    if target == "boxmot":
        return f"; boxmot reads {write_boxmot_sidecar(path, meta['image_size']).name} beside it"
    if target == "deepstream":
        return f"; nvtracker config {write_deepstream_config(path, meta).name}"
    if target == "triton":
        folder = path.parent.parent
        atomic_write_bytes(folder / "config.pbtxt", triton_onnx_config(folder.name, meta).encode())
        return (f"; Triton model {folder.name} in the repository {folder.parent} "
                f"(tritonserver --model-repository {folder.parent})")
    return ""
