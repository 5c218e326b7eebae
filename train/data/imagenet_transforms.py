"""torchvision's ImageNet preprocessing on PIL images, exact: the same sizes, offsets, crop boxes and resampling.

Eval (what torchvision's published accuracies were measured with, `ResNet34_Weights.IMAGENET1K_V1.transforms()`):
Resize(256) on the shorter side, bilinear, then CenterCrop(224), zero-padded first when the image is smaller.
Train (torchvision's classification reference): RandomResizedCrop(224, scale (0.08, 1), ratio (3/4, 4/3), bilinear)
then a horizontal flip with probability 1/2. Both return uint8 HWC arrays; `normalize` is the last step, kept apart
so a pipeline can ship uint8 and normalise on the device.

Exactness is tested against torchvision itself (parity_tests/test_imagenet_transforms.py): eval images are
pixel-identical, and given the same uniform draws the train crop box is torchvision's `RandomResizedCrop.get_params`
(its 10 attempts and its centre-crop fallback) and the pixels are identical. Bit-compatibility with torch's random
stream is not a goal: draws come from a `Draws` source (numpy's Generator in the data pipeline).
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
from PIL import Image

from r34.transforms import (  # noqa: F401 (this module's API since before the move)
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    RESAMPLE,
    center_crop,
    eval_image,
    normalize,
    resize_shorter,
)


class Draws(Protocol):
    """The random draws of RandomResizedCrop and the flip, in torchvision's order."""

    def uniform(self, low: float, high: float) -> float:
        """A float32 uniform in [low, high), as a Python float."""

    def randint(self, low: int, high: int) -> int:
        """An integer in [low, high)."""


class NumpyDraws:
    """`Draws` from a numpy Generator (float32 uniforms, like torch's `uniform_` on a float32 tensor)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def uniform(self, low: float, high: float) -> float:
        x = self.rng.random(dtype=np.float32)
        return float(x * (np.float32(high) - np.float32(low)) + np.float32(low))

    def randint(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high))


def random_resized_crop_box(width: int, height: int, draws: Draws, scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, height, width) of the crop box."""
    area = height * width
    log_ratio = np.log(np.array(ratio, np.float32))
    for _ in range(10):
        target_area = area * draws.uniform(scale[0], scale[1])
        aspect_ratio = float(np.exp(np.float32(draws.uniform(float(log_ratio[0]), float(log_ratio[1])))))
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = draws.randint(0, height - h + 1)
            left = draws.randint(0, width - w + 1)
            return top, left, h, w
    # Fallback: a centre crop of the whole image, clamped to the ratio range.
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_crop(image: Image.Image, draws: Draws, crop: int = 224, scale: tuple[float, float] = (0.08, 1.0),
               ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5,
               resample: Image.Resampling = RESAMPLE) -> Image.Image:
    """RandomResizedCrop(crop, scale, ratio, resample) + RandomHorizontalFlip(flip), as a PIL image."""
    top, left, h, w = random_resized_crop_box(image.size[0], image.size[1], draws, scale, ratio)
    out = image.crop((left, top, left + w, top + h)).resize((crop, crop), resample)
    if flip and draws.uniform(0.0, 1.0) < flip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def train_image(image: Image.Image, draws: Draws, crop: int = 224, scale: tuple[float, float] = (0.08, 1.0),
                ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5) -> np.ndarray:
    """RandomResizedCrop(crop, scale, ratio, bilinear) + RandomHorizontalFlip(flip), as uint8 HWC."""
    return np.asarray(train_crop(image, draws, crop, scale, ratio, flip))
