"""The convolution the Flax twin's nnx.Conv layers call: XLA's own, except for small feature maps on CPU.

XLA:CPU (jaxlib 0.10.2) runs a convolution whose output map is tiny pathologically slowly: a 3x3 stride-1 conv of
batch 32, 512 -> 512 channels on a 2x2 map took 556 ms forward + backward here, the same arithmetic written as
patches + one matmul 10 ms; a 3x3 conv on a 1x1 map (ResNet-34 at 32 px) 86 ms vs 10 ms. At 8x8 and above XLA's
convolution is as fast or faster. ResNet inputs of 32-64 px reach layer3/layer4 at 1x1 to 4x4, so there the
convolution is lowered as patches + matmul. The choice is made per platform at lowering time
(`lax.platform_dependent`), so GPUs and TPUs keep XLA's convolution, and per shape at trace time.
The matmul sums the same products in another order: results agree to float rounding (parity tests hold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from r34_flax.windows import output_size, window_tap

# Output maps of at most this many pixels take patches + matmul on CPU. Measured forward + backward (batch 8-128,
# 256-512 channels): at 1x1 and 2x2 patches win 8-50x, at 4x4 they tie, at 7x7 patches win 1.25x, at 8x8 and
# 16x16 XLA wins 1.1-1.4x; 16 keeps every clear win and no clear loss.
SMALL_MAP_PIXELS = 16

_NHWC_HWIO = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lax.ConvDimensionNumbers for NHWC, HWIO, NHWC


def uses_patches(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Sequence[int],
                 padding: Any, lhs_dilation: Any = None, rhs_dilation: Any = None, dimension_numbers: Any = None,
                 feature_group_count: int = 1) -> bool:
    """Whether this convolution is lowered as patches + matmul on CPU: a plain 2-D NHWC/HWIO convolution (explicit
    padding, no dilation, no groups) whose output map has at most SMALL_MAP_PIXELS pixels."""
    if len(lhs_shape) != 4 or feature_group_count != 1 or isinstance(padding, str):
        return False
    if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
        return False
    if dimension_numbers is None or tuple(map(tuple, dimension_numbers)) != _NHWC_HWIO:
        return False
    out = [output_size(n, k, s, lo, hi) for n, k, s, (lo, hi) in zip(lhs_shape[1:3], rhs_shape[:2], window_strides,
                                                                     padding)]
    return math.prod(out) <= SMALL_MAP_PIXELS


def patches_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Sequence[tuple[int, int]],
                 precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """NHWC x HWIO convolution as one matmul over (kh, kw, c_in) patches gathered by strided slices."""
    n, h, w, c = lhs.shape
    kh, kw, _, c_out = rhs.shape
    (sh, sw), ((top, bottom), (left, right)) = window_strides, padding
    padded = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    oh = output_size(h, kh, sh, top, bottom)
    ow = output_size(w, kw, sw, left, right)
    # Taps that only ever read padding add zeros: left out, with their kernel rows (on a 1x1 map a 3x3 conv is
    # one matmul over the centre tap instead of nine).
    live = [
        (i, j)
        for i in range(kh)
        if _reads_data(i, sh, oh, top, h)
        for j in range(kw)
        if _reads_data(j, sw, ow, left, w)
    ]
    taps = [window_tap(padded, i, j, window_strides, oh, ow) for i, j in live]
    # (tap, c_in) order on the last axis, matching the kernel rows gathered below.
    patches = jnp.concatenate(taps, axis=-1).reshape(n * oh * ow, len(live) * c)
    if len(live) == kh * kw:
        kernel = rhs.reshape(kh * kw * c, c_out)
    else:  # gathering rows costs a scatter in the backward pass: only where taps were dropped
        kernel = jnp.concatenate([rhs[i, j] for i, j in live], axis=0)
    out = lax.dot_general(patches, kernel, (((1,), (0,)), ((), ())),
                          precision=precision, preferred_element_type=preferred_element_type)
    return out.reshape(n, oh, ow, c_out)


def _reads_data(offset: int, stride: int, out_size: int, pad_before: int, in_size: int) -> bool:
    """Whether kernel offset `offset` reads an input pixel (not padding) at any of the `out_size` positions."""
    return any(pad_before <= offset + stride * k < pad_before + in_size for k in range(out_size))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Any = None, rhs_dilation: Any = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None, out_sharding: Any = None) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` (nnx.Conv's `conv_general_dilated`): small-map convolutions take
    `patches_conv` on CPU, everything else (and every convolution on GPU/TPU) XLA's convolution."""

    def xla(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type, out_sharding)

    # An explicit output sharding (explicit-sharding mode) stays with XLA, which knows how to honour it.
    small = uses_patches(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
                         dimension_numbers, feature_group_count)
    if out_sharding is not None or batch_group_count != 1 or not small:
        return xla(lhs, rhs)

    def cpu(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return patches_conv(lhs, rhs, window_strides, padding, precision, preferred_element_type)

    return lax.platform_dependent(lhs, rhs, cpu=cpu, default=xla)
