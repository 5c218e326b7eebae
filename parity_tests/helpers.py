"""Shared test helpers: models with non-trivial BatchNorm state, layout changes, error measures."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import numpy as np
import torch
from torch import nn

from parity_tests.tolerances import F32_FEATURE_MAP_REL, F32_REL, F64_ABS
from r34.config import PRESETS, ResNetConfig
from r34_torch import resnet as torch_resnet


# torchvision's ten builders (r34.config presets of the same names).
FAMILY = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
          "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
# Presets that tests parametrised over "every preset" build with real weights: every code path (both blocks,
# groups, one and three heads) without the 25M-127M-parameter Bottleneck bodies, which get their own checks.
TEST_PRESETS = tuple(n for n, c in PRESETS.items() if c.block == "basic" or n == "tiny_bottleneck")


def randomize_batchnorm(model: nn.Module, seed: int, calibration_size: int = 128) -> nn.Module:
    """Give every BatchNorm non-trivial gamma, beta, running mean and running var (never the init values).

    Running statistics are first set to real batch statistics of a random batch (a train-mode forward with
    momentum 1), then perturbed, so eval-mode activations stay in a realistic range through all blocks
    while every statistic differs from its batch value and from init. The calibration batch must be large
    enough that layer4's statistics are not those of a handful of values (at 32 px layer4 is 1x1 and the
    running variances come out tiny, so eval activations at 224 blow up to ~1e6).
    """
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.empty_like(bn.weight).uniform_(0.5, 1.5, generator=g))
            bn.bias.copy_(torch.randn(bn.bias.shape, generator=g, dtype=bn.bias.dtype) * 0.2)
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.momentum = 1.0
        model.train()
        channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
        x = torch.randn(4, channels, calibration_size, calibration_size, generator=g, dtype=bns[0].weight.dtype)
        model(x)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
            std = bn.running_var.sqrt()
            bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=g, dtype=std.dtype) * 0.2 * std)
            bn.running_var.mul_(torch.empty_like(bn.running_var).uniform_(0.7, 1.4, generator=g))
            bn.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (), generator=g)))
    return model.eval()


def torch_model(config: ResNetConfig, seed: int) -> nn.Module:
    """PyTorch twin with seeded weights and randomised BatchNorm state, in eval mode."""
    torch.manual_seed(seed)
    return randomize_batchnorm(torch_resnet(config), seed)


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def as_torch_layout(a: np.ndarray) -> np.ndarray:
    """A Flax activation in torch's layout (4-D NHWC -> NCHW; vectors unchanged)."""
    return nhwc_to_nchw(a) if a.ndim == 4 else a


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def max_rel(ref: np.ndarray, other: np.ndarray) -> float:
    """max|ref - other| / max|ref|: error relative to the reference's scale, robust to near-zero entries."""
    return max_abs(ref, other) / float(np.max(np.abs(np.asarray(ref, np.float64))))


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[None]:
    """float64 parity needs jax_enable_x64; scoped so other tests keep JAX's default 32-bit types."""
    with jax.enable_x64(dtype == "float64"):
        yield


def stage_errors(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> list[tuple[str, float, float]]:
    """(name, max abs error, max rel error) for every output in `ref`'s execution order."""
    return [(name, max_abs(ref[name], got[name]), max_rel(ref[name], got[name])) for name in ref]


def assert_stages_match(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], dtype: str) -> None:
    """Assert each output within the dtype's tolerance; a failure names the FIRST diverging output."""
    assert list(got) == list(ref), f"outputs differ: {list(got)} vs {list(ref)}"
    rows = stage_errors(ref, got)
    table = "\n".join(f"  {n:<22} max|d|={a:.3e}  rel={r:.3e}" for n, a, r in rows)
    for name, abs_err, rel_err in rows:
        if dtype == "float64":
            ok, bound = abs_err <= F64_ABS, f"max|d| <= F64_ABS={F64_ABS}"
        elif ref[name].ndim == 4:
            ok, bound = rel_err <= F32_FEATURE_MAP_REL, f"rel <= F32_FEATURE_MAP_REL={F32_FEATURE_MAP_REL}"
        else:
            ok, bound = rel_err <= F32_REL, f"rel <= F32_REL={F32_REL}"
        assert ok, f"first divergence at {name!r} ({bound} violated):\n{table}"
