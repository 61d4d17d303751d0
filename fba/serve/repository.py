"""The Triton model repository ``fba serve`` runs: ``<root>/<name>/config.pbtxt`` and ``<root>/<name>/1/model.py``.

It is an ordinary repository of Triton's Python backend, so the same folder serves in a full Triton deployment
(``tritonserver --model-repository <root>``, with fba installed in the backend's Python). The configuration says
everything about the model: its inputs (``images`` or ``image_bytes``, and for the full feature the captions as
text or token ids; each request gives one of each kind, so they are optional), its one output, the dynamic
batcher with its bounded queue, the instances, and in ``parameters`` the contract (``fba_contract``, what
``GET /v2/models/<name>/config`` shows) and what the backend needs to rebuild the model (``fba_spec``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from fba.deploy.targets import TRITON_MODEL_NAME as MODEL_NAME  # one name, on either Triton backend
from fba.serve.model import ServeSpec

MODEL_PY = "from fba.serve.triton_model import TritonPythonModel  # noqa: F401  (Triton's Python backend loads it)\n"


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic batcher and instances for the model."""

    max_batch: int = 32
    max_queue_delay_us: int = 500
    max_queue_size: int = 256
    queue_timeout_us: int = 0  # 0: a request waits in the queue as long as it takes
    instances: int = 1


def _string(text: str) -> str:
    return json.dumps(text)  # protobuf text format reads JSON's escapes of quotes and backslashes


def _inputs(feature: str, image_size: list[int]) -> list[str]:
    height, width = image_size
    rows = [f'{{ name: "images" data_type: TYPE_UINT8 dims: [ 3, {height}, {width} ] optional: true }}',
            '{ name: "image_bytes" data_type: TYPE_STRING dims: [ 1 ] optional: true }']
    if feature == "full":
        rows += [f'{{ name: "{name}" data_type: TYPE_STRING dims: [ 1 ] optional: true }}'
                 for name in ("fg_text", "bg_text")]
        rows += [f'{{ name: "{name}" data_type: TYPE_INT64 dims: [ 77 ] optional: true }}'
                 for name in ("fg_tokens", "bg_tokens")]
    return rows


def model_config(spec: ServeSpec, contract: dict, batching: Batching, threads: int, max_pixels: int,
                 name: str = MODEL_NAME) -> str:
    """config.pbtxt of the served model."""
    policy = [f"max_queue_size: {batching.max_queue_size}", "timeout_action: REJECT",
              "allow_timeout_override: true"]
    if batching.queue_timeout_us:
        policy.append(f"default_timeout_microseconds: {batching.queue_timeout_us}")
    parameters = {
        "fba_spec": json.dumps(dataclasses.asdict(spec)),
        "fba_contract": json.dumps(contract),
        "fba_threads": str(threads),
        "fba_max_pixels": str(max_pixels),
    }
    return "\n".join([
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {batching.max_batch}",
        "input [\n  " + ",\n  ".join(_inputs(spec.feature, contract["image_size"])) + "\n]",
        f'output [\n  {{ name: "features" data_type: TYPE_FP32 dims: [ {contract["feature_dim"]} ] }}\n]',
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}\n"
        "  default_queue_policy { " + " ".join(policy) + " }\n}",
        f"instance_group [ {{ count: {batching.instances} kind: KIND_CPU }} ]",
        "parameters [\n  " + ",\n  ".join(
            f"{{ key: {_string(key)} value: {{ string_value: {_string(value)} }} }}" for key, value in parameters.items()
        ) + "\n]",
        "",
    ])


def write_repository(root: Path, config: str, name: str = MODEL_NAME) -> Path:
    """``root/name/config.pbtxt`` and ``root/name/1/model.py``; returns ``root``."""
    version = root / name / "1"
    version.mkdir(parents=True, exist_ok=True)
    (root / name / "config.pbtxt").write_text(config)
    (version / "model.py").write_text(MODEL_PY)
    return root
