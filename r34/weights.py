"""torchvision's published ResNet weights, as data: every builder's `IMAGENET1K_V1` / `IMAGENET1K_V2` entry (and
`DEFAULT`) with the metadata torchvision's `*_Weights` enums carry: the file (its name ends in the first 8 hex digits
of its sha256), the parameter count, the published ImageNet-1K acc@1/acc@5, the eval transform (resize, crop,
interpolation) and the recipe. Read from the installed torchvision 0.29.1's `torchvision/models/resnet.py` (and
`_meta.py`'s categories); parity_tests/test_weights.py compares every entry with it. Nothing here imports torch or
jax: both twins and the trainers resolve names through it.

    entry = get_weights("ResNet50_Weights.IMAGENET1K_V2")  # or "IMAGENET1K_V2" with builder="resnet50",
    entry = get_weights("torchvision:resnet50")             # "resnet50.DEFAULT", "torchvision:resnet50.IMAGENET1K_V1"
    entry.transforms()                                       # its eval transform (r34.transforms.ImageClassification)
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from r34.config import ResNetConfig
from r34.transforms import ImageClassification

URL_ROOT = "https://download.pytorch.org/models/"
IMAGENET = "ImageNet-1K"


@functools.cache
def imagenet_categories() -> tuple[str, ...]:
    """ImageNet-1K's class names in index order (torchvision's `_IMAGENET_CATEGORIES`)."""
    return tuple((Path(__file__).parent / "imagenet_categories.txt").read_text().splitlines())


@dataclasses.dataclass(frozen=True)
class Weights:
    """One published weights file of a builder, torchvision's `Weights` as data."""

    builder: str  # the preset / torchvision builder, e.g. "resnet50"
    enum: str  # torchvision's enum, e.g. "ResNet50_Weights"
    name: str  # IMAGENET1K_V1 or IMAGENET1K_V2
    url: str
    num_params: int
    acc1: float
    acc5: float
    resize_size: int
    crop_size: int
    recipe: str
    gflops: float  # torchvision's meta["_ops"]
    file_size_mb: float  # torchvision's meta["_file_size"]
    interpolation: str = "bilinear"

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def sha256_prefix(self) -> str:
        """The hash prefix torchvision checks on download: the file name's last '-' part."""
        return Path(self.file_name).stem.rsplit("-", 1)[-1]

    @property
    def categories(self) -> tuple[str, ...]:
        return imagenet_categories()

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def meta(self) -> dict:
        """torchvision's `meta` fields."""
        return {"num_params": self.num_params, "categories": list(self.categories), "recipe": self.recipe,
                "_metrics": {IMAGENET: {"acc@1": self.acc1, "acc@5": self.acc5}}, "_ops": self.gflops,
                "_file_size": self.file_size_mb, "min_size": (1, 1)}

    def transforms(self) -> ImageClassification:
        """The eval transform these weights were scored with (`weights.transforms()`)."""
        return ImageClassification(crop_size=self.crop_size, resize_size=self.resize_size,
                                   interpolation=self.interpolation)

    def __str__(self) -> str:
        return f"{self.enum}.{self.name}"


def _entry(builder: str, enum: str, name: str, file: str, num_params: int, acc1: float, acc5: float, resize: int,
           crop: int, recipe: str, gflops: float, file_size: float) -> Weights:
    return Weights(builder, enum, name, URL_ROOT + file, num_params, acc1, acc5, resize, crop, recipe, gflops,
                   file_size)


_V1_RECIPE = "https://github.com/pytorch/vision/tree/main/references/classification#"
_NEW = "https://github.com/pytorch/vision/issues/3995#"
ENTRIES: tuple[Weights, ...] = (
    _entry("resnet18", "ResNet18_Weights", "IMAGENET1K_V1", "resnet18-f37072fd.pth", 11689512, 69.758, 89.078, 256,
           224, _V1_RECIPE + "resnet", 1.814, 44.661),
    _entry("resnet34", "ResNet34_Weights", "IMAGENET1K_V1", "resnet34-b627a593.pth", 21797672, 73.314, 91.42, 256,
           224, _V1_RECIPE + "resnet", 3.664, 83.275),
    _entry("resnet50", "ResNet50_Weights", "IMAGENET1K_V1", "resnet50-0676ba61.pth", 25557032, 76.13, 92.862, 256,
           224, _V1_RECIPE + "resnet", 4.089, 97.781),
    _entry("resnet50", "ResNet50_Weights", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 25557032, 80.858, 95.434, 232,
           224, _NEW + "issuecomment-1013906621", 4.089, 97.79),
    _entry("resnet101", "ResNet101_Weights", "IMAGENET1K_V1", "resnet101-63fe2227.pth", 44549160, 77.374, 93.546,
           256, 224, _V1_RECIPE + "resnet", 7.801, 170.511),
    _entry("resnet101", "ResNet101_Weights", "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 44549160, 81.886, 95.78, 232,
           224, _NEW + "new-recipe", 7.801, 170.53),
    _entry("resnet152", "ResNet152_Weights", "IMAGENET1K_V1", "resnet152-394f9c45.pth", 60192808, 78.312, 94.046,
           256, 224, _V1_RECIPE + "resnet", 11.514, 230.434),
    _entry("resnet152", "ResNet152_Weights", "IMAGENET1K_V2", "resnet152-f82ba261.pth", 60192808, 82.284, 96.002,
           232, 224, _NEW + "new-recipe", 11.514, 230.474),
    _entry("resnext50_32x4d", "ResNeXt50_32X4D_Weights", "IMAGENET1K_V1", "resnext50_32x4d-7cdf4587.pth", 25028904,
           77.618, 93.698, 256, 224, _V1_RECIPE + "resnext", 4.23, 95.789),
    _entry("resnext50_32x4d", "ResNeXt50_32X4D_Weights", "IMAGENET1K_V2", "resnext50_32x4d-1a0047aa.pth", 25028904,
           81.198, 95.34, 232, 224, _NEW + "new-recipe", 4.23, 95.833),
    _entry("resnext101_32x8d", "ResNeXt101_32X8D_Weights", "IMAGENET1K_V1", "resnext101_32x8d-8ba56ff5.pth",
           88791336, 79.312, 94.526, 256, 224, _V1_RECIPE + "resnext", 16.414, 339.586),
    _entry("resnext101_32x8d", "ResNeXt101_32X8D_Weights", "IMAGENET1K_V2", "resnext101_32x8d-110c445d.pth",
           88791336, 82.834, 96.228, 232, 224, _NEW + "new-recipe-with-fixres", 16.414, 339.673),
    _entry("resnext101_64x4d", "ResNeXt101_64X4D_Weights", "IMAGENET1K_V1", "resnext101_64x4d-173b62eb.pth",
           83455272, 83.246, 96.454, 232, 224, "https://github.com/pytorch/vision/pull/5935", 15.46, 319.318),
    _entry("wide_resnet50_2", "Wide_ResNet50_2_Weights", "IMAGENET1K_V1", "wide_resnet50_2-95faca4d.pth", 68883240,
           78.468, 94.086, 256, 224, "https://github.com/pytorch/vision/pull/912#issue-445437439", 11.398, 131.82),
    _entry("wide_resnet50_2", "Wide_ResNet50_2_Weights", "IMAGENET1K_V2", "wide_resnet50_2-9ba9bcbe.pth", 68883240,
           81.602, 95.758, 232, 224, _NEW + "new-recipe-with-fixres", 11.398, 263.124),
    _entry("wide_resnet101_2", "Wide_ResNet101_2_Weights", "IMAGENET1K_V1", "wide_resnet101_2-32ee1156.pth",
           126886696, 78.848, 94.284, 256, 224, "https://github.com/pytorch/vision/pull/912#issue-445437439", 22.753,
           242.896),
    _entry("wide_resnet101_2", "Wide_ResNet101_2_Weights", "IMAGENET1K_V2", "wide_resnet101_2-d733dc28.pth",
           126886696, 82.51, 96.02, 232, 224, _NEW + "new-recipe", 22.753, 484.747),
)
# torchvision's DEFAULT: V2 where it exists.
DEFAULTS = {builder: max(n for e in ENTRIES if e.builder == builder for n in [e.name]) for builder in
            dict.fromkeys(e.builder for e in ENTRIES)}
BUILDERS = tuple(DEFAULTS)
ENUMS = {e.enum: e.builder for e in ENTRIES}


class WeightsError(ValueError):
    """A weights name, file or download that cannot be used; the message says which and what to do."""


def entries(builder: str) -> dict[str, Weights]:
    """A builder's entries by name, DEFAULT included."""
    named = {e.name: e for e in ENTRIES if e.builder == builder}
    return {**named, "DEFAULT": named[DEFAULTS[builder]]} if named else {}


def get_weights(spec: str | Weights, builder: str | None = None) -> Weights:
    """A catalogue entry from any of torchvision's spellings: "ResNet50_Weights.IMAGENET1K_V2", "IMAGENET1K_V2" or
    "DEFAULT" (with `builder`), "resnet50.IMAGENET1K_V2", "torchvision:resnet50[.NAME]" (DEFAULT when no name). With
    `builder`, weights of another builder are refused."""
    if isinstance(spec, Weights):
        entry = spec
    else:
        text = spec.removeprefix("torchvision:")
        owner, _, name = text.rpartition(".")
        if not owner:  # a builder alone ("torchvision:resnet34": its DEFAULT), or an entry's name of `builder`
            alone = builder is None or text in BUILDERS or spec.startswith("torchvision:")
            owner, name = (text, "DEFAULT") if alone else (builder, text)
        owner = ENUMS.get(owner, owner)
        if owner not in BUILDERS:
            raise WeightsError(f"weights {spec!r}: no builder {owner!r} with torchvision weights; builders: "
                               f"{', '.join(BUILDERS)}")
        available = entries(owner)
        if name not in available:
            valid = ", ".join(f"{entries(owner)[n].enum}.{n}" for n in available)
            raise WeightsError(f"weights {spec!r}: {owner} has no {name!r}; valid: {valid}")
        entry = available[name]
    if builder is not None and entry.builder != builder:
        raise WeightsError(f"weights {entry} are {entry.builder}'s, not {builder}'s; {builder}'s: "
                           f"{', '.join(f'{e.enum}.{n}' for n, e in entries(builder).items()) or 'none'}")
    return entry


def head_config(config: ResNetConfig, num_classes: int | None, replace_head: bool,
                source: str) -> tuple[ResNetConfig, bool]:
    """The model's config for `num_classes`: the weights' own unless a new head is asked for (torchvision refuses a
    num_classes other than the weights'; replace_head=True is its `model.fc = nn.Linear(...)`)."""
    classes = dict(config.heads).get("fc") if config.single_head else None
    if num_classes is None or num_classes == classes:
        return config, False
    if not replace_head:
        raise WeightsError(f"num_classes={num_classes} but {source} has {classes} classes; pass replace_head=True to "
                           "load the body and start a new head (torchvision: set model.fc after loading)")
    return config.replace(heads=(("fc", num_classes),)), True
