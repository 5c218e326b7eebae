"""ResNet in Flax NNX with torchvision's module tree and names, NHWC, torch-exact padding and BatchNorm."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from r34.config import BlockSpec, ResNetConfig
from r34_flax.layers import BatchNorm, conv, linear, max_pool_3x3_s2


class Sequential(nnx.List):
    """nnx.List that applies its layers in order; its children are named 0, 1, ... like torch's nn.Sequential
    (nnx.Sequential would put them under an extra `layers` level)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self:
            x = layer(x)
        return x


def downsample(spec: BlockSpec, config: ResNetConfig, *, dtype: DTypeLike | None, param_dtype: DTypeLike,
               rngs: nnx.Rngs) -> Sequential | None:
    """The projection shortcut (1x1 conv with the block's stride + BatchNorm) where the identity cannot be added."""
    if not spec.downsample:
        return None
    dt = dict(dtype=dtype, param_dtype=param_dtype)
    return Sequential(
        [
            conv(spec.in_channels, spec.out_channels, 1, spec.stride, rngs=rngs, **dt),
            BatchNorm(spec.out_channels, eps=config.bn_eps, momentum=config.bn_momentum, **dt),
        ]
    )


class BasicBlock(nnx.Module):
    def __init__(
        self,
        spec: BlockSpec,
        config: ResNetConfig,
        *,
        dtype: DTypeLike | None,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ) -> None:
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        bn = dict(eps=config.bn_eps, momentum=config.bn_momentum, **dt)
        self.conv1 = conv(spec.in_channels, spec.width, 3, spec.stride, rngs=rngs, **dt)
        self.bn1 = BatchNorm(spec.width, **bn)
        self.conv2 = conv(spec.width, spec.out_channels, 3, 1, rngs=rngs, **dt)
        self.bn2 = BatchNorm(spec.out_channels, zero_scale=config.zero_init_residual, **bn)
        # Assigned once: NNX fixes an attribute as data or static on first assignment.
        self.downsample = downsample(spec, config, rngs=rngs, **dt)

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = nnx.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out = out + identity
        out = nnx.relu(out)

        return out


class Bottleneck(nnx.Module):
    """torchvision's Bottleneck (ResNet V1.5): the stride, groups and dilation are on conv2, the 3x3."""

    def __init__(
        self,
        spec: BlockSpec,
        config: ResNetConfig,
        *,
        dtype: DTypeLike | None,
        param_dtype: DTypeLike,
        rngs: nnx.Rngs,
    ) -> None:
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        bn = dict(eps=config.bn_eps, momentum=config.bn_momentum, **dt)
        self.conv1 = conv(spec.in_channels, spec.width, 1, 1, rngs=rngs, **dt)
        self.bn1 = BatchNorm(spec.width, **bn)
        self.conv2 = conv(spec.width, spec.width, 3, spec.stride, groups=spec.groups, dilation=spec.dilation,
                          rngs=rngs, **dt)
        self.bn2 = BatchNorm(spec.width, **bn)
        self.conv3 = conv(spec.width, spec.out_channels, 1, 1, rngs=rngs, **dt)
        self.bn3 = BatchNorm(spec.out_channels, zero_scale=config.zero_init_residual, **bn)
        self.downsample = downsample(spec, config, rngs=rngs, **dt)

    def __call__(self, x: jax.Array) -> jax.Array:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = nnx.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = nnx.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out = out + identity
        out = nnx.relu(out)

        return out


BLOCKS: dict[str, type[nnx.Module]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nnx.Module):
    """torchvision-compatible ResNet built from a `ResNetConfig`, NHWC input.

    With one head, calling it returns that head's logits; with several, a dict head name -> logits.
    `model.train()` / `model.eval()` switch BatchNorm between batch and running statistics.

    Args:
      config: the architecture.
      dtype: compute dtype (e.g. jnp.bfloat16); None computes in the parameters' dtype.
      param_dtype: dtype of parameters; BatchNorm statistics are kept in at least float32.
      rngs: random streams for initialisation.
    """

    def __init__(
        self,
        config: ResNetConfig,
        *,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike = jnp.float32,
        rngs: nnx.Rngs,
    ) -> None:
        self.config = config
        self.dtype = dtype
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        block = BLOCKS[config.block]

        self.conv1 = conv(config.in_channels, config.stem_width, 7, 2, rngs=rngs, **dt)
        self.bn1 = BatchNorm(config.stem_width, eps=config.bn_eps, momentum=config.bn_momentum, **dt)
        for stage in config.stage_names:
            blocks = [block(spec, config, rngs=rngs, **dt) for spec in config.stage_blocks(stage)]
            setattr(self, stage, Sequential(blocks))
        for name, num_classes in config.heads:
            setattr(self, name, linear(config.num_features, num_classes, rngs=rngs, **dt))

    def forward_intermediates(self, x: jax.Array) -> dict[str, jax.Array]:
        """Outputs in execution order: "stem", each stage, "pool" (pooled features), then each head."""
        out: dict[str, jax.Array] = {}
        if self.dtype is not None:
            x = x.astype(self.dtype)
        x = self.conv1(x)
        x = self.bn1(x)
        x = nnx.relu(x)
        x = max_pool_3x3_s2(x)
        out["stem"] = x
        for name in self.config.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        x = jnp.mean(x, axis=(1, 2))
        out["pool"] = x
        for name in self.config.head_names:
            out[name] = getattr(self, name)(x)
        return out

    def __call__(self, x: jax.Array) -> jax.Array | dict[str, jax.Array]:
        out = self.forward_intermediates(x)
        if self.config.single_head:
            return out[self.config.head_names[0]]
        return {name: out[name] for name in self.config.head_names}


def resnet(
    config: ResNetConfig,
    *,
    seed: int = 0,
    dtype: DTypeLike | None = None,
    param_dtype: DTypeLike = jnp.float32,
) -> ResNet:
    """Build the Flax twin for `config` (e.g. `resnet(get_preset("resnet34"))`), initialised from `seed`."""
    return ResNet(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
