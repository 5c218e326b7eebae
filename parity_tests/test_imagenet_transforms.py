"""train/data/imagenet_transforms.py against torchvision itself: eval images pixel for pixel, train crop boxes draw for
draw and their pixels, on decoded JPEGs of the shapes ImageNet has (landscape, portrait, square, smaller than the
crop, odd sizes, far from the ratio range)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.models import ResNet34_Weights, ResNet50_Weights

from train.data.imagenet_transforms import (
    NumpyDraws,
    center_crop,
    eval_image,
    normalize,
    random_resized_crop_box,
    train_image,
)

# (width, height): landscape, portrait, square, smaller than the 224 crop (padded), odd sizes, one side below the
# crop only, and an 8:1 panorama (RandomResizedCrop's fallback). "half_up_*": resized to 343 px on the long side,
# so the centre crop's offset is 59.5, which Python's round takes to 60 (half to even), where // 2 would say 59.
SHAPES = {"landscape": (500, 375), "portrait": (375, 500), "square": (300, 300), "tiny": (150, 100),
          "odd": (333, 251), "narrow": (640, 201), "panorama": (960, 120), "half_up_portrait": (300, 402),
          "half_up_landscape": (402, 300)}


def decoded_jpeg(width: int, height: int, seed: int) -> Image.Image:
    """A JPEG (quality 90) of smooth gradients plus noise, decoded as ImageFolder decodes: PIL, RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


class TorchDraws:
    """The draws torchvision's RandomResizedCrop.get_params makes, from torch's generator, in the same order."""

    def uniform(self, low: float, high: float) -> float:
        return torch.empty(1).uniform_(low, high).item()

    def randint(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, size=(1,)).item())


@pytest.mark.parametrize("shape", list(SHAPES))
def test_eval_image_is_torchvision_pixel_for_pixel(shape: str) -> None:
    image = decoded_jpeg(*SHAPES[shape], seed=len(shape))
    ours = eval_image(image)
    reference = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(image))
    assert ours.dtype == np.uint8 and ours.shape == (224, 224, 3)
    assert int(np.abs(ours.astype(int) - reference.astype(int)).max()) == 0
    # What the published weights were scored with, normalisation included: the same float32 operations.
    published = ResNet34_Weights.IMAGENET1K_V1.transforms()(image).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(normalize(ours), published)


def test_center_crop_pads_like_torchvision() -> None:
    """Only reachable with a resize below the crop (after Resize(256) every image covers 224): zero padding, the
    extra pixel of an odd difference after the image."""
    for width, height in ((101, 77), (230, 151), (150, 300)):
        image = decoded_jpeg(width, height, seed=width)
        np.testing.assert_array_equal(np.asarray(center_crop(image, 224)), np.asarray(T.CenterCrop(224)(image)))


def test_v2_weights_resize_232_is_expressible() -> None:
    image = decoded_jpeg(*SHAPES["odd"], seed=1)
    published = ResNet50_Weights.IMAGENET1K_V2.transforms()(image).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(normalize(eval_image(image, resize=232, crop=224)), published)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_train_crop_box_is_torchvisions_given_the_same_draws(shape: str) -> None:
    image = decoded_jpeg(*SHAPES[shape], seed=len(shape))
    for seed in range(300):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        torch.manual_seed(seed)
        assert random_resized_crop_box(*image.size, TorchDraws()) == expected, seed


def test_fallback_centre_crop_is_torchvisions() -> None:
    """Scale near 1 on an 8:1 panorama: no attempt fits, both take the ratio-clamped centre crop."""
    image = decoded_jpeg(*SHAPES["panorama"], seed=3)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(image, [0.9, 1.0], [3 / 4, 4 / 3])
        torch.manual_seed(seed)
        box = random_resized_crop_box(*image.size, TorchDraws(), scale=(0.9, 1.0))
        assert box == expected == (0, (960 - 160) // 2, 120, 160), (seed, box, expected)


@pytest.mark.parametrize("shape", ["landscape", "portrait", "tiny"])
def test_train_pixels_are_torchvisions_for_the_same_box(shape: str) -> None:
    image = decoded_jpeg(*SHAPES[shape], seed=len(shape))
    for seed in range(5):
        torch.manual_seed(seed)
        box = T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        reference = np.asarray(F.resized_crop(image, *box, [224, 224], T.InterpolationMode.BILINEAR))
        torch.manual_seed(seed)
        ours = train_image(image, TorchDraws(), flip=0.0)
        np.testing.assert_array_equal(ours, reference)
        np.testing.assert_array_equal(np.asarray(F.hflip(Image.fromarray(ours))), ours[:, ::-1])


def test_numpy_draws_give_valid_boxes_and_float32_uniforms() -> None:
    """The pipeline's draws (numpy): boxes inside the image with torchvision's area distribution; float32
    uniforms like torch's."""
    image = decoded_jpeg(*SHAPES["landscape"], seed=0)
    draws = NumpyDraws(np.random.default_rng(0))
    boxes = [random_resized_crop_box(*image.size, draws) for _ in range(2000)]
    width, height = image.size
    assert all(0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= height and left + w <= width
               for top, left, h, w in boxes)
    areas = np.array([h * w for _, _, h, w in boxes]) / (width * height)
    assert 0.07 <= areas.min() and areas.max() <= 1.0 and 0.4 < areas.mean() < 0.6  # uniform scale in (0.08, 1)
    out = train_image(image, draws)
    assert out.dtype == np.uint8 and out.shape == (224, 224, 3)
    values = [draws.uniform(0.0, 1.0) for _ in range(4000)]
    assert all(0.0 <= v < 1.0 and v == float(np.float32(v)) for v in values)
    assert 0.45 < np.mean(np.array(values) < 0.5) < 0.55


@pytest.mark.parametrize("channels", [3, 1])
def test_device_normalisation_is_torchvisions_arithmetic_for_every_value(channels: int) -> None:
    """Batches ship as uint8; the steps normalise on the device through a table. Every value 0..255 of every
    channel, on the device and on the host, equals torchvision's ToTensor + Normalize in float32 bit for bit
    (XLA computing (x / 255 - mean) / std itself would multiply by reciprocals: off by up to an ulp)."""
    import jax.numpy as jnp

    from train.data import pipeline, transforms
    from train.step_flax import normalize_images

    mean, std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if channels == 3 else ((0.5,), (0.5,))
    spec = pipeline.DatasetSpec("x", (("fc", 2),), {"fc": "label"}, channels, 16, "train", "test", False, mean, std,
                                1, 1)
    values = np.repeat(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), channels, axis=3)
    table = transforms.normalization_table(spec)
    expected = T.Normalize(mean, std)(T.ToTensor()(values[0])).permute(1, 2, 0).numpy()[None]
    np.testing.assert_array_equal(np.asarray(normalize_images(jnp.asarray(values), table)), expected)
    np.testing.assert_array_equal(transforms.normalize(values, table), expected)
