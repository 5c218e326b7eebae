"""Per-example preprocessing: the two presets (`--augment`), from a data set's example to a normalised image.

imagenet: torchvision's ImageNet recipe, exact (imagenet_transforms.py): train RandomResizedCrop + flip, eval
  Resize(eval_resize, shorter side) + CenterCrop(image_size).
cifar: the small-image recipe: resize to a square, zero-pad by size/8 and crop back at random, flip; eval resizes.

Images arrive either as encoded bytes (image folders, TFDS `Image` features read undecoded), decoded here with PIL
exactly as torchvision's loader decodes them, or as uint8 arrays (fixed-size TFDS sets, the project's builders).
Flips happen only where `spec.flip` says they preserve the label (not digits, not script).

Images leave as uint8 (a quarter of float32's bytes, and no float work on the host): the train and eval steps
normalise them on the device by looking each value up in `normalization_table(spec)`, the numpy normalisation of
the 256 possible values per channel, so the device computes exactly torchvision's float32 `(x / 255 - mean) / std`
(XLA would turn the divisions into multiplications by reciprocals, off by an ulp).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from train.data import auto_augment, batch_augment, image_folder, imagenet_transforms
from train.data.spec import DatasetSpec

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


def normalization_table(spec: DatasetSpec) -> np.ndarray:
    """(channels, 256) float32: row c, entry v is channel c's normalised value of v (torchvision's arithmetic)."""
    values = np.repeat(np.arange(256, dtype=np.uint8)[:, None], spec.channels, axis=1)
    return np.ascontiguousarray(imagenet_transforms.normalize(values, spec.mean, spec.std).T)


def normalize(images: np.ndarray, table: np.ndarray) -> np.ndarray:
    """uint8 ...HWC -> float32 through the table (host side: the PyTorch trainer, tests)."""
    return table[np.arange(table.shape[0]), images]


def train_transform(example: Example, rng: np.random.Generator, spec: DatasetSpec,
                    ops: auto_augment.Ops = auto_augment.PIL_OPS) -> dict[str, Any]:
    """One training example (uint8), augmented with draws from `rng` (one generator per example: reproducible):
    the preset's crop and flip, then the recipe's auto-augment policy (`ops` applies its operations), then the
    RandomErasing box (applied after normalisation, in the train step) when --random-erase is set."""
    augmentation = spec.augmentation
    if spec.augment == "imagenet":
        pil = to_pil(example["image"], spec.channels)
        flip = 0.5 if spec.flip else 0.0
        resample = imagenet_transforms.INTERPOLATIONS[augmentation.interpolation]
        image = imagenet_transforms.train_crop(pil, imagenet_transforms.NumpyDraws(rng), spec.image_size, flip=flip,
                                               resample=resample)
    else:
        image = _square(example["image"], spec)
        pad = max(1, spec.image_size // 8)
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
        top, left = rng.integers(0, 2 * pad + 1, size=2)
        image = padded[top:top + spec.image_size, left:left + spec.image_size]
        if spec.flip and rng.random() < 0.5:
            image = image[:, ::-1]
    if augmentation.auto_augment:
        pil = image if isinstance(image, Image.Image) else to_pil(np.ascontiguousarray(image), spec.channels)
        image = auto_augment.auto_augment(pil, augmentation.auto_augment, rng, augmentation.interpolation,
                                          augmentation.ra_magnitude, augmentation.augmix_severity, ops)
    image = _hwc(np.asarray(image))
    out = {"image": np.ascontiguousarray(image), "labels": _labels(example, spec)}
    if augmentation.random_erase > 0:
        out["erase"] = np.array(batch_augment.erase_box(rng, image.shape[0], image.shape[1],
                                                        augmentation.random_erase), np.int32)
    return out


def eval_image(example: Example, spec: DatasetSpec) -> np.ndarray:
    """The uint8 eval image, before normalisation."""
    if spec.augment == "imagenet":
        pil = to_pil(example["image"], spec.channels)
        resample = imagenet_transforms.INTERPOLATIONS[spec.augmentation.interpolation]
        return _hwc(imagenet_transforms.eval_image(pil, spec.eval_resize, spec.eval_size, resample))
    return _square(example["image"], spec)


def eval_transform(example: Example, spec: DatasetSpec) -> dict[str, Any]:
    """One eval example: deterministic preprocessing, labels, and mask True (padding examples get False)."""
    return {"image": np.ascontiguousarray(eval_image(example, spec)), "labels": _labels(example, spec),
            "mask": np.bool_(True)}
