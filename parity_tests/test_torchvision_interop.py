"""torchvision's own ResNet and the PyTorch twin load each other's state_dict strictly and compute the same."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from parity_tests.helpers import max_abs, nchw_to_nhwc, precision, randomize_batchnorm, torch_model
from parity_tests.tolerances import F64_ABS
from r34 import get_preset
from r34_flax import from_torch
from r34_torch import resnet as torch_resnet


# Bottleneck bodies at 64 px: the module tree and arithmetic are what is compared, not the image size.
@pytest.mark.parametrize("preset, size", [("resnet34", 224), ("resnet18", 224), ("resnet50", 64),
                                          ("resnext50_32x4d", 64), ("wide_resnet50_2", 64)])
def test_strict_loads_both_ways_and_identical_outputs(preset: str, size: int) -> None:
    config = get_preset(preset)
    ours = torch_model(config, seed=11)
    theirs = getattr(torchvision.models, preset)().eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        # Same operations in the same order on the same weights: bit-identical, not merely close.
        assert torch.equal(ours(x), theirs(x))

    torch.manual_seed(12)
    theirs = randomize_batchnorm(getattr(torchvision.models, preset)(), seed=13)
    back = torch_resnet(config).eval()
    back.load_state_dict(theirs.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(back(x), theirs(x))


def test_torchvision_weights_run_in_flax() -> None:
    """A torchvision model's own state_dict (not ours) converts to a Flax twin with the same logits (float64)."""
    torch.manual_seed(14)
    tv = randomize_batchnorm(torchvision.models.resnet18(), seed=14).double()
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64))
    with torch.no_grad():
        ref = tv(torch.from_numpy(x)).numpy()
    with precision("float64"):
        model = from_torch(tv.state_dict())
        model.eval()
        got = np.asarray(model(jnp.asarray(nchw_to_nhwc(x))))
    assert max_abs(ref, got) <= F64_ABS


def test_dilated_resnet50_matches_torchvisions() -> None:
    """replace_stride_with_dilation=[False, True, True] (output stride 8): torchvision's previous-dilation rule."""
    config = get_preset("resnet50").replace(replace_stride_with_dilation=(False, True, True))
    ours = torch_model(config, seed=15)
    theirs = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((1, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        assert ours.forward_intermediates(x)["layer4"].shape[-1] == 8  # 64 / 8
