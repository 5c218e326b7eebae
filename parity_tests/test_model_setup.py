"""`--init-from`: the body comes from the file, mismatched heads are re-initialised, a 3-channel stem is adapted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from r34 import get_preset
from r34_flax import flax_state, resnet, torch_to_flax
from train.data.pipeline import DatasetSpec
from train.model_setup import ConfigError, read_init_weights, resolve_config

DIGITS = DatasetSpec("digits", (("fc", 10),), {"fc": "label"}, 1, 32, "train", "test", False, (0.5,), (0.5,),
                     100, 10)


@pytest.mark.parametrize("preset, loaded", [
    ("resnet18", [("layer3", 1, "conv2", "kernel"), ("layer2", 0, "downsample", 1, "var")]),
    # Bottleneck: conv3/bn3, grouped 3x3s, and the layer1 projection that only Bottleneck models have.
    ("resnet50", [("layer3", 5, "conv3", "kernel"), ("layer4", 2, "bn3", "scale"),
                  ("layer1", 0, "downsample", 1, "var")]),
    ("resnext50_32x4d", [("layer2", 3, "conv2", "kernel"), ("layer1", 0, "downsample", 0, "kernel")]),
])
def test_torchvision_weights_into_a_one_channel_ten_class_model(preset: str, loaded: list, tmp_path: Path) -> None:
    tv = getattr(torchvision.models, preset)()
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    config = resolve_config(preset, get_preset(preset), DIGITS)
    assert config.in_channels == 1 and config.heads == (("fc", 10),)
    init = flax_state(resnet(config, seed=1))
    flat, notes = read_init_weights(tmp_path / "tv.pth", config, init)
    _, source = torch_to_flax(tv.state_dict())
    assert set(flat) == set(init)
    np.testing.assert_array_equal(flat[("conv1", "kernel")], source[("conv1", "kernel")].sum(axis=2, keepdims=True))
    for key in loaded:
        np.testing.assert_array_equal(flat[key], source[key])
    np.testing.assert_array_equal(flat[("fc", "kernel")], init[("fc", "kernel")])  # re-initialised, not loaded
    assert "adapted the 3-channel stem to 1 channel by summing conv1 over its input channels" in notes
    assert "head fc: re-initialised (10 classes; the file has 1000 classes)" in notes


def test_multi_head_preset_must_match_the_data_set() -> None:
    with pytest.raises(ConfigError, match="preset 'grapheme34' has heads .* but data set 'digits' has labels"):
        resolve_config("grapheme34", get_preset("grapheme34"), DIGITS)
