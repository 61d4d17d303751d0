"""Embedding: images (and their captions) to features, the job of ``fba embed`` and of every evaluation.

``embedder`` is the plain PyTorch path (:class:`Embedder`), ``fast`` the bucketed CUDA-graph path
(:class:`FastEmbedder`, :func:`build_embedder`), ``text_bank`` the captions' text inputs, ``backends`` the
onnxruntime and AOTInductor runtimes of an export, ``shards`` the torchrun-sharded run, ``command`` the
``fba embed`` command. The uint8 to model-input normalisation is :class:`fba.data.transforms.ClipNormalise`.
"""
