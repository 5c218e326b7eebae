"""The recipe's augmentations in the PyTorch trainer: torchvision's own v2 implementations, fed the parameters the
shared input pipeline drew (train/data/batch_augment.py, auto_augment.py), so both trainers read the same batches.

- auto-augment: `TorchvisionOps` applies an operation with torchvision's kernel (`_apply_image_or_video_transform`);
- RandomErasing, MixUp, CutMix: the transforms' own `transform(inpt, params)` with the drawn parameters, per image
  and per replica batch, on the normalised float tensors, as torchvision's references apply them.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from train.data.batch_augment import CUTMIX, MIXUP


@functools.cache
def _kernel_host(interpolation: str) -> v2.TrivialAugmentWide:
    return v2.TrivialAugmentWide(interpolation=v2.InterpolationMode(interpolation))


def torchvision_ops(image: Image.Image, name: str, magnitude: float, interpolation: str) -> Image.Image:
    """One auto-augment operation by torchvision's kernel for PIL images (what its policies call)."""
    host = _kernel_host(interpolation)
    return host._apply_image_or_video_transform(image, name, magnitude, interpolation=host.interpolation,
                                                fill=host._fill)


def erase(images: torch.Tensor, boxes: np.ndarray) -> torch.Tensor:
    """RandomErasing(value=0).transform per image (NCHW), with the drawn (top, left, height, width) boxes."""
    eraser = v2.RandomErasing(value=0)
    out = []
    for image, (i, j, h, w) in zip(images, boxes.tolist()):
        params = {"i": i, "j": j, "h": h, "w": w, "v": torch.tensor([0.0])[:, None, None] if h else None}
        out.append(eraser.transform(image, params))
    return torch.stack(out)


def mix(images: torch.Tensor, labels: Mapping[str, torch.Tensor], params: Mapping[str, np.ndarray],
        classes: Mapping[str, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MixUp/CutMix.transform on each replica's batch (NCHW images, integer labels per head) with the drawn λ and
    box: torchvision's images and float32 soft targets, every head mixed alike."""
    replicas = len(params["kind"])
    n = images.shape[0] // replicas
    out_images, out_targets = [], {head: [] for head in labels}
    for r in range(replicas):
        chunk = images[r * n:(r + 1) * n]
        kind = int(params["kind"][r])
        if kind == MIXUP:
            transforms = {head: v2.MixUp(alpha=1.0, num_classes=classes[head]) for head in labels}
            extra = {"lam": float(params["lam"][r])}
        elif kind == CUTMIX:
            transforms = {head: v2.CutMix(alpha=1.0, num_classes=classes[head]) for head in labels}
            extra = {"box": tuple(int(v) for v in params["box"][r]), "lam_adjusted": float(params["lam"][r])}
        else:
            raise ValueError(f"replica {r}: no mixing drawn (kind {kind}) while the recipe mixes")
        for i, (head, label) in enumerate(labels.items()):
            label = label[r * n:(r + 1) * n]
            p = {"labels": label, "batch_size": n, **extra}
            if i == 0:
                out_images.append(transforms[head].transform(chunk, p))
            out_targets[head].append(transforms[head].transform(label, p))
    return torch.cat(out_images), {head: torch.cat(t) for head, t in out_targets.items()}
