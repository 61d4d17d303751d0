"""Serving an exported model: the ``onnxruntime``, ``openvino`` and ``aoti`` backends of ``fba embed``.

Both take what the exported graph takes (uint8 [N, 3, H, W] RGB images resized by the caller, and CLIP token
ids of the two captions for the full feature) and give float32 features on the host, so ``fba embed`` writes
the same features file whichever backend ran. Neither imports the model code: an onnxruntime session needs
only the ``.onnx`` file, an AOTInductor package only torch.

An ONNX file is data; an AOTInductor package is native code (its shared library runs as it is loaded), so it is
loaded only when the caller says it trusts it (``--trust-native-code``); its metadata is read without loading.
torch extracts a package into a temporary folder that it removes only when the loader is destroyed; a process
that ends otherwise (SIGKILL, ``os._exit``) would leave it, so each load extracts under a folder named after this
process, removed by :meth:`ExportedModel.close` and swept by the next load once its process is gone.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fba.utils.atomic import remove_orphans
from fba.deploy.export import ExportFileError, _aoti_metadata, read_metadata, resolve_model_file
from fba.deploy.graph import graph_images
from fba.errors import UsageError

BACKENDS = ("onnxruntime", "aoti", "openvino")
PERFORMANCE_HINTS = ("latency", "throughput")
EXTRACTION_PREFIX = "fba-aoti-"


class CaptionStates:
    """The text tower of a states export (``model-text.onnx`` beside it) behind a cache of the captions it has
    encoded: each distinct caption runs through the tower once, however many images are embedded with it (a
    tracker's per-track caption, every frame; a camera's background caption, every crop). ``run(tokens)`` is the
    runtime's call of the tower graph, ``(states, eot)`` as arrays; ``size`` bounds the cache (a ViT-B/16
    caption's states are 77 x 512 float32, 158 kB)."""

    def __init__(self, run, size: int = 256):
        self.run = run
        self.size = size
        self.cache: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.encoded = 0  # captions run through the tower

    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = tokens.numpy()
        keys = [row.tobytes() for row in rows]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if missing:
            index = {k: i for i, k in enumerate(keys)}
            states, eot = self.run(rows[[index[k] for k in missing]])
            self.encoded += len(missing)
            for i, key in enumerate(missing):
                self.cache[key] = (np.asarray(states[i], np.float32), np.asarray(eot[i], np.int64))
        for key in keys:
            self.cache.move_to_end(key)
        found = [self.cache[k] for k in keys]
        while len(self.cache) > max(self.size, len(set(keys))):
            self.cache.popitem(last=False)
        return torch.from_numpy(np.stack([f[0] for f in found])), torch.from_numpy(np.stack([f[1] for f in found]))


class ExportedModel:
    """An exported model ready to run: ``model(images, fg_tokens, bg_tokens) -> float32 [N, D]``.

    A states export (``fba export --caption-input states``) takes the same token ids: a subclass sets
    ``self.captions`` (:class:`CaptionStates` over the tower file beside the model) and the tokens become the
    tower's outputs here."""

    def __init__(self, path: Path, metadata: dict):
        self.path = path
        self.metadata = metadata
        self.captions: CaptionStates | None = None

    @property
    def takes_states(self) -> bool:
        return self.metadata.get("caption_input") == "states"

    def text_tower_file(self) -> Path:
        """The tower file beside a states export, checked to be this export's: the text tower of the same
        checkpoint, giving states of the width the graph takes (another model's tower would run and give wrong
        features)."""
        tower = self.path.with_name(self.metadata["text_tower"])
        if not tower.is_file():
            raise ExportFileError(f"{self.path}: takes the captions as text-tower states, but the tower "
                                  f"{tower.name} is not beside it (fba export --caption-input states writes both)")
        meta = read_metadata(tower)
        if meta.get("role") != "text_tower":
            raise ExportFileError(f"{tower}: not a text tower export (fba export --caption-input states writes one)")
        for key in ("checkpoint_sha256", "text_width", "text_length"):
            if meta.get(key) != self.metadata.get(key):
                raise ExportFileError(f"{tower}: the text tower of another model ({key} {meta.get(key)} against "
                                      f"{self.path.name}'s {self.metadata.get(key)}); export both again together")
        return tower

    @property
    def feature(self) -> str:
        return self.metadata["feature"]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.metadata["image_size"])

    def inputs(self, images, fg_tokens=None, bg_tokens=None) -> list[torch.Tensor]:
        """The graph's inputs for uint8 pixels ``images``: cast, or normalised as the export's ``input_norm``
        says (an export for a tracker that normalises its crops itself)."""
        tensors = [graph_images(torch.as_tensor(images), self.metadata["image_dtype"],
                                self.metadata.get("input_norm", "none"))]
        if self.feature == "full":
            if fg_tokens is None or bg_tokens is None:
                raise ValueError(f"{self.path} takes the full feature's inputs: images, fg_tokens and bg_tokens")
            fg, bg = torch.as_tensor(fg_tokens, dtype=torch.int64), torch.as_tensor(bg_tokens, dtype=torch.int64)
            if self.takes_states:  # one pass of the tower for both captions' new rows
                states, eot = self.captions(torch.cat([fg, bg]))
                n = len(fg)
                return tensors + [states[:n], eot[:n], states[n:], eot[n:]]
            tensors += [fg, bg]
        return tensors

    def __call__(self, images, fg_tokens=None, bg_tokens=None) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the runtime holds outside the process (nothing, unless a subclass says so)."""

    def __enter__(self) -> "ExportedModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OnnxRuntimeModel(ExportedModel):
    """An onnxruntime session; providers default to TensorRT, CUDA, CPU, those installed, in that order."""

    PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, path: Path, providers: Sequence[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        path = resolve_model_file(path, "onnx")
        super().__init__(path, read_metadata(path))
        available = ort.get_available_providers()
        chosen = list(providers) if providers else [p for p in self.PREFERRED if p in available]
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as err:  # onnxruntime's Fail / InvalidGraph / NotImplemented carry the reason
            raise ExportFileError(f"{path}: onnxruntime cannot load it ({str(err).splitlines()[0][:300]})") from err
        self.names = [i.name for i in self.session.get_inputs()]
        self._check_graph()
        if self.takes_states:
            tower_file = self.text_tower_file()
            try:
                tower = ort.InferenceSession(str(tower_file), options, providers=chosen)
            except Exception as err:
                reason = str(err).splitlines()[0][:300]
                raise ExportFileError(f"{tower_file}: onnxruntime cannot load it ({reason})") from err
            self.captions = CaptionStates(lambda tokens: tower.run(["states", "eot"], {"tokens": tokens}))

    def _check_graph(self) -> None:
        """The graph against its own fba metadata, so a mismatch is one line at load, not onnxruntime's
        InvalidArgument at the first batch."""
        outputs = [o.name for o in self.session.get_outputs()]
        if "features" not in outputs:
            raise ExportFileError(f"{self.path}: the graph has no output named features (outputs: {', '.join(outputs)})")
        if self.names != self.metadata["inputs"]:
            raise ExportFileError(f"{self.path}: the graph's inputs {self.names} are not the metadata's "
                                  f"{self.metadata['inputs']}")
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 4 or any(isinstance(d, int) and d != want
                                  for d, want in zip(shape[1:], (3, *self.image_size))):
            raise ExportFileError(f"{self.path}: the graph takes images of shape {shape}, but its metadata says "
                                  f"[N, 3, {self.image_size[0]}, {self.image_size[1]}]")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def __call__(self, images, fg_tokens=None, bg_tokens=None) -> np.ndarray:
        feeds = {name: t.numpy() for name, t in zip(self.names, self.inputs(images, fg_tokens, bg_tokens))}
        return self.session.run(["features"], feeds)[0]


class OpenVinoModel(ExportedModel):
    """OpenVINO on the CPU, reading the ONNX export as it is (OpenVINO converts it at load; no other file).

    ``hint`` is OpenVINO's performance hint: ``latency`` (one request on all cores: a tracker's per-frame call) or
    ``throughput`` (several streams sharing the cores: bulk embedding); ``threads`` caps the cores it takes.
    The graph is compiled with its dynamic batch axis; where OpenVINO cannot (2026.4 fails on the full feature's
    graph in a fusion pass, "Cannot get length of dynamic dimension"), a static graph per batch size is compiled
    on first use, so ``fba embed`` compiles at most two (its batch size and the last, shorter batch).
    """

    def __init__(self, path: Path, hint: str = "latency", threads: int | None = None):
        import openvino as ov

        if hint not in PERFORMANCE_HINTS:
            raise UsageError(f"--performance-hint {hint}: choose from {', '.join(PERFORMANCE_HINTS)}")
        path = resolve_model_file(path, "onnx")
        super().__init__(path, read_metadata(path))
        self.core = ov.Core()
        # f32: OpenVINO runs bf16 on AMX CPUs by default, and the features must be fba's
        self.config = {"PERFORMANCE_HINT": hint.upper(), "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.requests: dict[int | None, object] = {}
        try:
            self.graph = self.core.read_model(str(path))
        except Exception as err:  # OpenVINO's RuntimeError carries the reason on its first line
            raise ExportFileError(f"{path}: OpenVINO cannot read it ({_first_line(err)})") from err
        self.names = [port.any_name for port in self.graph.inputs]
        if self.names != self.metadata["inputs"]:
            raise ExportFileError(f"{path}: the graph's inputs {self.names} are not the metadata's "
                                  f"{self.metadata['inputs']}")
        try:
            self.requests[None] = self.core.compile_model(self.graph, "CPU", self.config).create_infer_request()
        except Exception as err:
            if "dynamic dimension" not in str(err):
                raise ExportFileError(f"{path}: OpenVINO cannot compile it ({_first_line(err)})") from err
        if self.takes_states:
            tower_file = self.text_tower_file()
            try:
                tower = self.core.compile_model(str(tower_file), "CPU", self.config).create_infer_request()
            except Exception as err:
                raise ExportFileError(f"{tower_file}: OpenVINO cannot load it ({_first_line(err)})") from err

            def run(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                out = tower.infer({"tokens": tokens})
                return np.array(out["states"], copy=True), np.array(out["eot"], copy=True)

            self.captions = CaptionStates(run)

    def _request(self, batch: int):
        request = self.requests.get(None) or self.requests.get(batch)
        if request is None:
            graph = self.graph.clone()
            graph.reshape({port.any_name: [batch, *port.partial_shape[1:]] for port in graph.inputs})
            request = self.requests[batch] = self.core.compile_model(graph, "CPU", self.config).create_infer_request()
        return request

    def __call__(self, images, fg_tokens=None, bg_tokens=None) -> np.ndarray:
        feeds = {name: t.numpy() for name, t in zip(self.names, self.inputs(images, fg_tokens, bg_tokens))}
        out = self._request(len(images)).infer(feeds)
        return np.array(out["features"], dtype=np.float32, copy=True)


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip() and not line.startswith("Exception from")]
    return (lines[0] if lines else str(err).splitlines()[0])[:300]


class AOTIModel(ExportedModel):
    """An AOTInductor package loaded on ``device`` (it runs where it was compiled for: CPU or CUDA)."""

    def __init__(self, path: Path, device: str | torch.device = "cpu", trust_native_code: bool = False):
        path = resolve_model_file(path, "aoti")
        super().__init__(path, read_metadata(path))
        if not trust_native_code:
            raise UsageError(f"{path}: an AOTInductor package is native code that runs as it loads; load only one "
                             "you exported or trust, with --trust-native-code (an ONNX export needs no trust)")
        compiled_for = _aoti_metadata(path).get("AOTI_DEVICE_KEY", "cpu")
        self.device = torch.device(device)
        if compiled_for == "cuda" and not torch.cuda.is_available():
            raise UsageError(f"{path}: compiled for CUDA, and this machine has no usable CUDA device; export it "
                             "again with --device cpu, or use the ONNX export")
        if compiled_for != self.device.type:
            raise UsageError(f"{path}: compiled for {compiled_for}, asked to run on {self.device}; "
                             f"use --device {compiled_for}")
        remove_orphans(Path(tempfile.gettempdir()), EXTRACTION_PREFIX)
        self.extraction = Path(tempfile.mkdtemp(prefix=f"{EXTRACTION_PREFIX}{os.getpid()}-"))
        self._remove_extraction = weakref.finalize(self, shutil.rmtree, self.extraction, ignore_errors=True)
        try:
            with _temporary_folder(self.extraction):
                self.runner = torch._inductor.aoti_load_package(str(path), device_index=self.device.index or -1)
        except Exception as err:
            self.close()
            raise ExportFileError(f"{path}: cannot load the AOTInductor package ({str(err).splitlines()[0][:300]})") from err

    def close(self) -> None:
        """Drop the runner and remove its extracted files (CUDA kernels are read from them at first use, so not
        before)."""
        self.runner = None
        self._remove_extraction()

    @torch.no_grad()
    def __call__(self, images, fg_tokens=None, bg_tokens=None) -> np.ndarray:
        inputs = [t.to(self.device) for t in self.inputs(images, fg_tokens, bg_tokens)]
        out = self.runner(*inputs)
        return out.float().cpu().numpy()


@contextmanager
def _temporary_folder(folder: Path) -> Iterator[None]:
    """``TMPDIR`` set to ``folder`` while torch's package loader picks its extraction folder."""
    earlier = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(folder)
    try:
        yield
    finally:
        if earlier is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = earlier


def load_exported(path: Path, backend: str, device: str | torch.device = "cpu",
                  trust_native_code: bool = False, performance_hint: str = "latency") -> ExportedModel:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    # Ranks sharing a machine share its cores (onnxruntime and OpenVINO ignore OMP_NUM_THREADS, which torchrun sets).
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    threads = max(1, (os.cpu_count() or 1) // local) if local > 1 else None
    if backend == "onnxruntime":
        return OnnxRuntimeModel(path, threads=threads)
    if backend == "openvino":
        if torch.device(device).type != "cpu":
            raise UsageError(f"--backend openvino runs on the CPU, not {device}; give --device cpu")
        return OpenVinoModel(path, performance_hint, threads)
    return AOTIModel(path, device, trust_native_code)


def embed_exported(
    model: ExportedModel,
    paths: Sequence[Path],
    captions: tuple[list[str], list[str]] | None = None,
    batch_size: int = 256,
    num_workers: int = 2,
    progress: bool = True,
) -> torch.Tensor:
    """Features of image files in the given order, through an exported model (``fba embed --backend``)."""
    from torch.utils.data import DataLoader

    from fba.data.transforms import ImageDataset, build_eval_uint8_transform, collate_batch
    from fba.utils.lifetime import WorkerEndsWithParent
    from fba.model.text import tokenize

    if (captions is not None) != (model.feature == "full"):
        raise ValueError(f"{model.path} gives the {model.feature} feature: "
                         + ("captions are needed" if captions is None else "it takes no captions"))
    loader = DataLoader(
        ImageDataset([(str(p), 0, 0) for p in paths], build_eval_uint8_transform(*model.image_size)),
        batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_batch,
        worker_init_fn=WorkerEndsWithParent(),
    )
    rows = []
    with tqdm(total=len(paths), desc="embed", unit="img", disable=not progress, dynamic_ncols=True, leave=False) as bar:
        for batch in loader:
            index = batch["index"].tolist()
            tokens = [None, None]
            if captions is not None:
                tokens = [tokenize([texts[i] for i in index]) for texts in captions]
            rows.append(torch.from_numpy(np.asarray(model(batch["images"], *tokens), dtype=np.float32)))
            bar.update(len(index))
    return torch.cat(rows)
