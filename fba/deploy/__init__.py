"""Deployment: ``fba export`` (ONNX, AOTInductor) and the exported graph.

docs/deployment.md is the user's guide; ``graph`` holds the exported graph, ``export`` the command and the
export files' metadata, ``targets`` what each consumer (boxmot, DeepStream, Triton) loads beside the model,
``quantize`` the int8 models. The runtimes that embed with an export are :mod:`fba.embed.backends`.
"""
