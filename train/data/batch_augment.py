"""The draws of the recipe's augmentations that act on normalised float images: RandomErasing (per image) and
MixUp/CutMix (per replica batch), as torchvision's v2 transforms draw them (`make_params`), with numpy.

Only the parameters are drawn here, in the input workers; the float work is done where the images are float: the
Flax train step on the device (train/augment_flax.py), the PyTorch trainer with torchvision's own `transform`
methods (train/augment_torch.py). Given the same parameters the two produce the same images and soft targets
(parity_tests/test_augment_parity.py); the parameters' distributions are torchvision's (tested statistically).

Batch layout: `erase` is (images, 4) int32 `(top, left, height, width)`, height 0 for an image left as it is;
`mix` holds one row per replica (torchvision: per GPU; pairs never cross replicas): `kind` 0 none / 1 MixUp / 2
CutMix, `lam` and `lam_complement` (λ and 1 - λ as torchvision multiplies: float64, λ a float32 value; for CutMix
the area-corrected λ), `box` (x1, y1, x2, y2).
"""

from __future__ import annotations

import math

import numpy as np

MIXUP, CUTMIX = 1, 2
ERASE_SCALE, ERASE_RATIO = (0.02, 0.33), (0.3, 3.3)  # torchvision's RandomErasing defaults (the references keep them)


def _uniform32(rng: np.random.Generator, low: float, high: float) -> float:
    """torch's float32 `uniform_(low, high)`: a float32 in [0, 1) scaled in float32."""
    x = rng.random(dtype=np.float32)
    return float(x * (np.float32(high) - np.float32(low)) + np.float32(low))


def erase_box(rng: np.random.Generator, height: int, width: int, p: float) -> tuple[int, int, int, int]:
    """RandomErasing(p).make_params on an image: up to 10 tries of an area in `ERASE_SCALE` of the image and an
    aspect ratio log-uniform in `ERASE_RATIO`; (0, 0, 0, 0) when not applied or when no try fits."""
    if not rng.random(dtype=np.float32) < p:  # _RandomApplyTransform: skipped when rand >= p
        return 0, 0, 0, 0
    area = height * width
    log_ratio = np.log(np.asarray(ERASE_RATIO, np.float32))
    for _ in range(10):
        erase_area = area * _uniform32(rng, *ERASE_SCALE)
        aspect_ratio = float(np.exp(np.float32(_uniform32(rng, float(log_ratio[0]), float(log_ratio[1])))))
        h = int(round(math.sqrt(erase_area * aspect_ratio)))
        w = int(round(math.sqrt(erase_area / aspect_ratio)))
        if not (h < height and w < width):
            continue
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        return top, left, h, w
    return 0, 0, 0, 0


def mix_params(rng: np.random.Generator, mixup_alpha: float, cutmix_alpha: float, height: int,
               width: int) -> tuple[int, float, float, tuple[int, int, int, int]]:
    """RandomChoice([MixUp(mixup_alpha), CutMix(cutmix_alpha)]) for one replica's batch (only those with alpha > 0,
    picked uniformly): (kind, λ, 1 - λ, CutMix box). λ ~ Beta(alpha, alpha) as a float32 value, as torch samples
    it; CutMix's box centred at a uniform pixel with half sides int(0.5 * sqrt(1 - λ) * side), clamped, and λ
    corrected to the area left."""
    choices = [k for k, a in ((MIXUP, mixup_alpha), (CUTMIX, cutmix_alpha)) if a > 0]
    if not choices:
        return 0, 1.0, 0.0, (0, 0, 0, 0)
    kind = choices[int(rng.integers(len(choices)))]
    alpha = mixup_alpha if kind == MIXUP else cutmix_alpha
    lam = float(np.float32(rng.beta(alpha, alpha)))
    if kind == MIXUP:
        return MIXUP, lam, 1.0 - lam, (0, 0, 0, 0)
    r_x, r_y = int(rng.integers(width)), int(rng.integers(height))
    r = 0.5 * math.sqrt(1.0 - lam)
    r_w_half, r_h_half = int(r * width), int(r * height)
    x1, y1 = max(r_x - r_w_half, 0), max(r_y - r_h_half, 0)
    x2, y2 = min(r_x + r_w_half, width), min(r_y + r_h_half, height)
    lam_adjusted = float(1.0 - (x2 - x1) * (y2 - y1) / (width * height))
    return CUTMIX, lam_adjusted, 1.0 - lam_adjusted, (x1, y1, x2, y2)


def batch_mix(rng: np.random.Generator, replicas: int, mixup_alpha: float, cutmix_alpha: float, height: int,
              width: int) -> dict[str, np.ndarray]:
    """One draw per replica of a global batch (every process draws all of them: they are few, and replicated)."""
    rows = [mix_params(rng, mixup_alpha, cutmix_alpha, height, width) for _ in range(replicas)]
    return {"kind": np.array([r[0] for r in rows], np.int32), "lam": np.array([r[1] for r in rows], np.float64),
            "lam_complement": np.array([r[2] for r in rows], np.float64),
            "box": np.array([r[3] for r in rows], np.int32).reshape(replicas, 4)}
