"""What the per-example transforms, the pipeline and the trainers share about a data set: its `DatasetSpec`.

A module of its own so that imports run one way: `transforms.py` (per-example preprocessing) and `pipeline.py`
(loaders) both import it, and the pipeline imports the transforms, never the reverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


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
