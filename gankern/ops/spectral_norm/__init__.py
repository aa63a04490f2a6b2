"""Spectral-norm ops (placeholder: reference only until the fused kernels land)."""

IMPLEMENTED = ("reference",)
