"""torchvision's automatic augmentation policies on PIL images, exact: TrivialAugmentWide (`ta_wide`), RandAugment
(`ra`) and AutoAugment (`imagenet`, `cifar10`, `svhn`).

What is torchvision's, as data: each policy's operations, their magnitude bins (torch's float32 `linspace`, which
this torch build computes with fused multiply-adds: `start + step * i` rounded once), which are signed, AutoAugment's
25 sub-policies per data set. How an operation is applied: the same PIL calls with the same arguments as torchvision's
v2 kernels for PIL images (`_apply_image_or_video_transform`: the inverse affine matrix of `F.affine`, `Image.rotate`,
`ImageEnhance`, `ImageOps`), so a given (operation, magnitude) gives torchvision's pixels. (AugMix's table is here for
the comparison; its policy works on tensors in torchvision and is refused, AUGMIX_REFUSAL.) The draws (which operation,
which bin, which sign) follow torchvision's algorithm with a numpy Generator; torch's random stream itself is not
reproduced (the distributions are tested instead). Proven in parity_tests/test_augment_parity.py against torchvision, op
by op, bin by bin.

An `Ops` object applies an operation: `PIL_OPS` here; the PyTorch trainer passes one that calls torchvision's own
kernel (train/augment_torch.py), so both trainers read the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

POLICIES = ("ta_wide", "ra", "augmix", "imagenet", "cifar10", "svhn")
# torchvision's AugMix applies its operations with its tensor kernels (grid sampling, float32 convolutions), not the
# PIL kernels this module reproduces: not offered rather than approximated.
AUGMIX_REFUSAL = ("--auto-augment augmix is not supported: torchvision's AugMix applies its operations with its "
                  "tensor kernels, which this pipeline does not reproduce pixel for pixel; use ta_wide, ra or an "
                  "AutoAugment policy (imagenet, cifar10, svhn)")
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC}


def linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps) in float32 as this torch computes it: the first half `start + step * i`,
    the second `end - step * (steps - 1 - i)`, each with one rounding (an FMA); step = (end - start) / (steps - 1)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(steps - 1))
    half = steps // 2
    return np.array([np.float64(start32) + step * i if i < half else np.float64(end32) - step * (steps - 1 - i)
                     for i in range(steps)], np.float64).astype(np.float32)


def posterize_bits(bins: int, base: int, span: int) -> np.ndarray:
    """torch's `(base - arange(bins) / ((bins - 1) / span)).round().int()` (float32, round half to even)."""
    return np.round(np.float32(base) - np.arange(bins, dtype=np.float32) / np.float32((bins - 1) / span)).astype(
        np.int64)


Magnitudes = Callable[[int, int, int], np.ndarray | None]  # (bins, height, width) -> the bins' magnitudes
NONE: Magnitudes = lambda bins, h, w: None  # noqa: E731


def _lin(end: float | Callable[[int, int], float], start: float = 0.0) -> Magnitudes:
    return lambda bins, h, w: linspace(start, end(h, w) if callable(end) else end, bins)


# torchvision v2 _auto_augment.py: name -> (magnitudes, signed), in torchvision's key order (the draw picks by index).
TRIVIAL_AUGMENT_WIDE: dict[str, tuple[Magnitudes, bool]] = {
    "Identity": (NONE, False),
    "ShearX": (_lin(0.99), True),
    "ShearY": (_lin(0.99), True),
    "TranslateX": (_lin(32.0), True),
    "TranslateY": (_lin(32.0), True),
    "Rotate": (_lin(135.0), True),
    "Brightness": (_lin(0.99), True),
    "Color": (_lin(0.99), True),
    "Contrast": (_lin(0.99), True),
    "Sharpness": (_lin(0.99), True),
    "Posterize": (lambda bins, h, w: posterize_bits(bins, 8, 6), False),
    "Solarize": (_lin(0.0, start=1.0), False),
    "AutoContrast": (NONE, False),
    "Equalize": (NONE, False),
}
_CLASSIC: dict[str, tuple[Magnitudes, bool]] = {  # RandAugment's and AutoAugment's shared space
    "ShearX": (_lin(0.3), True),
    "ShearY": (_lin(0.3), True),
    "TranslateX": (_lin(lambda h, w: 150.0 / 331.0 * w), True),
    "TranslateY": (_lin(lambda h, w: 150.0 / 331.0 * h), True),
    "Rotate": (_lin(30.0), True),
    "Brightness": (_lin(0.9), True),
    "Color": (_lin(0.9), True),
    "Contrast": (_lin(0.9), True),
    "Sharpness": (_lin(0.9), True),
    "Posterize": (lambda bins, h, w: posterize_bits(bins, 8, 4), False),
    "Solarize": (_lin(0.0, start=1.0), False),
    "AutoContrast": (NONE, False),
    "Equalize": (NONE, False),
}
RAND_AUGMENT = {"Identity": (NONE, False), **_CLASSIC}
AUTO_AUGMENT = {**_CLASSIC, "Invert": (NONE, False)}
AUGMIX_PARTIAL: dict[str, tuple[Magnitudes, bool]] = {
    "ShearX": (_lin(0.3), True),
    "ShearY": (_lin(0.3), True),
    "TranslateX": (_lin(lambda h, w: w / 3.0), True),
    "TranslateY": (_lin(lambda h, w: h / 3.0), True),
    "Rotate": (_lin(30.0), True),
    "Posterize": (lambda bins, h, w: posterize_bits(bins, 4, 4), False),
    "Solarize": (_lin(0.0, start=1.0), False),
    "AutoContrast": (NONE, False),
    "Equalize": (NONE, False),
}
AUGMIX = {**AUGMIX_PARTIAL, "Brightness": (_lin(0.9), True), "Color": (_lin(0.9), True),
          "Contrast": (_lin(0.9), True), "Sharpness": (_lin(0.9), True)}

SubPolicy = tuple[tuple[str, float, int | None], tuple[str, float, int | None]]
# AutoAugment's learned policies: (operation, probability, magnitude bin) pairs, torchvision's lists.
AUTO_AUGMENT_POLICIES: dict[str, list[SubPolicy]] = {
    "imagenet": [
        (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)), (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
        (("Solarize", 0.6, 3), ("Equalize", 0.6, None)), (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
        (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
        (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
        (("Equalize", 0.0, None), ("Equalize", 0.8, None)), (("Invert", 0.6, None), ("Equalize", 1.0, None)),
        (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
        (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
        (("ShearX", 0.6, 5), ("Equalize", 1.0, None)), (("Color", 0.4, 0), ("Equalize", 0.6, None)),
        (("Equalize", 0.4, None), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
        (("Invert", 0.6, None), ("Equalize", 1.0, None)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
        (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    ],
    "cifar10": [
        (("Invert", 0.1, None), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
        (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
        (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
        (("Equalize", 0.6, None), ("Equalize", 0.5, None)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
        (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
        (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
        (("Solarize", 0.5, 2), ("Invert", 0.0, None)), (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
        (("Equalize", 0.2, None), ("Equalize", 0.6, None)), (("Color", 0.9, 9), ("Equalize", 0.6, None)),
        (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
        (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
        (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)), (("Equalize", 0.8, None), ("Invert", 0.1, None)),
        (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
    ],
    "svhn": [
        (("ShearX", 0.9, 4), ("Invert", 0.2, None)), (("ShearY", 0.9, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.6, None), ("Solarize", 0.6, 6)), (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Equalize", 0.6, None), ("Rotate", 0.9, 3)), (("ShearX", 0.9, 4), ("AutoContrast", 0.8, None)),
        (("ShearY", 0.9, 8), ("Invert", 0.4, None)), (("ShearY", 0.9, 5), ("Solarize", 0.2, 6)),
        (("Invert", 0.9, None), ("AutoContrast", 0.8, None)), (("Equalize", 0.6, None), ("Rotate", 0.9, 3)),
        (("ShearX", 0.9, 4), ("Solarize", 0.3, 3)), (("ShearY", 0.8, 8), ("Invert", 0.7, None)),
        (("Equalize", 0.9, None), ("TranslateY", 0.6, 6)), (("Invert", 0.9, None), ("Equalize", 0.6, None)),
        (("Contrast", 0.3, 3), ("Rotate", 0.8, 4)), (("Invert", 0.8, None), ("TranslateY", 0.0, 2)),
        (("ShearY", 0.7, 6), ("Solarize", 0.4, 8)), (("Invert", 0.6, None), ("Rotate", 0.8, 4)),
        (("ShearY", 0.3, 7), ("TranslateX", 0.9, 3)), (("ShearX", 0.1, 6), ("Invert", 0.6, None)),
        (("Solarize", 0.7, 2), ("TranslateY", 0.6, 7)), (("ShearY", 0.8, 4), ("Invert", 0.8, None)),
        (("ShearX", 0.7, 9), ("TranslateY", 0.8, 3)), (("ShearY", 0.8, 5), ("AutoContrast", 0.7, None)),
        (("ShearX", 0.7, 2), ("Invert", 0.1, None)),
    ],
}


def inverse_affine_matrix(center: Sequence[float], angle: float, translate: Sequence[float], scale: float,
                          shear: Sequence[float]) -> list[float]:
    """torchvision's `_get_inverse_affine_matrix` (the matrix PIL's `Image.transform(AFFINE)` takes), same order of
    operations."""
    rot = math.radians(angle)
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    cos_sy, tan_sx = math.cos(sy), math.tan(sx)
    rot_minus_sy = rot - sy
    cx_plus_tx, cy_plus_ty = cx + tx, cy + ty
    a = math.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + math.sin(rot))
    c = math.sin(rot_minus_sy) / cos_sy
    d = math.cos(rot) - c * tan_sx
    matrix = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    matrix[2] += cx - matrix[0] * cx_plus_tx - matrix[1] * cy_plus_ty
    matrix[5] += cy - matrix[3] * cx_plus_tx - matrix[4] * cy_plus_ty
    return matrix


def _fill(image: Image.Image) -> int | tuple[int, ...]:
    """torchvision's fill=None on a PIL image: 0 in every channel."""
    return (0,) * len(image.getbands()) if len(image.getbands()) > 1 else 0


def _affine(image: Image.Image, interpolation: str, *, translate: Sequence[float] = (0.0, 0.0),
            shear: Sequence[float] = (0.0, 0.0), center: Sequence[float] | None = None) -> Image.Image:
    width, height = image.size
    center = [width * 0.5, height * 0.5] if center is None else [float(c) for c in center]
    matrix = inverse_affine_matrix(center, 0.0, list(translate), 1.0, [float(s) for s in shear])
    return image.transform(image.size, Image.Transform.AFFINE, matrix, INTERPOLATIONS[interpolation],
                           fillcolor=_fill(image))


def apply_op(image: Image.Image, name: str, magnitude: float, interpolation: str) -> Image.Image:
    """One operation as torchvision v2 applies it to a PIL image (`_apply_image_or_video_transform`)."""
    if name == "Identity":
        return image
    if name == "ShearX":
        return _affine(image, interpolation, shear=[math.degrees(math.atan(magnitude)), 0.0], center=[0, 0])
    if name == "ShearY":
        return _affine(image, interpolation, shear=[0.0, math.degrees(math.atan(magnitude))], center=[0, 0])
    if name == "TranslateX":
        return _affine(image, interpolation, translate=[int(magnitude), 0])
    if name == "TranslateY":
        return _affine(image, interpolation, translate=[0, int(magnitude)])
    if name == "Rotate":
        return image.rotate(magnitude, INTERPOLATIONS[interpolation], False, None, fillcolor=_fill(image))
    if name == "Brightness":
        return ImageEnhance.Brightness(image).enhance(1.0 + magnitude)
    if name == "Color":
        return ImageEnhance.Color(image).enhance(1.0 + magnitude)
    if name == "Contrast":
        return ImageEnhance.Contrast(image).enhance(1.0 + magnitude)
    if name == "Sharpness":
        return ImageEnhance.Sharpness(image).enhance(1.0 + magnitude)
    if name == "Posterize":
        return ImageOps.posterize(image, int(magnitude))
    if name == "Solarize":
        return ImageOps.solarize(image, 255.0 * magnitude)
    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Invert":
        return ImageOps.invert(image)
    raise ValueError(f"no operation {name!r}")


class Ops(Protocol):
    """Applies one operation of a policy to a PIL image (this module's `apply_op`, or torchvision's kernel)."""

    def __call__(self, image: Image.Image, name: str, magnitude: float, interpolation: str) -> Image.Image:
        ...


PIL_OPS: Ops = apply_op


def _draw_magnitude(rng: np.random.Generator, space: dict, name: str, bins: int, index: int | None,
                    height: int, width: int) -> float:
    """A bin's magnitude (bin `index`, or a uniform one when None), negated with probability 1/2 for signed
    operations, as torchvision draws them (`torch.rand(()) <= 0.5`)."""
    magnitudes_fn, signed = space[name]
    magnitudes = magnitudes_fn(bins, height, width)
    if magnitudes is None:
        return 0.0
    magnitude = float(magnitudes[int(rng.integers(bins)) if index is None else index])
    if signed and rng.random(dtype=np.float32) <= 0.5:
        magnitude *= -1
    return magnitude


def _pick(rng: np.random.Generator, space: dict) -> str:
    keys = tuple(space)
    return keys[int(rng.integers(len(keys)))]


def auto_augment(image: Image.Image, policy: str, rng: np.random.Generator, interpolation: str = "bilinear",
                 ra_magnitude: int = 9, augmix_severity: int = 3, ops: Ops = PIL_OPS) -> Image.Image:
    """`image` through torchvision's policy `policy` (presets.ClassificationPresetTrain's settings: RandAugment with
    2 operations at `ra_magnitude` of 31 bins, TrivialAugmentWide with 31 bins, AugMix at `augmix_severity`)."""
    width, height = image.size
    if policy == "ta_wide":
        name = _pick(rng, TRIVIAL_AUGMENT_WIDE)
        magnitude = _draw_magnitude(rng, TRIVIAL_AUGMENT_WIDE, name, 31, None, height, width)
        return ops(image, name, magnitude, interpolation)
    if policy == "ra":
        for _ in range(2):
            name = _pick(rng, RAND_AUGMENT)
            magnitude = _draw_magnitude(rng, RAND_AUGMENT, name, 31, ra_magnitude, height, width)
            image = ops(image, name, magnitude, interpolation)
        return image
    if policy in AUTO_AUGMENT_POLICIES:
        sub_policies = AUTO_AUGMENT_POLICIES[policy]
        for name, probability, index in sub_policies[int(rng.integers(len(sub_policies)))]:
            if not rng.random(dtype=np.float32) <= probability:
                continue
            magnitude = _draw_magnitude(rng, AUTO_AUGMENT, name, 10, index, height, width)
            image = ops(image, name, magnitude, interpolation)
        return image
    if policy == "augmix":
        raise ValueError(AUGMIX_REFUSAL)
    raise ValueError(f"unknown auto-augment policy {policy!r}; one of {', '.join(POLICIES)}")
