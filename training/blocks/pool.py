"""Pooling choices: local max / average pooling and global pooling for classifier heads."""

from __future__ import annotations

from torch import nn

# Global pools allowed in a ClassifierHead (the exporter writes their vector-Jacobian product).
GLOBAL_POOLS: dict[str, type[nn.Module]] = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}


def create_pool2d(
    kind: str, kernel_size: int = 2, stride: int | None = None, padding: int = 0, ceil_mode: bool = False
) -> nn.Module:
    """A local pooling layer: `kind` is "max" or "avg" (average excludes the zero padding)."""
    stride = kernel_size if stride is None else stride
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size, stride, padding, ceil_mode=ceil_mode, count_include_pad=False)
    raise ValueError(f"unknown pooling {kind!r}: expected 'max' or 'avg'")


def global_pool(kind: str = "avg", output_size: int | tuple[int, int] = 1) -> nn.Module:
    """Global (adaptive) pooling to `output_size`: "avg" or "max"."""
    if kind not in GLOBAL_POOLS:
        raise ValueError(f"unknown global pooling {kind!r}: expected one of {sorted(GLOBAL_POOLS)}")
    return GLOBAL_POOLS[kind](output_size)
