"""int8 exports: onnxruntime's static post-training quantization of the ONNX export, calibrated on real crops.

The result is one ONNX file in QDQ form (QuantizeLinear / DequantizeLinear around int8 weights and activations),
which onnxruntime runs with its int8 kernels and OpenVINO fuses into its own, so ``fba embed --backend
onnxruntime|openvino`` runs it unchanged and its metadata says ``quantized: int8``. What is quantized: the
matrix products only (``MatMul``, ``Gemm``, the patch-embedding ``Conv``), weights per output channel (symmetric,
7 bits: ``reduce_range``), activations per tensor from the calibration images' ranges. The 7-bit weights are for
CPUs without VNNI (AVX2, AVX-512 without VNNI): their int8 products sum pairs of uint8 x int8 into int16, which
8-bit weights overflow; OpenVINO's int8 on such a CPU gave features at cosine 0.9957 to fp32 with 8-bit weights. LayerNorm, softmax, GELU, the BNNeck and the
L2 normalisation stay float: they hold little of the FLOP count and most of the precision a ReID feature needs.
"""
from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from fba.deploy.graph import graph_images
from fba.errors import InputError

QUANTIZED_OPS = ["MatMul", "Gemm", "Conv"]
CALIBRATION_BATCH = 16


class CalibrationError(InputError):
    """Calibration images that cannot calibrate (none found, too few)."""


def calibration_batches(paths: Sequence[Path], image_size: tuple[int, int], input_dtype: str,
                        input_norm: str) -> Iterator[np.ndarray]:
    """The images as the export takes them (resized as ``fba embed`` resizes), ``CALIBRATION_BATCH`` at a time."""
    from fba.data.transforms import build_eval_uint8_transform, read_image

    resize = build_eval_uint8_transform(*image_size)
    for start in range(0, len(paths), CALIBRATION_BATCH):
        pixels = torch.stack([resize(read_image(str(p))) for p in paths[start:start + CALIBRATION_BATCH]])
        yield graph_images(pixels, input_dtype, input_norm).numpy()


def pick_calibration_images(folder: Path, count: int) -> list[Path]:
    """``count`` images of ``folder`` (recursive), spread evenly over its sorted listing, so every identity and
    camera of a training split is represented rather than the first few."""
    from fba.data.datasets import EMBED_EXTENSIONS

    if not folder.is_dir():
        raise CalibrationError(f"--calibration {folder} is not a directory")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EMBED_EXTENSIONS and p.is_file())
    if len(found) < CALIBRATION_BATCH:
        raise CalibrationError(f"--calibration {folder}: {len(found)} images; calibration needs at least "
                               f"{CALIBRATION_BATCH} (a few hundred of a training split)")
    step = max(1, len(found) // count)
    return found[::step][:count]


QUANTIZERS = ("onnxruntime", "nncf")


def quantize_int8(fp32_model: Path, out: Path, batches: Iterator[np.ndarray], input_name: str = "images",
                  quantizer: str = "onnxruntime") -> Path:
    """Write the int8 QDQ model of ``fp32_model`` to ``out`` (a temporary beside it, then renamed), calibrated on
    ``batches``; the fp32 model's metadata is carried over with ``quantized`` set (and the quantizer named)."""
    import onnx

    from fba.utils.atomic import atomic_path

    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {quantizer!r}; known: {', '.join(QUANTIZERS)}")
    with tempfile.TemporaryDirectory() as work, atomic_path(out) as tmp:
        quantized = Path(work) / "int8.onnx"
        (_onnxruntime if quantizer == "onnxruntime" else _nncf)(fp32_model, quantized, batches, input_name, Path(work))
        proto = onnx.load(str(quantized))
        source = {p.key: p.value for p in onnx.load(str(fp32_model), load_external_data=False).metadata_props}
        source["fba.quantized"] = '"int8"'
        source["fba.quantizer"] = f'"{quantizer}"'
        del proto.metadata_props[:]
        for key, value in source.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save_model(proto, str(tmp))
    return out


def _onnxruntime(fp32_model: Path, out: Path, batches: Iterator[np.ndarray], input_name: str, work: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {input_name: batch}

    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32_model), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=QUANTIZED_OPS, per_channel=True, reduce_range=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def _nncf(fp32_model: Path, out: Path, batches: Iterator[np.ndarray], input_name: str, work: Path) -> None:
    """OpenVINO's NNCF on the ONNX graph: its transformer scheme (LayerNorm, softmax and GELU stay float, the
    matrix products int8), and the overflow fix for CPUs without VNNI (7-bit weights where it is needed)."""
    import nncf
    import onnx

    calibration = list(batches)
    dataset = nncf.Dataset(calibration, lambda batch: {input_name: batch})
    quantized = nncf.quantize(onnx.load(str(fp32_model)), dataset, subset_size=len(calibration),
                              model_type=nncf.ModelType.TRANSFORMER,
                              advanced_parameters=nncf.AdvancedQuantizationParameters(
                                  overflow_fix=nncf.OverflowFix.ENABLE))
    onnx.save_model(quantized, str(out))
