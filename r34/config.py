"""One frozen configuration that both twins (`r34_torch`, `r34_flax`) and the converter are built from."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Literal, NamedTuple

BlockType = Literal["basic", "bottleneck"]

# Output channels of a block = planes * expansion: torchvision's BasicBlock (ResNet-18/34) and Bottleneck
# (ResNet-50 and up, ResNeXt, Wide ResNet). Each has a block class in each twin and an entry in the conversion table.
BLOCK_EXPANSION: Mapping[str, int] = {"basic": 1, "bottleneck": 4}


class BlockSpec(NamedTuple):
    """One residual block as both twins build it; `stage` and `index` give its name, e.g. layer2.0."""

    stage: str
    index: int
    in_channels: int
    width: int  # channels inside the block: conv1's output (and conv2's, for Bottleneck)
    out_channels: int
    stride: int
    downsample: bool
    groups: int = 1  # of the 3x3 convolution that carries the stride (Bottleneck's conv2)
    dilation: int = 1  # of that 3x3 convolution, whose padding equals it


# Fields added with the Bottleneck family: optional in stored configs (see ResNetConfig.from_dict).
FAMILY_FIELDS = ("groups", "width_per_group", "replace_stride_with_dilation")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Architecture of a torchvision-style ResNet.

    Attributes:
      block: residual block type: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50 and up, ResNeXt, Wide
        ResNet; ResNet V1.5, the stride on the 3x3 convolution, as torchvision).
      stage_sizes: number of blocks per stage (layer1, layer2, ...).
      widths: torchvision's `planes` per stage; blocks output `planes * expansion` channels and the stem has
        `widths[0]` channels, as in torchvision.
      groups: groups of the 3x3 convolutions in Bottleneck blocks (ResNeXt: 32 or 64).
      width_per_group: torchvision's `width_per_group`: a Bottleneck's inner width is
        `int(planes * width_per_group / 64) * groups` (64 for ResNet, 4 or 8 for ResNeXt, 128 for Wide ResNet).
      replace_stride_with_dilation: per stage after the first, replace its stride 2 with dilation, as
        torchvision's argument of that name (e.g. (False, True, True) for output stride 8); () means none.
      in_channels: input image channels.
      heads: (name, num_classes) pairs, in order. A single head named "fc" gives torchvision's model
        (forward returns an array); several heads make forward return a dict name -> logits.
      bn_eps: BatchNorm epsilon.
      bn_momentum: BatchNorm momentum in PyTorch's convention: new = (1 - m) * old + m * batch.
      zero_init_residual: initialise the last BatchNorm gamma of each block to zero (torchvision's flag).
    """

    block: BlockType = "basic"
    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    in_channels: int = 3
    heads: tuple[tuple[str, int], ...] = (("fc", 1000),)
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    zero_init_residual: bool = False
    groups: int = 1
    width_per_group: int = 64
    replace_stride_with_dilation: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.block not in BLOCK_EXPANSION:
            problems.append(f"block={self.block!r} is not one of {sorted(BLOCK_EXPANSION)}")
        # torchvision's BasicBlock refuses these (ValueError for groups and width, NotImplementedError for dilation)
        if self.block == "basic" and (self.groups != 1 or self.width_per_group != 64):
            problems.append(f"BasicBlock only supports groups=1 and width_per_group=64, got groups={self.groups}, "
                            f"width_per_group={self.width_per_group}")
        if self.block == "basic" and any(self.replace_stride_with_dilation):
            problems.append("dilation > 1 is not supported in BasicBlock (replace_stride_with_dilation="
                            f"{self.replace_stride_with_dilation})")
        if self.groups < 1 or self.width_per_group < 1:
            problems.append(f"groups and width_per_group must be >= 1, got {self.groups} and {self.width_per_group}")
        elif any(int(w * (self.width_per_group / 64.0)) < 1 for w in self.widths):
            problems.append(f"width_per_group={self.width_per_group} leaves a Bottleneck of planes {min(self.widths)} "
                            "no channels (int(planes * width_per_group / 64) must be >= 1)")
        if len(self.replace_stride_with_dilation) not in (0, len(self.stage_sizes) - 1):
            problems.append(f"replace_stride_with_dilation needs one entry per stage after the first "
                            f"({len(self.stage_sizes) - 1}), got {self.replace_stride_with_dilation}")
        if len(self.stage_sizes) == 0 or len(self.stage_sizes) != len(self.widths):
            problems.append(
                f"stage_sizes {self.stage_sizes} and widths {self.widths} must be non-empty and of equal length"
            )
        if any(n < 1 for n in self.stage_sizes) or any(w < 1 for w in self.widths):
            problems.append(f"stage sizes and widths must be >= 1, got {self.stage_sizes} and {self.widths}")
        if self.in_channels < 1:
            problems.append(f"in_channels must be >= 1, got {self.in_channels}")
        names = [name for name, _ in self.heads]
        if not names:
            problems.append("at least one head is required")
        if len(set(names)) != len(names):
            problems.append(f"head names must be unique, got {names}")
        reserved = {"conv1", "bn1", "relu", "maxpool", "avgpool"} | set(self.stage_names)
        clashing = sorted(set(names) & reserved)
        if clashing:
            problems.append(f"head names {clashing} clash with module names of the body")
        if any(not name.isidentifier() for name in names):
            problems.append(f"head names must be Python identifiers, got {names}")
        if any(n < 1 for _, n in self.heads):
            problems.append(f"every head needs >= 1 class, got {dict(self.heads)}")
        if not 0.0 <= self.bn_momentum <= 1.0:
            problems.append(f"bn_momentum must be in [0, 1] (torch convention), got {self.bn_momentum}")
        if self.bn_eps <= 0:
            problems.append(f"bn_eps must be > 0, got {self.bn_eps}")
        if problems:
            raise ValueError("invalid ResNetConfig: " + "; ".join(problems))

    @property
    def expansion(self) -> int:
        return BLOCK_EXPANSION[self.block]

    @property
    def stem_width(self) -> int:
        return self.widths[0]

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(f"layer{i + 1}" for i in range(len(self.stage_sizes)))

    @property
    def num_features(self) -> int:
        """Channels of the pooled feature vector that every head reads."""
        return self.widths[-1] * self.expansion

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.heads)

    @property
    def single_head(self) -> bool:
        return len(self.heads) == 1

    def stage_stride(self, stage: int) -> int:
        """Stride of the first block of `stage` (0-based) before dilation: the first stage follows the max pool at
        stride 1, the others halve the map."""
        return 1 if stage == 0 else 2

    def dilates(self, stage: int) -> bool:
        """Whether `stage` (0-based) trades its stride for dilation (replace_stride_with_dilation)."""
        return stage > 0 and bool(self.replace_stride_with_dilation) and self.replace_stride_with_dilation[stage - 1]

    def blocks(self) -> list[BlockSpec]:
        """Every block in execution order, by torchvision's `_make_layer`; channel counts, strides and dilations
        are derived here and nowhere else."""
        out = []
        in_ch = self.stem_width
        dilation = 1
        for s, (name, size, planes) in enumerate(zip(self.stage_names, self.stage_sizes, self.widths)):
            out_ch = planes * self.expansion
            width = int(planes * (self.width_per_group / 64.0)) * self.groups
            stride, previous_dilation = self.stage_stride(s), dilation
            if self.dilates(s):
                dilation, stride = dilation * stride, 1
            for i in range(size):
                # The first block of a stage keeps the previous dilation, the others take the stage's.
                block_stride, block_dilation = (stride, previous_dilation) if i == 0 else (1, dilation)
                # A projection shortcut wherever the identity cannot be added: new resolution or channel count.
                downsample = block_stride != 1 or in_ch != out_ch
                out.append(BlockSpec(name, i, in_ch, width, out_ch, block_stride, downsample, self.groups,
                                     block_dilation))
                in_ch = out_ch
        return out

    def stage_blocks(self, stage: str) -> list[BlockSpec]:
        return [b for b in self.blocks() if b.stage == stage]

    def replace(self, **changes) -> "ResNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready form (tuples become lists); `from_dict` inverts it."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping) -> "ResNetConfig":
        """Inverse of `to_dict`; unknown or missing fields are a clear error, except the fields added with the
        Bottleneck family, which files written before them lack (their defaults are what those files meant)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - fields), sorted(fields - set(data) - set(FAMILY_FIELDS))
        if unknown or missing:
            raise ValueError(f"invalid ResNetConfig data: unknown fields {unknown}, missing fields {missing}")
        values = dict(data)
        values["stage_sizes"] = tuple(values["stage_sizes"])
        values["widths"] = tuple(values["widths"])
        values["heads"] = tuple((str(name), int(n)) for name, n in values["heads"])
        values["replace_stride_with_dilation"] = tuple(bool(d) for d in values.get("replace_stride_with_dilation", ()))
        return cls(**values)


PRESETS: dict[str, ResNetConfig] = {
    "resnet34": ResNetConfig(),
    "resnet18": ResNetConfig(stage_sizes=(2, 2, 2, 2)),
    # Bengali.AI handwritten grapheme classifier: ResNet-34 body on 1-channel images, three heads.
    "grapheme34": ResNetConfig(
        in_channels=1,
        heads=(("grapheme_root", 168), ("vowel_diacritic", 11), ("consonant_diacritic", 7)),
    ),
    # Smallest model that still has every code path: a block without downsample (layer1.0), blocks with a
    # strided downsample (layer2-4), and a non-first block in a strided stage (layer3.1).
    "tiny": ResNetConfig(stage_sizes=(1, 1, 2, 1), widths=(8, 16, 32, 64), heads=(("fc", 10),)),
}
# torchvision's Bottleneck builders (resnet.py): block, layers, groups, width_per_group; nothing else differs.
for _name, _layers, _groups, _width in (
    ("resnet50", (3, 4, 6, 3), 1, 64),
    ("resnet101", (3, 4, 23, 3), 1, 64),
    ("resnet152", (3, 8, 36, 3), 1, 64),
    ("resnext50_32x4d", (3, 4, 6, 3), 32, 4),
    ("resnext101_32x8d", (3, 4, 23, 3), 32, 8),
    ("resnext101_64x4d", (3, 4, 23, 3), 64, 4),
    ("wide_resnet50_2", (3, 4, 6, 3), 1, 128),
    ("wide_resnet101_2", (3, 4, 23, 3), 1, 128),
):
    PRESETS[_name] = ResNetConfig(block="bottleneck", stage_sizes=_layers, groups=_groups, width_per_group=_width)
# The Bengali grapheme classifier on a ResNet-50 body.
PRESETS["grapheme50"] = PRESETS["resnet50"].replace(in_channels=1, heads=PRESETS["grapheme34"].heads)
# The tiny body with grapheme34's input and heads: fast tests of the three-head paths (trainer, metric, converter).
PRESETS["tiny_grapheme"] = PRESETS["tiny"].replace(in_channels=1, heads=PRESETS["grapheme34"].heads)
# Smallest Bottleneck model with every Bottleneck path: grouped 3x3 convolutions (2 groups of inner width
# int(planes * 16 / 64) * 2), the layer1.0 projection Bottleneck models have, strided and plain blocks.
PRESETS["tiny_bottleneck"] = PRESETS["tiny"].replace(block="bottleneck", groups=2, width_per_group=16)


def get_preset(name: str) -> ResNetConfig:
    """The preset called `name`; a clear error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


BODY_FIELDS = ("block", "stage_sizes", "widths", "groups", "width_per_group")


def body_name(config: ResNetConfig) -> str | None:
    """The first preset with the same body (block, stages, widths, groups, width per group), whatever its input
    channels, heads or dilation: e.g. "resnet50" for a fine-tuned 10-class ResNet-50."""
    for name, preset in PRESETS.items():
        if all(getattr(preset, f) == getattr(config, f) for f in BODY_FIELDS):
            return name
    return None


def preset_name(config: ResNetConfig) -> str | None:
    """Name of the preset equal to `config`, or None."""
    for name, preset in PRESETS.items():
        if preset == config:
            return name
    return None
