"""Applications built on the library: ``fba demo`` (``demo``), the ablation table (``ablate``), captioning a
data set (``captioner``) and the caption-only retrieval baseline (``caption_baseline``), and pictures (``viz``)."""
