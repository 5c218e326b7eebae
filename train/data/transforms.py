"""Per-example preprocessing: the two presets (`--augment`), from a data set's example to a normalised image.

imagenet: torchvision's ImageNet recipe, exact (imagenet_transforms.py): train RandomResizedCrop + flip, eval
  Resize(eval_resize, shorter side) + CenterCrop(image_size).
cifar: the small-image recipe: resize to a square, zero-pad by size/8 and crop back at random, flip; eval resizes.

Images arrive either as encoded bytes (image folders, TFDS `Image` features read undecoded), decoded here with PIL
exactly as torchvision's loader decodes them, or as uint8 arrays (fixed-size TFDS sets, the project's builders).
Flips happen only where `spec.flip` says they preserve the label (not digits, not script).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from train.data import image_folder, imagenet_transforms

if TYPE_CHECKING:
    from train.data.pipeline import DatasetSpec

AUGMENTS = ("imagenet", "cifar")
Example = Mapping[str, Any]


def default_eval_resize(crop: int) -> int:
    """torchvision's 256 for a 224 crop (the crop is 87.5% of the resized shorter side), at any crop size."""
    return int(round(crop * 256 / 224))


def to_pil(image: bytes | np.ndarray, channels: int) -> Image.Image:
    """Encoded bytes or a uint8 HWC array -> a PIL image with `channels` channels (RGB or L)."""
    if isinstance(image, bytes):
        return image_folder.decode(image, "RGB" if channels == 3 else "L")
    array = np.asarray(image)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _hwc(image: np.ndarray) -> np.ndarray:
    return image[..., None] if image.ndim == 2 else image


def _square(image: bytes | np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """The image resized (bilinear) to image_size x image_size; arrays already that size pass untouched."""
    if not isinstance(image, bytes):
        array = np.asarray(image)
        if array.shape[0] == spec.image_size and array.shape[1] == spec.image_size:
            return array
    pil = to_pil(image, spec.channels)
    return _hwc(np.asarray(pil.resize((spec.image_size, spec.image_size), Image.Resampling.BILINEAR)))


def _labels(example: Example, spec: DatasetSpec) -> dict[str, np.ndarray]:
    return {head: np.int32(example[key]) for head, key in spec.label_keys.items()}


def _normalize(image: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    return imagenet_transforms.normalize(image, spec.mean, spec.std)


def train_transform(example: Example, rng: np.random.Generator, spec: DatasetSpec) -> dict[str, Any]:
    """One training example, augmented with draws from `rng` (one generator per example: reproducible)."""
    if spec.augment == "imagenet":
        pil = to_pil(example["image"], spec.channels)
        flip = 0.5 if spec.flip else 0.0
        image = _hwc(imagenet_transforms.train_image(pil, imagenet_transforms.NumpyDraws(rng), spec.image_size,
                                                     flip=flip))
    else:
        image = _square(example["image"], spec)
        pad = max(1, spec.image_size // 8)
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        top, left = rng.integers(0, 2 * pad + 1, size=2)
        image = padded[top:top + spec.image_size, left:left + spec.image_size]
        if spec.flip and rng.random() < 0.5:
            image = image[:, ::-1]
    return {"image": _normalize(image, spec), "labels": _labels(example, spec)}


def eval_image(example: Example, spec: DatasetSpec) -> np.ndarray:
    """The uint8 eval image, before normalisation (what the torchvision identity test compares)."""
    if spec.augment == "imagenet":
        pil = to_pil(example["image"], spec.channels)
        return _hwc(imagenet_transforms.eval_image(pil, spec.eval_resize, spec.image_size))
    return _square(example["image"], spec)


def eval_transform(example: Example, spec: DatasetSpec) -> dict[str, Any]:
    """One eval example: deterministic preprocessing, labels, and mask True (padding examples get False)."""
    return {"image": _normalize(eval_image(example, spec), spec), "labels": _labels(example, spec),
            "mask": np.bool_(True)}
