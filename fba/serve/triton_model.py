"""The model as Triton's Python backend runs it: ``TritonPythonModel`` (the backend's own protocol).

Triton's dynamic batcher hands :meth:`TritonPythonModel.execute` the requests it merged; each is read and checked
on its own (:mod:`fba.serve.requests`), the good ones' rows go through the model in one call, and every request
gets its own response: its features, or an INVALID_ARGUMENT error naming its problem (HTTP 400), so a bad request
never fails the others of its batch. ``initialize`` loads and warms the model (every batch bucket) before Triton
marks the model, and so the server, ready. Our metrics join Triton's on its Prometheus endpoint.

This module is imported by the backend's stub process (``model.py`` of the repository that
:mod:`fba.serve.repository` writes), where ``triton_python_backend_utils`` exists; nothing else imports it.
"""
from __future__ import annotations

import json
import sys
import traceback

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from fba.serve.model import ServedModel, ServeSpec
from fba.serve.requests import IMAGE_INPUTS, TEXT_INPUTS, TOKEN_INPUTS, Limits, RequestError, read_request

INPUT_NAMES = IMAGE_INPUTS + TEXT_INPUTS + TOKEN_INPUTS
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class Metrics:
    """fba's own series on Triton's /metrics: rows per model call, and refused requests by reason."""

    def __init__(self, model: str):
        family = pb_utils.MetricFamily
        # a Metric needs its MetricFamily alive: the families are kept
        self.families = (
            family(name="fba_batch_rows", description="images in one model call (after Triton merged requests)",
                   kind=family.HISTOGRAM),
            family(name="fba_batch_requests", description="requests merged into one model call", kind=family.HISTOGRAM),
            family(name="fba_request_errors_total", description="requests answered with an error, by reason",
                   kind=family.COUNTER),
        )
        rows, requests, self.errors = self.families
        self.rows = rows.Metric(labels={"model": model}, buckets=BATCH_BUCKETS)
        self.requests = requests.Metric(labels={"model": model}, buckets=BATCH_BUCKETS)
        self.model = model
        self.by_reason: dict[str, object] = {}

    def error(self, reason: str) -> None:
        if reason not in self.by_reason:
            self.by_reason[reason] = self.errors.Metric(labels={"model": self.model, "reason": reason})
        self.by_reason[reason].increment(1)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        spec = json.loads(config["parameters"]["fba_spec"]["string_value"])
        spec["batches"] = tuple(spec["batches"])
        self.limits = Limits(max_rows=int(config["max_batch_size"]),
                             max_pixels=int(config["parameters"]["fba_max_pixels"]["string_value"]))
        torch.set_num_threads(int(config["parameters"]["fba_threads"]["string_value"]))
        contract = json.loads(config["parameters"]["fba_contract"]["string_value"])
        self.model = ServedModel(ServeSpec(**spec), contract)
        self.feature = self.model.spec.feature
        self.metrics = Metrics(args["model_name"])
        self.model.warm()

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        accepted = []
        for i, request in enumerate(requests):
            try:
                inputs = {}
                for name in INPUT_NAMES:
                    tensor = pb_utils.get_input_tensor_by_name(request, name)
                    if tensor is not None:
                        inputs[name] = tensor.as_numpy()
                accepted.append((i, read_request(inputs, self.feature, self.model.image_size, self.limits)))
            except RequestError as err:
                self.metrics.error(err.reason)
                responses[i] = _error(str(err), pb_utils.TritonError.INVALID_ARG)
        if accepted:
            self.metrics.requests.observe(len(accepted))
            try:
                features = self._features([rows for _, rows in accepted])
            except Exception as err:  # the model failed on checked input: every request of the call says so
                traceback.print_exc(file=sys.stderr)
                for i, _ in accepted:
                    self.metrics.error("model")
                    responses[i] = _error(f"the model failed: {type(err).__name__}: {err}", pb_utils.TritonError.INTERNAL)
                return responses
            start = 0
            for i, rows in accepted:
                part = features[start:start + len(rows)]
                start += len(rows)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("features", part)])
        return responses

    def _features(self, parts: list) -> np.ndarray:
        images = torch.cat([p.images for p in parts])
        tokens = [None, None]
        if self.feature == "full":
            tokens = [torch.cat([p.fg_tokens for p in parts]), torch.cat([p.bg_tokens for p in parts])]
        self.metrics.rows.observe(len(images))
        return np.ascontiguousarray(self.model(images, *tokens), dtype=np.float32)

    def finalize(self) -> None:
        self.model.close()


def _error(message: str, code) -> object:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
