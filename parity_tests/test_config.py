"""The one configuration both twins are built from."""

import dataclasses

import pytest

from r34 import PRESETS, ResNetConfig, get_preset, preset_name


def test_presets() -> None:
    r34, r18, g34, tiny = (get_preset(n) for n in ("resnet34", "resnet18", "grapheme34", "tiny"))
    assert r34.stage_sizes == (3, 4, 6, 3) and r34.widths == (64, 128, 256, 512) and r34.heads == (("fc", 1000),)
    assert r18.stage_sizes == (2, 2, 2, 2)
    assert g34.stage_sizes == r34.stage_sizes and g34.in_channels == 1
    assert dict(g34.heads) == {"grapheme_root": 168, "vowel_diacritic": 11, "consonant_diacritic": 7}
    assert not g34.single_head and r34.single_head
    assert sum(tiny.stage_sizes) < sum(r18.stage_sizes) and tiny.widths < r18.widths
    for name, config in PRESETS.items():
        assert preset_name(config) == name
        assert (config.bn_eps, config.bn_momentum) == (1e-5, 0.1)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_preset("resnet34").in_channels = 1


def test_channels_are_derived_from_widths() -> None:
    blocks = get_preset("resnet34").blocks()
    assert len(blocks) == 16
    first = {(b.stage, b.index): b for b in blocks}
    assert first["layer1", 0].in_channels == 64 and not first["layer1", 0].downsample
    assert first["layer2", 0].in_channels == 64 and first["layer2", 0].out_channels == 128
    assert first["layer2", 0].stride == 2 and first["layer2", 0].downsample
    assert first["layer2", 1].in_channels == 128 and first["layer2", 1].stride == 1
    assert not first["layer2", 1].downsample
    narrow = ResNetConfig(widths=(16, 32, 64, 128))
    assert narrow.num_features == 128 and narrow.blocks()[-1].out_channels == 128
    # The stride of a later stage needs a projection even where the width stays the same.
    same_width = ResNetConfig(stage_sizes=(1, 1), widths=(8, 8))
    assert same_width.blocks()[1].downsample and same_width.blocks()[1].in_channels == 8


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"block": "wide"}, "block='wide' is not one of ['basic', 'bottleneck']"),
        ({"groups": 32}, "BasicBlock only supports groups=1 and width_per_group=64, got groups=32"),
        ({"width_per_group": 128}, "BasicBlock only supports groups=1 and width_per_group=64"),
        ({"replace_stride_with_dilation": (False, True, True)}, "dilation > 1 is not supported in BasicBlock"),
        ({"block": "bottleneck", "replace_stride_with_dilation": (True,)}, "one entry per stage after the first (3)"),
        ({"block": "bottleneck", "width_per_group": 0}, "groups and width_per_group must be >= 1"),
        ({"block": "bottleneck", "widths": (8, 16, 32, 64), "width_per_group": 4}, "leaves a Bottleneck of planes 8"),
        ({"stage_sizes": (3, 4)}, "must be non-empty and of equal length"),
        ({"stage_sizes": (3, 0, 6, 3)}, "stage sizes and widths must be >= 1"),
        ({"in_channels": 0}, "in_channels must be >= 1"),
        ({"heads": ()}, "at least one head is required"),
        ({"heads": (("a", 2), ("a", 3))}, "head names must be unique"),
        ({"heads": (("layer1", 2),)}, "clash with module names"),
        ({"heads": (("fc", 0),)}, "every head needs >= 1 class"),
        ({"bn_momentum": 0.9 + 1}, "bn_momentum must be in [0, 1]"),
        ({"bn_eps": 0.0}, "bn_eps must be > 0"),
    ],
)
def test_invalid_config_is_a_clear_error(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match="invalid ResNetConfig") as e:
        ResNetConfig(**changes)
    assert message in str(e.value)


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown preset 'resnet51'; known presets: resnet34, resnet18"):
        get_preset("resnet51")


def test_config_dict_round_trip_and_errors() -> None:
    for config in PRESETS.values():
        assert ResNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown fields \['depth'\], missing fields \['bn_eps'\]"):
        data = get_preset("tiny").to_dict()
        data["depth"] = 34
        del data["bn_eps"]
        ResNetConfig.from_dict(data)
    # A config stored before the Bottleneck family's fields existed (round-1 files) still reads.
    old = {k: v for k, v in get_preset("resnet34").to_dict().items()
           if k not in ("groups", "width_per_group", "replace_stride_with_dilation")}
    assert ResNetConfig.from_dict(old) == get_preset("resnet34")


def test_bottleneck_blocks_follow_torchvisions_make_layer() -> None:
    """Inner widths int(planes * width_per_group / 64) * groups, the layer1 projection, and dilation: a dilated
    stage's first block keeps the previous dilation, the others take the new one, strides become 1."""
    blocks = {(b.stage, b.index): b for b in get_preset("resnext50_32x4d").blocks()}
    first = blocks["layer1", 0]
    assert (first.in_channels, first.width, first.out_channels, first.groups) == (64, 128, 256, 32)
    assert first.downsample and first.stride == 1  # channels 64 -> 256: the projection every Bottleneck model has
    assert blocks["layer4", 0].width == 1024 and blocks["layer4", 2].in_channels == 2048
    assert get_preset("wide_resnet50_2").blocks()[0].width == 128 and get_preset("resnet50").num_features == 2048
    os8 = get_preset("resnet50").replace(replace_stride_with_dilation=(False, True, True))
    layout = {s: [(b.stride, b.dilation) for b in os8.stage_blocks(s)] for s in os8.stage_names}
    assert layout["layer2"][0] == (2, 1)
    assert layout["layer3"] == [(1, 1)] + [(1, 2)] * 5 and layout["layer4"] == [(1, 2)] + [(1, 4)] * 2
    assert all(b.downsample for b in os8.blocks() if b.index == 0)  # channels change even without a stride
