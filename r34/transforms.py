"""torchvision's ImageNet eval preprocessing on PIL images, exact: the transform its weights were scored with
(`weights.transforms()`, `ImageClassification`): Resize on the shorter side, CenterCrop (zero-padded when the image
is smaller), to float, Normalize. Framework-neutral (PIL and numpy): the weights catalogue (r34/weights.py) and the
data pipeline (train/data) share it. Tested pixel for pixel against torchvision
(parity_tests/test_imagenet_transforms.py, test_weights.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLE = Image.Resampling.BILINEAR  # PIL's bilinear antialiases on downscaling, as torchvision's PIL path does
# torchvision's --interpolation names -> PIL filters (torchvision's pil_modes_mapping)
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC}


def resize_shorter(image: Image.Image, size: int, resample: Image.Resampling = RESAMPLE) -> Image.Image:
    """torchvision Resize(size) with an int: the shorter side becomes `size`, the longer `int(size * long / short)`
    (truncated)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize((new_w, new_h), resample)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision CenterCrop(size): zero-pad an image smaller than the crop (the extra pixel after, on odd
    differences), then cut at offsets rounded half to even."""
    width, height = image.size
    if size > width or size > height:
        padded = Image.new(image.mode, (max(width, size), max(height, size)), 0)
        padded.paste(image, ((size - width) // 2 if size > width else 0, (size - height) // 2 if size > height else 0))
        image = padded
        width, height = image.size
        if (width, height) == (size, size):
            return image
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def eval_image(image: Image.Image, resize: int = 256, crop: int = 224, resample: Image.Resampling = RESAMPLE
               ) -> np.ndarray:
    """Resize(resize) + CenterCrop(crop) of an RGB (or L) image, as uint8 HWC."""
    return np.asarray(center_crop(resize_shorter(image, resize, resample), crop))


def normalize(image: np.ndarray, mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> np.ndarray:
    """uint8 HWC -> float32 (x / 255 - mean) / std, torchvision's ToTensor/convert_image_dtype + Normalize."""
    return ((image.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))


@dataclass(frozen=True)
class ImageClassification:
    """torchvision's `ImageClassification` eval transform for PIL images: `(image) -> float32 CHW` normalised, as
    `weights.transforms()(image)` returns it (`hwc()` gives the Flax twin's layout)."""

    crop_size: int
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def hwc(self, image: Image.Image) -> np.ndarray:
        """The normalised eval image, HWC float32 (NHWC once batched: the Flax twin's input)."""
        return normalize(eval_image(image, self.resize_size, self.crop_size, INTERPOLATIONS[self.interpolation]),
                         self.mean, self.std)

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.ascontiguousarray(self.hwc(image).transpose(2, 0, 1))
