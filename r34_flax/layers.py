"""Flax NNX layers that compute what their PyTorch namesakes compute, padding and BatchNorm included."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from r34_flax.conv_lowering import conv_general_dilated
from r34_flax.pooling import max_pool


def variance_scaling(scale: float, mode: str, distribution: str) -> nnx.Initializer:
    """`nnx.initializers.variance_scaling(scale, mode, distribution)` ("fan_in" or "fan_out"; "normal" or "uniform")
    for kernels whose last two axes are (in, out), bit for bit, with the random numbers drawn as one flat vector and
    reshaped. JAX's random bits depend only on an element's flat index, so the values are the same; XLA:CPU compiles
    the flat draw many times faster, and every new kernel shape is a new compilation (jax 0.10.2, 2-core Xeon: a
    normal of shape (3, 3, 8, 9) 5.9 s, of shape (648,) 0.34 s; building the `tiny` body 15.4 s -> 6.0 s)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> jax.Array:
        fan = shape[-2 if mode == "fan_in" else -1] * math.prod(shape[:-2])
        variance = jnp.array(scale / fan, dtype=dtype)
        flat = (math.prod(shape),)
        if distribution == "normal":
            values = jax.random.normal(key, flat, dtype) * jnp.sqrt(variance)
        else:
            values = jax.random.uniform(key, flat, dtype, -1) * jnp.sqrt(3 * variance)
        return values.reshape(shape)

    return init


# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") -> N(0, 2 / fan_out), not truncated.
conv_kernel_init = variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear: kaiming_uniform_(a=sqrt(5)) -> U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
linear_kernel_init = variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def linear_bias_init(fan_in: int) -> nnx.Initializer:
    """torch.nn.Linear's bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the bias shape alone does not know fan_in."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: DTypeLike = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    stride: int,
    *,
    groups: int = 1,
    dilation: int = 1,
    dtype: DTypeLike | None,
    param_dtype: DTypeLike,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """Bias-free conv with torch's symmetric padding dilation * (k // 2) ('SAME' would pad (0, 1) at stride 2 on
    even inputs); `groups` as torch's (kernel (k, k, in / groups, out), the layout torch's converts to)."""
    pad = dilation * (kernel_size // 2)
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(kernel_size, kernel_size),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=(dilation, dilation),
        feature_group_count=groups,
        use_bias=False,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=conv_kernel_init,
        conv_general_dilated=conv_general_dilated,
        rngs=rngs,
    )


def linear(
    in_features: int,
    out_features: int,
    *,
    dtype: DTypeLike | None,
    param_dtype: DTypeLike,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    return nnx.Linear(
        in_features,
        out_features,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=linear_kernel_init,
        bias_init=linear_bias_init(in_features),
        rngs=rngs,
    )


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch MaxPool2d(3, stride=2, padding=1), torchvision's stem pool."""
    return max_pool(x, 3, 2, 1)


def bessel_correction(n: int) -> float:
    """The factor n / (n - 1) that makes a batch variance over n values unbiased: torch's BatchNorm updates
    running_var with it, Flax's own BatchNorm does not (parity_tests/injections.py replaces it to show the tests
    catch that)."""
    return n / (n - 1)


class BatchNorm(nnx.Module):
    """BatchNorm over the last axis with torch.nn.BatchNorm2d's semantics.

    Train mode normalises with the biased batch variance over every axis but the last (N, H, W), and updates
    running_mean/running_var as new = (1 - momentum) * old + momentum * batch, with the UNBIASED variance
    n / (n - 1) in the running_var, and counts num_batches_tracked. Eval mode (`use_running_average=True`,
    set by `model.eval()`) normalises with the running statistics. Statistics are kept and computed in at
    least float32 whatever the compute dtype. Under jit with a sharded batch the means are global, so N
    devices compute what one device computes on the same global batch.
    """

    def __init__(
        self,
        num_features: int,
        *,
        eps: float,
        momentum: float,
        zero_scale: bool = False,
        use_running_average: bool = False,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
    ) -> None:
        stat_dtype = jnp.promote_types(param_dtype, jnp.float32)
        self.scale = nnx.Param(jnp.full((num_features,), 0.0 if zero_scale else 1.0, param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), stat_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), stat_dtype))
        # int32, not torch's int64: JAX keeps 64-bit integers only under jax_enable_x64; export restores int64.
        self.num_batches_tracked = nnx.BatchStat(jnp.zeros((), jnp.int32))
        self.eps = eps
        self.momentum = momentum
        self.use_running_average = use_running_average
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = self.dtype or jnp.result_type(x, self.scale[...])
        stat_dtype = self.mean[...].dtype
        xs = x.astype(jnp.promote_types(x.dtype, stat_dtype))
        if self.use_running_average:
            mean = self.mean[...]
            var = self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            n = math.prod(x.shape[:-1])
            if n < 2:
                raise ValueError(f"BatchNorm in train mode needs more than 1 value per channel, got input {x.shape}")
            mean = jnp.mean(xs, axis=axes)
            # Two-pass variance: E[(x - mean)^2] keeps float32 error near torch's, unlike E[x^2] - mean^2.
            var = jnp.mean(jnp.square(xs - mean), axis=axes)
            m = self.momentum
            # set_value, not `[...] =`: flax 0.12's `[...] =` asks each new value for its `.sharding`, which a
            # tracer answers by raising an error whose message walks the whole traced graph; per statistic, that
            # made tracing quadratic in depth (ResNet-50 train step: 3.3 s of an 11 s trace).
            self.mean.set_value(jax.lax.stop_gradient((1 - m) * self.mean[...] + m * mean).astype(stat_dtype))
            unbiased = var * bessel_correction(n)
            self.var.set_value(jax.lax.stop_gradient((1 - m) * self.var[...] + m * unbiased).astype(stat_dtype))
            self.num_batches_tracked.set_value(self.num_batches_tracked[...] + 1)
        # Centred form (x - mean) * mul + beta. The folded form x * mul + (beta - mean * mul) is one op shorter but
        # its gradient w.r.t. the variance is sum(dy * x) - mean * sum(dy), which cancels catastrophically in
        # float32 when |mean| >> std: measured 3e-2 relative gradient error on grapheme34 vs torch's 7e-6.
        mul = self.scale[...].astype(xs.dtype) * jax.lax.rsqrt(var.astype(xs.dtype) + self.eps)
        return ((xs - mean.astype(xs.dtype)) * mul + self.bias[...].astype(xs.dtype)).astype(out_dtype)
