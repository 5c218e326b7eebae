"""One frozen configuration that both twins (`r34_torch`, `r34_flax`) and the converter are built from."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Literal, NamedTuple

BlockType = Literal["basic"]

# Output channels of a block = width * expansion. Bottleneck (ResNet-50+) would add "bottleneck": 4 here,
# plus a block class in each twin and a block entry in the conversion table.
BLOCK_EXPANSION: Mapping[str, int] = {"basic": 1}


class BlockSpec(NamedTuple):
    """One residual block as both twins build it; `stage` and `index` give its name, e.g. layer2.0."""

    stage: str
    index: int
    in_channels: int
    width: int
    out_channels: int
    stride: int
    downsample: bool


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Architecture of a torchvision-style ResNet.

    Attributes:
      block: residual block type; only "basic" (ResNet-18/34) is implemented.
      stage_sizes: number of blocks per stage (layer1, layer2, ...).
      widths: block width per stage; the stem has `widths[0]` channels, as in torchvision.
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

    def __post_init__(self) -> None:
        problems = []
        if self.block not in BLOCK_EXPANSION:
            problems.append(f"block={self.block!r} is not one of {sorted(BLOCK_EXPANSION)}")
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
        """Stride of the first block of `stage` (0-based): the first stage follows the max pool at stride 1."""
        return 1 if stage == 0 else 2

    def blocks(self) -> list[BlockSpec]:
        """Every block in execution order; channel counts are derived here and nowhere else."""
        out = []
        in_ch = self.stem_width
        for s, (name, size, width) in enumerate(zip(self.stage_names, self.stage_sizes, self.widths)):
            out_ch = width * self.expansion
            for i in range(size):
                stride = self.stage_stride(s) if i == 0 else 1
                # A projection shortcut wherever the identity cannot be added: new resolution or channel count.
                out.append(BlockSpec(name, i, in_ch, width, out_ch, stride, stride != 1 or in_ch != out_ch))
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
        """Inverse of `to_dict`; unknown or missing fields are a clear error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(data) - fields), sorted(fields - set(data))
        if unknown or missing:
            raise ValueError(f"invalid ResNetConfig data: unknown fields {unknown}, missing fields {missing}")
        values = dict(data)
        values["stage_sizes"] = tuple(values["stage_sizes"])
        values["widths"] = tuple(values["widths"])
        values["heads"] = tuple((str(name), int(n)) for name, n in values["heads"])
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
# The tiny body with grapheme34's input and heads: fast tests of the three-head paths (trainer, metric, converter).
PRESETS["tiny_grapheme"] = PRESETS["tiny"].replace(in_channels=1, heads=PRESETS["grapheme34"].heads)


def get_preset(name: str) -> ResNetConfig:
    """The preset called `name`; a clear error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def preset_name(config: ResNetConfig) -> str | None:
    """Name of the preset equal to `config`, or None."""
    for name, preset in PRESETS.items():
        if preset == config:
            return name
    return None
