"""The named torchvision recipes shortened, on generated images: the flags shared by test_recipe_runs (both trainers,
each recipe) and test_preemption (the V2 run interrupted), whose uninterrupted runs are the same runs (conftest's
`recipe_runs` fixture runs each once per session)."""

from __future__ import annotations

from pathlib import Path

import torch

from parity_tests.helpers import torch_model
from parity_tests.image_files import simple_folder
from r34 import get_preset

# 280 training images: torchvision's repeated-augmentation sampler keeps len // 256 * 256 of them per epoch.
CLASSES, PER_CLASS = ("ant", "bee", "cat", "dog"), 70
# Each recipe as documented, shortened: 3 epochs on 32 px crops of the tiny body, 2 replicas of 16 (so MixUp pairs
# and the sampler's split are per replica), the EMA updated every 4 iterations: 8 steps per epoch.
SHORT = ("--preset", "tiny", "--epochs", "3", "-b", "16", "--world-size", "2", "--train-crop-size", "32",
         "--val-crop-size", "32", "--val-resize-size", "36", "--log-every", "1", "--no-progress")
RECIPE_FLAGS = {
    "torchvision-v1": ("--lr-step-size", "1"),
    "torchvision-v2": ("--lr-warmup-epochs", "1", "--model-ema-steps", "4"),
}
STEPS_PER_EPOCH, TOTAL_STEPS = 8, 24


def write_images(root: Path) -> Path:
    """The image folder (train/ and val/) of the recipe runs, under `root`."""
    simple_folder(root / "train", CLASSES, PER_CLASS, splits=("",), size=(48, 40))
    simple_folder(root / "val", CLASSES, 3, splits=("",), size=(48, 40))
    return root


def write_init(path: Path) -> Path:
    """Their starting weights: the tiny body with a head for the folder's classes."""
    torch.save(torch_model(get_preset("tiny").replace(heads=(("fc", len(CLASSES)),)), seed=3).state_dict(), path)
    return path


def argv(recipe: str, folder: Path, init: Path, workdir: Path, *extra: str) -> list[str]:
    """The shortened recipe's command line (the folder prepared beside it, once for every run)."""
    return ["--recipe", recipe, *SHORT, *RECIPE_FLAGS[recipe], "--data-path", str(folder), "--prepared-dir",
            str(folder.parent / "prepared"), "--init-from", str(init), "--output-dir", str(workdir), *extra]
