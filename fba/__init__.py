"""FBA-ReID: the reference implementation of "Background Matters Too" (FBA) for person re-identification."""

__version__ = "0.1.0"
