"""The convolution the Flax twin's nnx.Conv layers call: XLA's own, except for small feature maps on CPU.

XLA:CPU (jaxlib 0.10.2) runs a convolution whose output map is tiny pathologically slowly: a 3x3 stride-1 conv of
batch 32, 512 -> 512 channels on a 2x2 map took 556 ms forward + backward here, the same arithmetic written as
patches + one matmul 10 ms; a 3x3 conv on a 1x1 map (ResNet-34 at 32 px) 86 ms vs 10 ms. ResNet inputs of 32-64 px
reach layer3/layer4 at 1x1 to 4x4, 224 px inputs layer4 at 7x7. Two lowerings replace it there, on CPU only:

- `patches_conv` (forward only, i.e. inference): patches + one matmul, for the smallest maps (see the thresholds).
- `tapwise_conv` (forward + backward when differentiated, i.e. training): one matmul per kernel tap over just the
  pixels where that tap reads data, summed. On small maps a large share of a padded convolution's products are
  with padding zeros (2x2 map, 3x3 kernel: 56%; 4x4: 31%; 7x7: 18%); oneDNN (PyTorch's CPU kernels) skips them,
  XLA's convolution and patches do not. Measured here: PyTorch's convolution on a padded 4x4 map takes 0.71x the
  time of the same-size convolution without padding, exactly its share of real products; XLA's matmuls run at the
  same rate as oneDNN's on real products (~200-220 GFLOP/s on these 2 cores). Its forward alone beats patches,
  but inside a whole inference graph XLA fuses the input's producers (BatchNorm, ReLU, residual adds) into each of
  the nine tap slices, computing them nine times over (an optimization_barrier is removed before fusion on CPU),
  so it is used through a custom JVP only when the convolution is differentiated, where its backward saves more
  than that costs. (Patches do not suffer it: XLA:CPU does not fuse their concatenate.)

Training also takes `tapwise_conv` for every 1x1 convolution (a ResNet-50's Bottleneck conv1/conv3 and projection
shortcuts), whatever its map: there it is one matmul, and XLA's 1x1 convolution backward is slow.

The choice is made per platform at lowering time (`lax.platform_dependent`), so GPUs and TPUs keep XLA's
convolution, and per shape at trace time. Both lowerings sum the same products in another order: results agree
with XLA's convolution to float rounding (parity tests hold).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from r34_flax.windows import output_size, window_tap

# Which convolutions take patches + matmul on CPU. Measured forward + backward, 3x3 convs, 128-512 channels, batch
# 8-128 (median of 15, XLA conv / patches): output maps of 1x1 and 2x2 pixels: patches 8-50x faster at every batch
# and width, so always. 3x3 and 4x4 maps: patches win while the patch matrix has few rows (batch x pixels <= 512:
# 4x4 b8 512ch 15.4/8.1 ms, 4x4 b32 512ch 32.8/28.8, 3x3 b32 256ch 6.4/5.1, 4x4 b8-32 128ch tie) and lose beyond
# (4x4 b128 128ch 8.4/10.7, 256ch 28.6/43.8; 3x3 b128 512ch 56.8/76.3), where building patches costs more than
# XLA's convolution loses. 8x8 and up: XLA wins 1.1-1.4x. Whole train step / inference at 128 @ 32 (layer2 at
# 4x4, 2048 rows): 3-8% faster with this rule than with "all maps <= 16 px". The rows are those of the traced
# shape: under a jit over a sharded batch that is the global batch, a larger figure than each device's (a CPU
# run on several devices then keeps XLA's convolution at 3x3-4x4 a little more often; results are the same).
TINY_MAP_PIXELS = 4
SMALL_MAP_PIXELS = 16
SMALL_MAP_ROWS = 512
# Training (forward + backward) takes tapwise_conv on output maps of at most this many pixels (ResNet-34 train step,
# one process A/B against patches + XLA's convolution: +21% at batch 128 @ 32, +14% at 32 @ 64, +6% at 8 @ 224
# whose layer4 is 7x7). Forward + backward, 3x3 convs: 7x7 b8 512ch 18.3 vs XLA 22.9 ms; 3x3 b128 512ch 37 vs
# 55; 8x8 b8 512ch 23.7 vs 27.6 but 8x8 b32 128ch 6.5 vs 6.2 and b128 64ch 9.7 vs 7.7; 14x14 ties.
TAPWISE_MAP_PIXELS = 49
# ... and every 1x1 convolution, whatever its map (the Bottleneck's conv1 and conv3, the projection shortcuts at
# stride 1 and 2): tapwise_conv of a 1x1 kernel is one (strided) slice and one matmul, forward and backward, where
# XLA's convolution backward is slow. ResNet-50 train step, one process, variants timed in alternation (Intel Xeon
# SPR, 2 cores, with r34_flax.xla_cpu's flag): 8 @ 224 3.87 -> 2.72 s, 32 @ 64 1.25 -> 0.98 s (stride-1 1x1 only:
# 3.12 s, 1.17 s). Not differentiated they stay XLA's convolutions (as a matmul inference was 5-36% slower).
# 0 leaves 1x1 convolutions to TAPWISE_MAP_PIXELS like the others.
TAPWISE_POINTWISE = 1

_NHWC_HWIO = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # lax.ConvDimensionNumbers for NHWC, HWIO, NHWC


def _output_pixels(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Sequence[int],
                   padding: Any, lhs_dilation: Any, rhs_dilation: Any, dimension_numbers: Any,
                   feature_group_count: int) -> int | None:
    """Output pixels of a plain 2-D NHWC/HWIO convolution (explicit padding, no dilation, no groups), else None."""
    if len(lhs_shape) != 4 or feature_group_count != 1 or isinstance(padding, str):
        return None
    if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
        return None
    if dimension_numbers is None or tuple(map(tuple, dimension_numbers)) != _NHWC_HWIO:
        return None
    out = [output_size(n, k, s, lo, hi) for n, k, s, (lo, hi) in zip(lhs_shape[1:3], rhs_shape[:2], window_strides,
                                                                     padding)]
    return math.prod(out)


def uses_patches(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Sequence[int],
                 padding: Any, lhs_dilation: Any = None, rhs_dilation: Any = None, dimension_numbers: Any = None,
                 feature_group_count: int = 1) -> bool:
    """Whether this convolution's forward (not differentiated) is patches + matmul on CPU: a plain 2-D NHWC/HWIO
    convolution (explicit padding, no dilation, no groups) whose output map has at most TINY_MAP_PIXELS pixels, or
    at most SMALL_MAP_PIXELS pixels and at most SMALL_MAP_ROWS rows (batch x output pixels) of patches."""
    pixels = _output_pixels(lhs_shape, rhs_shape, window_strides, padding, lhs_dilation, rhs_dilation,
                            dimension_numbers, feature_group_count)
    if pixels is None:
        return False
    rows = lhs_shape[0] * pixels
    return pixels <= TINY_MAP_PIXELS or (pixels <= SMALL_MAP_PIXELS and rows <= SMALL_MAP_ROWS)


def uses_tapwise(lhs_shape: Sequence[int], rhs_shape: Sequence[int], window_strides: Sequence[int],
                 padding: Any, lhs_dilation: Any = None, rhs_dilation: Any = None, dimension_numbers: Any = None,
                 feature_group_count: int = 1) -> bool:
    """Whether this convolution, when differentiated, is tapwise_conv on CPU: a plain 2-D NHWC/HWIO convolution
    whose output map has at most TAPWISE_MAP_PIXELS pixels, or whose kernel is 1x1 without padding (any map)."""
    pixels = _output_pixels(lhs_shape, rhs_shape, window_strides, padding, lhs_dilation, rhs_dilation,
                            dimension_numbers, feature_group_count)
    if pixels is None:
        return False
    pointwise = tuple(rhs_shape[:2]) == (1, 1) and all(tuple(p) == (0, 0) for p in padding)
    return pixels <= TAPWISE_MAP_PIXELS or bool(TAPWISE_POINTWISE and pointwise)


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
        if _data_range(i, sh, oh, top, h) is not None
        for j in range(kw)
        if _data_range(j, sw, ow, left, w) is not None
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


def tapwise_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Sequence[tuple[int, int]],
                 precision: Any = None, preferred_element_type: Any = None) -> jax.Array:
    """NHWC x HWIO convolution as one matmul per kernel tap over the output pixels where that tap reads data (not
    padding), each product padded back to the output map and summed: no product with a padding zero is computed."""
    n, h, w, c = lhs.shape
    kh, kw, _, c_out = rhs.shape
    (sh, sw), ((top, bottom), (left, right)) = window_strides, padding
    oh = output_size(h, kh, sh, top, bottom)
    ow = output_size(w, kw, sw, left, right)
    # Partial sums in at least float32, like a convolution's accumulator, whatever the compute dtype.
    acc_dtype = preferred_element_type or jnp.promote_types(lhs.dtype, jnp.float32)
    out = jnp.zeros((n, oh, ow, c_out), acc_dtype)
    for i in range(kh):
        rows = _data_range(i, sh, oh, top, h)
        if rows is None:
            continue
        for j in range(kw):
            cols = _data_range(j, sw, ow, left, w)
            if cols is None:
                continue
            (r0, r1), (c0, c1) = rows, cols
            # The input pixels tap (i, j) reads at output pixels [r0, r1) x [c0, c1) (no padding among them).
            x = window_tap(lhs, r0 * sh + i - top, c0 * sw + j - left, window_strides, r1 - r0, c1 - c0)
            x = x.reshape(n * (r1 - r0) * (c1 - c0), c)
            y = lax.dot_general(x, rhs[i, j], (((1,), (0,)), ((), ())), precision=precision,
                                preferred_element_type=acc_dtype)
            y = y.reshape(n, r1 - r0, c1 - c0, c_out)
            out = out + jnp.pad(y, ((0, 0), (r0, oh - r1), (c0, ow - c1), (0, 0)))
    return out.astype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))


def _data_range(offset: int, stride: int, out_size: int, pad_before: int, in_size: int) -> tuple[int, int] | None:
    """The output positions [lo, hi) at which kernel offset `offset` reads an input pixel (not padding); None when
    it reads only padding."""
    hits = [k for k in range(out_size) if pad_before <= offset + stride * k < pad_before + in_size]
    return (hits[0], hits[-1] + 1) if hits else None


@partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5, 6))
def _cpu_conv(lhs: jax.Array, rhs: jax.Array, window_strides: tuple, padding: tuple, precision: Any,
              preferred_element_type: Any, forward: Callable) -> jax.Array:
    """`forward` (patches or XLA's convolution) when not differentiated; tapwise_conv when differentiated.

    A custom JVP (not VJP): the tangent is tapwise_conv, linear in each operand, which JAX transposes for reverse
    mode, so jax.grad and jax.jvp both work."""
    return forward(lhs, rhs)


@_cpu_conv.defjvp
def _cpu_conv_jvp(window_strides: tuple, padding: tuple, precision: Any, preferred_element_type: Any,
                  forward: Callable, primals: tuple, tangents: tuple) -> tuple[jax.Array, jax.Array]:
    (lhs, rhs), (lhs_dot, rhs_dot) = primals, tangents

    def conv(a: jax.Array, b: jax.Array) -> jax.Array:
        return _tapwise_jit(a, b, window_strides, padding, precision, preferred_element_type)

    return conv(lhs, rhs), conv(lhs_dot, rhs) + conv(lhs, rhs_dot)


# Traced once per distinct shape and reused by every convolution of that shape (a ResNet repeats a few shapes
# many times): halves the time spent tracing a train step. XLA inlines it when compiling.
_tapwise_jit = jax.jit(tapwise_conv, static_argnums=(2, 3, 4, 5))


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Any = None, rhs_dilation: Any = None, dimension_numbers: Any = None,
                         feature_group_count: int = 1, batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None, out_sharding: Any = None) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` (nnx.Conv's `conv_general_dilated`): on CPU, small-map convolutions
    take `patches_conv` forward and `tapwise_conv` when differentiated; everything else (and every convolution on
    GPU/TPU) XLA's convolution."""

    def xla(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type, out_sharding)

    shapes = (lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
              feature_group_count)
    # An explicit output sharding (explicit-sharding mode) stays with XLA, which knows how to honour it.
    if out_sharding is not None or batch_group_count != 1 or not uses_tapwise(*shapes):
        return xla(lhs, rhs)
    strides = tuple(window_strides)
    pads = tuple(tuple(p) for p in padding)

    def patches(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        return patches_conv(lhs, rhs, strides, pads, precision, preferred_element_type)

    def cpu(lhs: jax.Array, rhs: jax.Array) -> jax.Array:
        forward = patches if uses_patches(*shapes) else xla
        return _cpu_conv(lhs, rhs, strides, pads, precision, preferred_element_type, forward)

    return lax.platform_dependent(lhs, rhs, cpu=cpu, default=xla)
