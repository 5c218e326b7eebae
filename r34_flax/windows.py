"""Window arithmetic shared by the convolution lowering and the max pool: output sizes and strided taps."""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax import lax


def output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    """Positions a window of `kernel` at `stride` takes along an axis of `size` padded by (pad_before, pad_after)."""
    return (size + pad_before + pad_after - kernel) // stride + 1


def window_tap(x: jax.Array, i: int, j: int, strides: Sequence[int], out_h: int, out_w: int) -> jax.Array:
    """The (N, out_h, out_w, C) values of NHWC `x` at rows i, i + sh, ... and columns j, j + sw, ...: what window
    offset (i, j) sees in every window when `x` is the padded input."""
    n, _, _, c = x.shape
    sh, sw = strides
    return lax.slice(x, (0, i, j, 0), (n, i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1, c), (1, sh, sw, 1))
