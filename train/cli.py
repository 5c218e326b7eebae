"""Command-line flags shared by `python -m train.flax` and `python -m train.torch` (same recipe, same data)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from r34.cli_help import DefaultsHelpFormatter
from r34.config import PRESETS
from train.data.pipeline import DEFAULT_TFDS_DIR
from train.data.transforms import AUGMENTS

DEFAULT_DATA_DIR = DEFAULT_TFDS_DIR
DEFAULT_COMPILE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "r34" / "jax"


def build_parser(prog: str, description: str, flax: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=DefaultsHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="resnet34",
                   help="model body; a single-head preset gets the data set's classes and channels")
    p.add_argument("--dataset", default="sklearn_digits",
                   help="imagefolder (a folder in torchvision's ImageFolder layout: --data-dir PATH holding "
                        "train/<class>/* and val/<class>/* or test/<class>/*), sklearn_digits (embedded, offline), "
                        "bengali_graphemes (manual dir), or any TFDS image classification data set (cifar10, "
                        "imagenette, imagenet2012, ...)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="TFDS data directory; with --dataset imagefolder, the image folder")
    p.add_argument("--prepared-dir", type=Path, default=DEFAULT_DATA_DIR,
                   help="where --dataset imagefolder is prepared once (ArrayRecord of the original file bytes)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="imagefolder: leave out (and list) files that cannot be decoded instead of stopping")
    p.add_argument("--manual-dir", type=Path, help="manual download dir (bengali_graphemes, imagenet2012)")
    p.add_argument("--augment", choices=list(AUGMENTS),
                   help="preprocessing preset. imagenet: torchvision's (train RandomResizedCrop + flip, eval "
                        "Resize + CenterCrop); cifar: resize to a square, pad-and-crop, flip. Default: imagenet for "
                        "data sets of variable image size (image folders, imagenette, imagenet2012), cifar for "
                        "fixed-size ones; flips only where they keep the label (not digits or script)")
    p.add_argument("--image-size", "--crop-size", dest="image_size", type=int,
                   help="the model's input size: the crop (imagenet: 224 by default) or the square (cifar: the data "
                        "set's size unless given)")
    p.add_argument("--eval-resize", type=int,
                   help="imagenet eval: the shorter side is resized to this before the centre crop (default 256 "
                        "for a 224 crop, as torchvision's V1 weights; 232 for its V2 weights)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch size, split over all devices")
    p.add_argument("--epochs", type=int, default=5, help="training epochs")
    p.add_argument("--steps", type=int, help="total training steps (overrides --epochs)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw",
                   help="sgd: Nesterov momentum + weight decay (the Flax ImageNet recipe); adamw: decoupled weight "
                        "decay (trains the default data set fastest)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: sgd 0.1, adamw 2e-3)")
    p.add_argument("--warmup-steps", type=int, help="linear warmup steps before cosine decay (default: 1 epoch "
                                                     "capped at a tenth of the run)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, help="default: sgd 1e-4, adamw 0.05")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="cross-entropy label smoothing")
    p.add_argument("--workdir", type=Path, help="checkpoints, metrics, plots, exports (default runs/DATASET-PRESET)")
    p.add_argument("--seed", type=int, default=0, help="initialisation, shuffling and augmentation seed")
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_true", default=None,
                        help="continue from the workdir's checkpoint (default when one exists)")
    resume.add_argument("--restart", dest="resume", action="store_false",
                        help="ignore existing checkpoints and start over (deletes them)")
    p.add_argument("--init-from", type=Path, help="torch (.pth/.pt/.safetensors) or Flax weights to start from: "
                                                  "body loaded, mismatched heads re-initialised")
    p.add_argument("--log-every", type=int, default=10, help="steps between metric logs (host syncs)")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--eval-only", action="store_true",
                   help="score weights on the eval split without training: --init-from's, else the workdir's "
                        "latest checkpoint; prints top-1/top-5 and writes them to WORKDIR/eval.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    if flax:
        p.add_argument("--compile-cache", type=Path, default=DEFAULT_COMPILE_CACHE,
                       help="JAX persistent compilation cache: a restart of the same configuration skips compiling")
        p.add_argument("--dtype", choices=["float32", "bfloat16"],
                       help="compute dtype; params and BN statistics stay float32 (default float32; bfloat16 with "
                            "--tpu)")
        p.add_argument("--platform", choices=["cpu", "gpu", "tpu"], help="require this JAX platform")
        p.add_argument("--tpu", action="store_true", help="require TPU devices (bfloat16 compute unless --dtype)")
        dist = p.add_argument_group("multi-host (one process per host; see README)")
        dist.add_argument("--distributed", action="store_true",
                          help="call jax.distributed.initialize() with what the environment provides (TPU pods, "
                               "SLURM, ...); implied by --coordinator")
        dist.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
        dist.add_argument("--num-processes", type=int, help="number of processes (with --coordinator)")
        dist.add_argument("--process-id", type=int, help="this process's index (with --coordinator)")
        p.add_argument("--skip-nonfinite", action="store_true",
                       help="skip steps whose loss or gradients are NaN/Inf instead of stopping the run")
    return p
