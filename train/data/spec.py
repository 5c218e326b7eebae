"""What the per-example transforms, the pipeline and the trainers share about a data set: its `DatasetSpec`.

A module of its own so that imports run one way: `transforms.py` (per-example preprocessing) and `pipeline.py`
(loaders) both import it, and the pipeline imports the transforms, never the reverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    """The data side of a training recipe, torchvision's flags: per-example auto-augment policy and random erasing,
    the interpolation of every resize and geometric operation, per-batch MixUp/CutMix, repeated augmentation, and
    the replicas (torchvision's GPUs: MixUp pairs, RASampler's split) a global batch is made of."""

    auto_augment: str | None = None  # train/data/auto_augment.POLICIES
    ra_magnitude: int = 9
    augmix_severity: int = 3
    random_erase: float = 0.0
    interpolation: str = "bilinear"
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    ra_reps: int = 0  # RASampler repetitions; 0 = no repeated augmentation
    replicas: int = 1

    @property
    def mixes(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the trainer needs to know about a data set."""

    name: str
    heads: tuple[tuple[str, int], ...]  # model head -> classes
    label_keys: Mapping[str, str]  # model head -> feature name in the data
    channels: int
    image_size: int
    train_split: str
    eval_split: str
    flip: bool  # horizontal flips are label-preserving (natural images; not digits or script)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int
    num_eval: int
    augment: str = "cifar"  # preprocessing preset, transforms.AUGMENTS
    eval_resize: int = 0  # imagenet: the shorter side before the centre crop
    eval_crop: int = 0  # imagenet: the centre crop (0: image_size, the train crop)
    augmentation: AugmentSpec = AugmentSpec()
    prepared: str = ""  # where the prepared records are (named when one cannot be read)
    skip_bad_records: bool = False  # --skip-bad-images: a record that cannot be decoded is replaced, and listed

    @property
    def eval_size(self) -> int:
        """The eval images' side."""
        return self.eval_crop or self.image_size
