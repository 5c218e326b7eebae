"""The conversion core: lossless round trips both ways, architecture inference, and strict errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torchvision

from parity_tests.helpers import FAMILY, TEST_PRESETS, precision, torch_model
from r34 import get_preset, preset_name
from r34_flax import (
    ConversionError,
    conversion_table,
    flax_model,
    flax_state,
    flax_to_torch,
    from_torch,
    infer_config,
    to_torch,
    torch_to_flax,
)
from r34_flax import resnet as flax_resnet
from r34_flax.conversion import COUNT
from r34_torch import resnet as torch_resnet

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def state_dicts() -> dict[str, dict[str, torch.Tensor]]:
    """Per preset, a state_dict with random weights AND random BN statistics and batch counters."""
    return {name: torch_model(get_preset(name), seed=i).state_dict() for i, name in enumerate(TEST_PRESETS)}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, f"{k}: {a[k].dtype} != {b[k].dtype}"
        assert a[k].shape == b[k].shape, k
        # Compare bits, not values: NaN-safe and sensitive to -0.0 vs 0.0.
        assert torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)), k


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_torch_to_flax_to_torch_is_bit_identical(preset: str, dtype: torch.dtype, state_dicts: dict) -> None:
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dicts[preset].items()}
    config, flat = torch_to_flax(sd)
    assert config == get_preset(preset)
    assert_bit_identical(sd, flax_to_torch(flat, config))
    # The same through a Flax model object, which is what users hold.
    with precision("float64" if dtype == torch.float64 else "float32"):
        model = from_torch(sd)
        assert_bit_identical(sd, to_torch(model))


def random_flax_model(preset: str, seed: int):
    """A Flax twin holding random values in every variable (BN statistics and counters too), built without
    running the initialisers (which take seconds per ResNet-34 when dispatched eagerly)."""
    config = get_preset(preset)
    rng = np.random.default_rng(seed)
    flat = {}
    for e in conversion_table(config):
        shape = e.flax_shape
        flat[e.flax_path] = (rng.integers(0, 1000, shape).astype(np.int32) if e.layout is COUNT
                             else rng.standard_normal(shape).astype(np.float32))
    return flax_model(config, flat)


@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_flax_to_torch_to_flax_is_bit_identical(preset: str) -> None:
    model = random_flax_model(preset, seed=3)
    before = flax_state(model)
    sd = to_torch(model)
    torch_resnet(get_preset(preset)).load_state_dict(sd, strict=True)
    after = flax_state(from_torch(sd))
    assert set(before) == set(after)
    for path in before:
        assert before[path].dtype == after[path].dtype, path
        np.testing.assert_array_equal(before[path], after[path], err_msg=str(path))


def test_flax_to_torch_from_an_initialised_model() -> None:
    """The same from a model made by the Flax twin's own initialisers (tiny: fast to initialise)."""
    model = flax_resnet(get_preset("tiny"), seed=4)
    back = flax_state(from_torch(to_torch(model)))
    for path, value in flax_state(model).items():
        np.testing.assert_array_equal(value, back[path], err_msg=str(path))


@pytest.mark.parametrize("preset", TEST_PRESETS)
def test_architecture_is_inferred_from_weights(preset: str, state_dicts: dict) -> None:
    assert preset_name(infer_config(state_dicts[preset])) == preset


def test_torchvision_checkpoints_are_recognised() -> None:
    assert infer_config(torchvision.models.resnet34().state_dict()) == get_preset("resnet34")
    assert infer_config(torchvision.models.resnet18(num_classes=7).state_dict()) == get_preset("resnet18").replace(
        heads=(("fc", 7),)
    )


def meta_state_dict(model_fn, *args, **kwargs) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # shapes only: what inference reads
        return model_fn(*args, **kwargs).state_dict()


@pytest.mark.parametrize("name", FAMILY)
def test_every_torchvision_builder_is_recognised_from_its_weights(name: str) -> None:
    config = infer_config(meta_state_dict(getattr(torchvision.models, name)))
    assert config == get_preset(name) and preset_name(config) == name


def test_any_resnet_of_torchvisions_class_is_recognised() -> None:
    """timm's resnext101_32x4d (torchvision's keys, no torchvision builder) and a 1-channel grapheme50."""
    from torchvision.models.resnet import Bottleneck, ResNet

    sd = meta_state_dict(ResNet, Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)
    assert infer_config(sd) == get_preset("resnext101_64x4d").replace(groups=32)
    with torch.device("meta"):
        grapheme50 = torch_resnet(get_preset("grapheme50")).state_dict()
    assert preset_name(infer_config(grapheme50)) == "grapheme50"


def test_a_preset_mismatch_names_the_differing_field() -> None:
    sd = torchvision.models.resnext50_32x4d().state_dict()
    with pytest.raises(ConversionError, match="weights do not match the architecture") as e:
        torch_to_flax(sd, get_preset("resnet50"))
    assert "weights have groups=32 but the requested architecture has 1" in str(e.value)
    assert "width_per_group=4 but the requested architecture has 64" in str(e.value)


def test_timm_d_variant_is_refused_naming_its_keys() -> None:
    """timm's resnet50d: a deep stem (conv1.0/.1/.3/.4/.6) and avg-down shortcuts (downsample.1 conv, .2 BN)."""
    sd = torchvision.models.resnet50().state_dict()
    stem = {k: v for k, v in sd.items() if k.startswith(("conv1.", "bn1."))}
    sd = {k: v for k, v in sd.items() if k not in stem}
    sd.update({"conv1.0.weight": torch.zeros(32, 3, 3, 3), "conv1.1.weight": torch.ones(32),
               "conv1.3.weight": torch.zeros(32, 32, 3, 3), "conv1.6.weight": torch.zeros(64, 32, 3, 3)})
    for key in [k for k in sd if ".downsample." in k]:
        sd[key.replace(".downsample.1.", ".downsample.2.").replace(".downsample.0.", ".downsample.1.")] = sd.pop(key)
    with pytest.raises(ConversionError, match="not a torchvision ResNet") as e:
        torch_to_flax(sd)
    assert "a deep stem (conv1.0.weight, conv1.1.weight" in str(e.value) and "resnet50d" in str(e.value)
    assert "an average-pool shortcut (layer1.0.downsample.2." in str(e.value)


def test_non_resnet_is_refused() -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(ConversionError, match=r"(?s)not a ResNet.*no 4-D 'conv1.weight' \(found keys: 0.weight, 0.bias"):
        torch_to_flax(mlp.state_dict())


def test_every_problem_is_listed_in_one_error(state_dicts: dict) -> None:
    sd = dict(state_dicts["tiny"])
    del sd["layer2.0.downsample.1.running_var"]
    sd["layer1.0.extra.weight"] = torch.zeros(3)
    sd["layer3.1.conv2.weight"] = torch.zeros(32, 32, 1, 1)
    sd["layer1.0.bn1.bias"] = torch.tensor([float("nan"), 0, float("inf"), 0, 0, 0, 0, 0])
    sd["bn1.num_batches_tracked"] = torch.tensor(1.5)
    with pytest.raises(ConversionError) as e:
        torch_to_flax(sd)
    assert e.value.problems == [
        "missing key 'layer2.0.downsample.1.running_var' (shape (16,))",
        "unexpected key 'layer1.0.extra.weight' (shape (3,))",
        "bn1.num_batches_tracked: dtype float32, expected an integer batch counter",
        "layer1.0.bn1.bias: holds 2 NaN/Inf value(s)",
        "layer3.1.conv2.weight: shape (32, 32, 1, 1), expected (32, 32, 3, 3)",
    ]
    assert str(e.value).startswith("cannot convert weights: 5 problem(s):")


def test_requested_architecture_must_match_the_weights(state_dicts: dict) -> None:
    with pytest.raises(ConversionError, match="weights do not match the architecture") as e:
        torch_to_flax(state_dicts["grapheme34"], get_preset("resnet34"))
    assert e.value.problems == [
        "weights have in_channels=1 but the requested architecture has 3",
        "weights have heads=(('grapheme_root', 168), ('vowel_diacritic', 11), ('consonant_diacritic', 7)) "
        "but the requested architecture has (('fc', 1000),)",
    ]


def test_flax_side_problems_are_listed(state_dicts: dict) -> None:
    config, flat = torch_to_flax(state_dicts["tiny"])
    del flat[("fc", "bias")]
    flat[("fc", "extra")] = np.zeros(2, np.float32)
    flat[("conv1", "kernel")] = flat[("conv1", "kernel")].transpose(3, 2, 0, 1)  # torch layout by mistake
    with pytest.raises(ConversionError) as e:
        flax_to_torch(flat, config)
    assert e.value.problems == [
        "missing Flax variable 'fc/bias'",
        "unexpected Flax variable 'fc/extra' (shape (2,))",
        "conv1/kernel: shape (8, 3, 7, 7), expected (7, 7, 3, 8)",
    ]


def test_batch_counter_out_of_int32_range_is_refused(state_dicts: dict) -> None:
    sd = dict(state_dicts["tiny"])
    sd["bn1.num_batches_tracked"] = torch.tensor(2**31, dtype=torch.int64)
    with pytest.raises(ConversionError, match=re.escape("bn1.num_batches_tracked: counter value 2147483648")):
        torch_to_flax(sd)


def test_float64_weights_without_x64_are_refused_not_rounded(state_dicts: dict) -> None:
    sd = {k: v.double() if v.is_floating_point() else v for k, v in state_dicts["tiny"].items()}
    with precision("float32"), pytest.raises(ConversionError, match="jax_enable_x64 is off"):
        from_torch(sd)


def test_head_order_is_not_taken_from_key_order(state_dicts: dict) -> None:
    """safetensors does not keep key order: the heads of a preset get the preset's order back, and a
    requested config's head order wins over the file's."""
    sd = state_dicts["grapheme34"]
    shuffled = dict(sorted(sd.items(), key=lambda kv: kv[0][::-1]))
    assert [k for k in shuffled if k.endswith(".bias") and "." not in k[:-5]] != [
        "grapheme_root.bias", "vowel_diacritic.bias", "consonant_diacritic.bias"]
    assert infer_config(shuffled) == get_preset("grapheme34")
    custom = get_preset("grapheme34").replace(heads=(("vowel_diacritic", 11), ("consonant_diacritic", 7),
                                                     ("grapheme_root", 168)))
    config, _ = torch_to_flax(sd, custom)
    assert config == custom
