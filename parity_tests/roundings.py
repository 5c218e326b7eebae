"""Other correct float32 roundings of the same computation, to prove the suite's float32 checks hold on any CPU.

XLA:CPU and oneDNN pick kernels per CPU (an Intel Xeon with AVX-512 + AMX and an AMD EPYC Zen 4 sum convolutions in
different orders), so a float32 check passes for the right reason only if it holds for every legitimate rounding,
not just this machine's. Each `Rounding` changes the summation order or the last bit of the inputs on one or both
sides, without changing the function computed:

- `xla_conv`: the Flax twin uses XLA's own convolution for every conv (no patches / tapwise CPU lowering).
- `torch_channels_last`: the torch twin and its inputs in channels_last memory format (other oneDNN kernels).
- `ulp`: every initial weight and every input value moved by one float32 ulp, up or down at random, on both sides:
  a different but equally valid rounding of the same real-valued problem.

Also measured, not kept in the suite (suite time): torch on one thread instead of two (figures equal to the
default's to 2 digits) and a second ulp seed (figures within the first's range). Other roundings the suite already
has: 8 devices instead of 1 (BatchNorm's global means reduced in another order: `sharded_step`, which also runs
under `xla_conv` and `ulp`), and the trainer's XLA:CPU flag (`r34_flax.xla_cpu`, another convolution kernel; only
settable before JAX starts), which the 8-device subprocess of test_trainer applies, so its sharded-step and trainer
loss-curve checks run under it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import r34_flax.conv_lowering as conv_lowering

_LOWERING_THRESHOLDS = ("TINY_MAP_PIXELS", "SMALL_MAP_PIXELS", "TAPWISE_MAP_PIXELS", "TAPWISE_POINTWISE")


@dataclasses.dataclass(frozen=True)
class Rounding:
    name: str
    xla_conv: bool = False
    channels_last: bool = False
    ulp_seed: int | None = None

    @property
    def changes_flax(self) -> bool:
        return self.xla_conv or self.ulp_seed is not None

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Process-wide settings of this rounding (the Flax conv lowering), restored on exit."""
        saved = {name: getattr(conv_lowering, name) for name in _LOWERING_THRESHOLDS}
        try:
            if self.xla_conv:
                for name in _LOWERING_THRESHOLDS:
                    setattr(conv_lowering, name, 0)
            yield
        finally:
            for name, value in saved.items():
                setattr(conv_lowering, name, value)

    def nudge(self, values: np.ndarray, stream: int) -> np.ndarray:
        """`values` moved by one ulp of their own dtype, each up or down at random (seeded by this rounding and
        `stream`); unchanged when this rounding moves nothing."""
        if self.ulp_seed is None:
            return values
        rng = np.random.default_rng((self.ulp_seed, stream))
        direction = rng.choice(np.array([-np.inf, np.inf], values.dtype), size=values.shape)
        return np.nextafter(values, direction)

    def torch_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """`model` with its floating parameters and buffers nudged and its memory format set, in place."""
        if self.ulp_seed is not None:
            with torch.no_grad():
                for stream, tensor in enumerate(model.state_dict().values()):
                    if tensor.is_floating_point():
                        tensor.copy_(torch.from_numpy(self.nudge(tensor.numpy(), stream)))
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def flax_model(self, model: nnx.Module) -> nnx.Module:
        """`model` with its parameters nudged, in place (for Flax-only checks; twins get theirs from torch)."""
        if self.ulp_seed is not None:
            leaves, treedef = jax.tree.flatten(nnx.state(model, nnx.Param))
            nudged = [jnp.asarray(self.nudge(np.asarray(leaf), stream)) for stream, leaf in enumerate(leaves)]
            nnx.update(model, jax.tree.unflatten(treedef, nudged))
        return model

    def torch_images(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


DEFAULT = Rounding("default")
ROUNDINGS: dict[str, Rounding] = {r.name: r for r in (
    DEFAULT,
    Rounding("xla_conv", xla_conv=True),
    Rounding("torch_channels_last", channels_last=True),
    Rounding("ulp", ulp_seed=1),
)}
