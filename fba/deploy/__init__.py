"""Deployment: ``fba export`` (ONNX, AOTInductor), the runtimes that serve the exports, sharded embedding.

docs/deployment.md is the user's guide; ``graph`` holds the exported graph, ``export`` the command,
``runtime`` the onnxruntime / AOTInductor embedding backends, ``shards`` the torchrun-sharded ``fba embed``.
"""
